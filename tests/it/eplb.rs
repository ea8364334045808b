//! `troupe eplb` and `--dump-expert-load`, through the binary: the `deepseek-ai/EPLB` README
//! example as `--json`; a load dumped by `generate` on deepseek-v3-tiny, balanced into a
//! `[placement]` table with replicated experts, that generates the reference's tokens and
//! computes more evenly per node; the same dump from `bench --runtime actors`; bad input as one
//! line and exit 2.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::case_dir;

fn troupe<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_troupe"))
        .args(args)
        .output()
        .expect("run troupe")
}

fn ok(o: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{what}: {err}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const README_LOAD: &str = "[[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
 [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]]";

#[test]
fn eplb_reproduces_the_readme_example() {
    let dir = tempfile::tempdir().unwrap();
    let load = write(dir.path(), "load.json", README_LOAD);
    let args = [
        "eplb",
        "--load",
        &load,
        "--replicas",
        "16",
        "--groups",
        "4",
        "--nodes",
        "2",
        "--gpus",
        "8",
    ];
    let out = ok(&troupe(&[&args[..], &["--json"]].concat()), "eplb --json");
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(
        last["phy2log"],
        serde_json::json!([
            [5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
            [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]
        ])
    );
    assert_eq!(
        last["logcnt"],
        serde_json::json!([
            [1, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2, 1],
            [1, 2, 1, 1, 1, 2, 2, 1, 2, 1, 1, 1]
        ])
    );
    // The table: 8 nodes, one group per device and layer, GPU 1 of layer 0 holding 5 and 7.
    let table: toml::Table = toml::from_str(&ok(&troupe(&args), "eplb")).unwrap();
    let p = table["placement"].as_table().unwrap();
    assert_eq!(p["nodes"].as_integer(), Some(8));
    let groups = p["expert_groups"].as_array().unwrap();
    assert_eq!(groups.len(), 16);
    assert_eq!(groups[1]["experts"], toml::Value::try_from([5, 7]).unwrap());
    assert_eq!(groups[1]["node"].as_integer(), Some(1));
    assert_eq!(groups[9]["layer"].as_integer(), Some(1));
}

#[test]
fn dumped_load_balanced_by_eplb_keeps_the_reference_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let case = case_dir("deepseek-v3-tiny");
    let graph = ok(&troupe(&[Path::new("import-hf"), &case]), "import-hf");
    let gen = |graph: &str, runtime: &str, dump: Option<&str>| {
        let mut args = vec![
            "generate",
            "-m",
            graph,
            "--prompt-ids",
            "0,17,305,9,88,412,7,3,250,61,99,5",
            "-n",
            "6",
            "--json",
            "--runtime",
            runtime,
        ];
        if let Some(d) = dump {
            args.extend(["--dump-expert-load", d]);
        }
        troupe(&args)
    };
    // A two-node placement without replicas: experts 0-7 on node 0, 8-15 on node 1.
    let block = format!(
        "{graph}\n[placement]\nstreams = 2\nnodes = 2\nexpert_streams = [\"cpu0\", \"cpu1\"]\n\
         expert_nodes = [0, 1]\nexperts = \"block\"\n"
    );
    let block = write(dir.path(), "block.toml", &block);
    let load = dir.path().join("load.json").display().to_string();
    let o = gen(&block, "actors", Some(&load));
    let want = ok(&gen(&block, "reference", None), "reference");
    assert_eq!(ok(&o, "dump").lines().last(), want.lines().last());
    let before = String::from_utf8_lossy(&o.stderr).into_owned();
    let rows: Vec<Vec<u64>> =
        serde_json::from_str(&std::fs::read_to_string(&load).unwrap()).unwrap();
    // 3 MoE layers × 16 experts; 12 prompt + 5 decoded positions, top-4.
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.len() == 16));
    assert!(
        rows.iter().all(|r| r.iter().sum::<u64>() == 17 * 4),
        "{rows:?}"
    );

    let table = ok(
        &troupe(&[
            "eplb",
            "--load",
            &load,
            "--replicas",
            "24",
            "--groups",
            "4",
            "--nodes",
            "2",
            "--gpus",
            "2",
            "--first-moe-layer",
            "1",
        ]),
        "eplb",
    );
    let balanced = write(dir.path(), "eplb.toml", &format!("{graph}\n{table}"));
    let o = gen(&balanced, "actors", Some(&load));
    assert_eq!(ok(&o, "eplb placement").lines().last(), want.lines().last());
    let after = String::from_utf8_lossy(&o.stderr).into_owned();
    let overall = |s: &str| -> f64 {
        let at = s.find("over 2 nodes: ").expect(s) + "over 2 nodes: ".len();
        s[at..].split(' ').next().unwrap().parse().unwrap()
    };
    assert!(
        overall(&after) <= overall(&before),
        "before: {before}\nafter: {after}"
    );
}

