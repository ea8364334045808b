//! `--isa`: every CPU kernel path this processor has gives the same logits, bit for bit, as the
//! portable path (through `troupe logits`, on the f32 and the bf16 DeepSeek-V3 fixtures, and
//! through the actor runtime); `troupe bench --json` names the path in use; an unknown path or
//! one the processor lacks is a usage error (exit 2). Paths the processor lacks (AVX-512 on the
//! Zen 3 CI machine) are skipped here and covered where they exist.

use troupe::engine::kernels::isa::Isa;

use crate::common::{case_dir, troupe, Reference};

/// `troupe logits` of the case's first reference prompt on `isa` (extra flags appended): the raw
/// bytes of the safetensors it writes.
fn logits_bytes(case: &str, isa: Isa, extra: &[&str]) -> Vec<u8> {
    let r = Reference::open(case);
    let ids: Vec<String> = r
        .ids("prompt.0.input_ids")
        .iter()
        .map(|x| x.to_string())
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("l.safetensors");
    let model = case_dir(case).display().to_string();
    let ids = ids.join(",");
    let out_s = out.display().to_string();
    let mut args = vec![
        "logits",
        "--model",
        &model,
        "--prompt-ids",
        &ids,
        "--out",
        &out_s,
        "--isa",
        isa.name(),
    ];
    args.extend_from_slice(extra);
    let (code, _, err) = troupe(&args);
    assert_eq!(code, 0, "{case} --isa {isa}: {err}");
    std::fs::read(&out).unwrap()
}

#[test]
fn every_present_path_gives_the_portable_logits() {
    for case in ["deepseek-v3-tiny", "deepseek-v3-tiny-bf16"] {
        let reference = ["--runtime", "reference"];
        let want = logits_bytes(case, Isa::Portable, &reference);
        for isa in Isa::available() {
            assert!(
                logits_bytes(case, isa, &reference) == want,
                "{case}: --isa {isa} differs from portable"
            );
            let actors = logits_bytes(case, isa, &["--runtime", "actors"]);
            assert!(actors == want, "{case}: the actor runtime on {isa} differs");
        }
    }
}

#[test]
fn bench_names_the_path_and_refuses_missing_ones() {
    let model = case_dir("deepseek-v3-tiny").display().to_string();
    for isa in Isa::available() {
        let (code, out, err) = troupe(&[
            "bench",
            "-m",
            &model,
            "-p",
            "3",
            "-n",
            "2",
            "-r",
            "1",
            "--json",
            "--isa",
            isa.name(),
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(&format!("isa: {isa}")), "{out}");
        let last = out.lines().last().unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(last).unwrap();
        assert_eq!(v["isa"], isa.name(), "{last}");
    }
    let mut refused = vec!["sse9"];
    refused.extend(Isa::ALL.iter().filter(|i| !i.supported()).map(|i| i.name()));
    for name in refused {
        let (code, _, err) = troupe(&["bench", "-m", &model, "-p", "3", "-n", "2", "--isa", name]);
        assert_eq!(code, 2, "--isa {name}: {err}");
        assert!(err.contains(name) && err.lines().count() == 1, "{err}");
    }
}
