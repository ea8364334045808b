//! int8 weight-only quantisation from the command line: `troupe quantize --int8` writes a
//! folder that loads (from mmap, no re-work) as exactly the model `--quantize int8` makes at
//! load, under the default policy and under `--keep`; bad values are usage errors.

use crate::common::*;
use troupe::engine::dtype::DType;
use troupe::engine::weights::Checkpoint;

fn logits_file(model: &str, extra: &[&str], out: &std::path::Path) -> Vec<u8> {
    let mut args = vec![
        "logits",
        "-m",
        model,
        "--prompt-ids",
        "0,7,300,5,999,12",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    let (code, _, stderr) = troupe(&args);
    assert_eq!(code, 0, "logits {model} {extra:?}: {stderr}");
    std::fs::read(out).unwrap()
}

#[test]
fn a_quantised_folder_is_the_model_quantize_int8_makes_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let src = case_dir("deepseek-v3-tiny-bf16");
    let src = src.to_str().unwrap();
    let plain = logits_file(src, &[], &dir.path().join("plain.st"));
    for (keep, cli_keep) in [(None, None), (Some("none"), Some("none"))] {
        let out = dir.path().join(format!("q-{}", keep.unwrap_or("default")));
        let mut args = vec![
            "quantize",
            "--int8",
            "-m",
            src,
            "--out",
            out.to_str().unwrap(),
        ];
        if let Some(k) = keep {
            args.extend(["--keep", k]);
        }
        let (code, stdout, stderr) = troupe(&args);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("int8 weights"), "{stdout}");
        // The folder: int8 experts with their scales; attention as stored unless `--keep none`.
        let ck = Checkpoint::open_dir(&out).unwrap();
        let expert = ck
            .get("model.layers.1.mlp.experts.0.up_proj.weight")
            .unwrap();
        assert_eq!(expert.dtype(), DType::I8);
        assert_eq!(expert.block_scales().unwrap().block, [1, 32]);
        let attention = ck.get("model.layers.1.self_attn.o_proj.weight").unwrap();
        let want = if keep.is_some() {
            DType::I8
        } else {
            DType::BF16
        };
        assert_eq!(attention.dtype(), want);
        let config = std::fs::read_to_string(out.join("config.json")).unwrap();
        assert!(config.contains("troupe_int8"), "{config}");
        // Folder and load-time quantisation: the same bits.
        let folder = logits_file(out.to_str().unwrap(), &[], &dir.path().join("folder.st"));
        let mut flags = vec!["--quantize", "int8"];
        if let Some(k) = cli_keep {
            flags.extend(["--quantize-keep", k]);
        }
        let at_load = logits_file(src, &flags, &dir.path().join("load.st"));
        assert!(
            folder == at_load,
            "keep {keep:?}: folder and --quantize differ"
        );
        assert!(
            folder != plain,
            "keep {keep:?}: int8 logits equal the bf16 ones"
        );
    }
}

#[test]
fn bad_quantize_values_are_usage_errors() {
    let src = case_dir("deepseek-v3-tiny-bf16");
    let src = src.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("l.st");
    let out = out.to_str().unwrap();
    for (flags, needle) in [
        (vec!["--quantize", "int4"], "expected int8"),
        (
            vec!["--quantize", "int8", "--quantize-keep", "experts"],
            "`experts` is not a weight class",
        ),
        (vec!["--quantize-keep", "head"], "--quantize"),
    ] {
        let mut args = vec!["logits", "-m", src, "--prompt-ids", "1,2", "--out", out];
        args.extend(&flags);
        let (code, _, stderr) = troupe(&args);
        assert_eq!(code, 2, "{flags:?}: {stderr}");
        assert!(stderr.contains(needle), "{flags:?}: {stderr}");
    }
    let (code, _, stderr) = troupe(&["quantize", "--int8", "--fp8", "-m", src, "--out", out]);
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn quant_report_compares_the_int8_model_with_the_stored_one() {
    let src = case_dir("deepseek-v3-tiny-bf16");
    let src = src.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["quant-report", "-m", src, "--json"];
        args.extend(extra);
        let (code, stdout, stderr) = troupe(&args);
        assert_eq!(code, 0, "{extra:?}: {stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()
    };
    let default = run(&["--tokens", "64"]);
    assert_eq!(default["positions"], 64);
    assert_eq!(default["policy"]["keep"], serde_json::json!(["attention"]));
    let none = run(&[
        "--prompt-ids",
        "3,9,27,81,243",
        "--quantize",
        "int8",
        "--quantize-keep",
        "none",
    ]);
    assert_eq!(none["positions"], 5);
    assert_eq!(none["policy"]["keep"], serde_json::json!([]));
    for r in [&default, &none] {
        let agree = r["top1_agreement"].as_f64().unwrap();
        let (mean, max) = (
            r["mean_kl_nats"].as_f64().unwrap(),
            r["max_kl_nats"].as_f64().unwrap(),
        );
        assert!(
            (0.0..=1.0).contains(&agree) && mean > 0.0 && mean <= max,
            "{r}"
        );
        let (s, q) = (
            r["stored_weight_bytes"].as_u64().unwrap(),
            r["quantised_weight_bytes"].as_u64().unwrap(),
        );
        assert!(q < s, "{r}");
    }
    // Fewer bytes again with attention quantised too.
    assert!(none["quantised_weight_bytes"].as_u64() < default["quantised_weight_bytes"].as_u64());
    let (code, _, stderr) = troupe(&["quant-report", "-m", src, "--tokens", "1"]);
    assert_eq!(code, 2, "{stderr}");
}