#[test]
fn bench_dumps_the_load_of_every_test_it_ran() {
    let dir = tempfile::tempdir().unwrap();
    let case = case_dir("deepseek-v3-tiny");
    let graph = ok(&troupe(&[Path::new("import-hf"), &case]), "import-hf");
    let two = format!(
        "{graph}\n[placement]\nstreams = 2\nnodes = 2\nexpert_streams = [\"cpu0\", \"cpu1\"]\n\
         expert_nodes = [0, 1]\nexperts = \"block\"\n"
    );
    let two = write(dir.path(), "two.toml", &two);
    let load = dir.path().join("load.json").display().to_string();
    let bench = |runtime: &str| {
        troupe(&[
            "bench",
            "-m",
            &two,
            "-p",
            "5",
            "-n",
            "3",
            "-r",
            "2",
            "--runtime",
            runtime,
            "--dump-expert-load",
            &load,
        ])
    };
    let o = bench("actors");
    let out = ok(&o, "bench --dump-expert-load");
    assert!(out.contains("pp5") && out.contains("tg3"), "{out}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("over 2 nodes"), "{err}");
    let rows: Vec<Vec<u64>> =
        serde_json::from_str(&std::fs::read_to_string(&load).unwrap()).unwrap();
    // 3 MoE layers × 16 experts. Each test runs once untimed and twice timed: pp5 3 × 5 and
    // tg3 3 × 3 positions, top-4.
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.len() == 16));
    assert!(
        rows.iter()
            .all(|r| r.iter().sum::<u64>() == (3 * 5 + 3 * 3) * 4),
        "{rows:?}"
    );
    // The reference executor has no routers to count: refused, one line, exit 2.
    std::fs::remove_file(&load).unwrap();
    let o = bench("reference");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--dump-expert-load needs --runtime actors"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!Path::new(&load).exists());
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.json", README_LOAD);
    let cases = [
        (
            write(dir.path(), "ragged.json", "[[1, 2, 3, 4], [1, 2, 3]]"),
            ["8", "2", "1", "2"],
            "MoE layer 1 has 3 experts but layer 0 has 4",
        ),
        (good.clone(), ["8", "4", "2", "8"], "replicas 8 < 12"),
        (
            good.clone(),
            ["18", "4", "2", "8"],
            "gpus 8 does not divide replicas 18",
        ),
        (
            good.clone(),
            ["16", "4", "2", "0"],
            "gpus must be at least 1",
        ),
        (
            good.clone(),
            ["16", "8", "2", "8"],
            "groups 8 does not divide the 12",
        ),
        (
            write(dir.path(), "neg.json", "[[1, -2, 3, 4]]"),
            ["4", "1", "1", "2"],
            "expert 1: load -2",
        ),
        (
            write(dir.path(), "text.json", "{\"layers\": 1}"),
            ["4", "1", "1", "2"],
            "expected [[tokens per expert] per MoE layer]",
        ),
        (
            dir.path().join("missing.json").display().to_string(),
            ["4", "1", "1", "2"],
            "missing.json",
        ),
    ];
    for (load, [r, g, n, d], needle) in cases {
        let o = troupe(&[
            "eplb",
            "--load",
            &load,
            "--replicas",
            r,
            "--groups",
            g,
            "--nodes",
            n,
            "--gpus",
            d,
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{load} {r} {g} {n} {d}: {err}");
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(o.stdout.is_empty());
    }
    let o = troupe(&["eplb", "--load", &good, "--replicas", "x"]);
    assert_eq!(o.status.code(), Some(2));
}
