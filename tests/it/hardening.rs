//! Regression tests of issue #14's command-line findings: `--threads` bounds, the memory
//! pre-check, `logits --out` through symlinks and onto non-regular files, `--max-new-tokens` at
//! `u64::MAX`, one-line usage errors, empty `--prompt-ids` entries and a malformed
//! `TROUPE_FAULT` under the reference runtime. Each runs the binary bounded in time.

use std::ffi::OsStr;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Duration;

use safetensors::tensor::SafeTensors;
use troupe::engine::graph::{LoadedGraph, Plan};
use troupe::engine::memory::{MemoryNeed, RunShape};

use crate::common::{case_dir, classify, repo_path, run_bounded, troupe_bin, Limits, Outcome};

const LIMITS: Limits = Limits {
    timeout: Duration::from_secs(60),
    address_space: 16 << 30,
};

fn run(args: &[&str], env: &[(&str, &OsStr)]) -> crate::common::BoundedRun {
    run_bounded(&troupe_bin(), args, env, LIMITS)
}

/// Asserts exit 2 with exactly one stderr line containing every needle.
fn one_line_error(args: &[&str], env: &[(&str, &OsStr)], needles: &[&str]) -> String {
    let r = run(args, env);
    assert_eq!(classify(&r), Outcome::CleanError, "{args:?}: {r:?}");
    for n in needles {
        assert!(
            r.stderr.contains(n),
            "{args:?}: stderr lacks `{n}`: {}",
            r.stderr
        );
    }
    r.stderr
}

fn tiny() -> String {
    case_dir("llama-tiny").display().to_string()
}

#[test]
fn threads_out_of_range_are_refused_at_once() {
    let m = tiny();
    for t in ["0", "1025", "100000", "18446744073709551615"] {
        let err = one_line_error(
            &[
                "generate",
                "-m",
                &m,
                "--prompt-ids",
                "0",
                "-n",
                "1",
                "--threads",
                t,
            ],
            &[],
            &["--threads", "1 to 1024"],
        );
        assert!(err.contains(&format!("'{t}'")), "{err}");
    }
    let r = run(
        &[
            "generate",
            "-m",
            &m,
            "--prompt-ids",
            "0",
            "-n",
            "1",
            "-t",
            "1024",
        ],
        &[],
    );
    assert_eq!(classify(&r), Outcome::Ok, "{r:?}");
}

#[test]
fn memory_precheck_refuses_the_671b_model_within_seconds() {
    let g = repo_path("graphs/deepseek-v3-671b.toml")
        .display()
        .to_string();
    let out = tempfile::tempdir().unwrap();
    let out = out.path().join("l.safetensors").display().to_string();
    let cases: [&[&str]; 3] = [
        &["generate", "-m", &g, "--prompt-ids", "0,1", "-n", "4"],
        &["logits", "-m", &g, "--prompt-ids", "0,1", "--out", &out],
        &["bench", "-m", &g, "-p", "4", "-n", "0"],
    ];
    for args in cases {
        let r = run(args, &[]);
        assert_eq!(classify(&r), Outcome::CleanError, "{args:?}: {r:?}");
        assert!(
            r.elapsed < Duration::from_secs(10),
            "{args:?}: {:?}",
            r.elapsed
        );
        for n in [
            "the model needs ~1.",
            " TB",
            "available",
            "--skip-memory-check",
        ] {
            assert!(r.stderr.contains(n), "{args:?}: lacks `{n}`: {}", r.stderr);
        }
        assert!(!Path::new(&out).exists());
    }
}

/// The estimate of 671B: ~671·10⁹ bf16 parameters (≈1.34 TB), however many layers or experts a
/// spec claims costs nothing to estimate, and the reduced-plan count equals the full plan's.
#[test]
fn memory_estimate_counts_every_weight_without_building_huge_plans() {
    let shape = RunShape {
        sequences: 1,
        tokens_per_sequence: 1,
        threads: 1,
    };
    let big = LoadedGraph::open(&repo_path("graphs/deepseek-v3-671b.toml")).unwrap();
    let need = MemoryNeed::of(&big.spec, true, &shape);
    assert!(
        (1.30e12..1.40e12).contains(&(need.weights as f64)),
        "{need:?}"
    );
    let mut graphs = vec![
        big,
        LoadedGraph::open(&repo_path("graphs/ds-v3-mini.toml")).unwrap(),
    ];
    for case in crate::common::CASES {
        graphs.push(LoadedGraph::open(&case_dir(case)).unwrap());
    }
    for g in &graphs {
        let full: u64 = Plan::compile(&g.spec)
            .weight_specs()
            .iter()
            .map(|w| {
                let n: u64 = w.shape.iter().map(|&d| d as u64).product();
                let bias = w.shape.len() == 1 && w.name.ends_with("_bias");
                n * if bias { 4 } else { g.spec.dtype.size() as u64 }
            })
            .sum();
        let need = MemoryNeed::of(&g.spec, false, &shape);
        assert_eq!(need.weights, full, "{}", g.origin.display());
    }
    let mut huge = graphs[1].spec.clone();
    huge.num_hidden_layers = 1_000_000_000;
    if let Some(m) = &mut huge.moe {
        m.n_routed_experts = 1 << 20;
    }
    let t = std::time::Instant::now();
    let need = MemoryNeed::of(&huge, true, &shape);
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(need.total() > 1 << 60, "{need:?}");
}

fn logits_args<'a>(m: &'a str, out: &'a str) -> Vec<&'a str> {
    vec!["logits", "-m", m, "--prompt-ids", "0,5,9", "--out", out]
}

fn assert_logits_file(bytes: &[u8]) {
    let st = SafeTensors::deserialize(bytes).expect("a safetensors file");
    assert_eq!(st.tensor("logits").unwrap().shape(), &[3, 1024]);
}

#[test]
fn logits_out_writes_through_symlinks() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("target.safetensors");
    std::fs::write(&target, b"old").unwrap();
    let link = d.path().join("link.safetensors");
    std::os::unix::fs::symlink("target.safetensors", &link).unwrap();
    // A dangling link: its target is created.
    let dangling = d.path().join("dangling.safetensors");
    std::os::unix::fs::symlink(d.path().join("new.safetensors"), &dangling).unwrap();
    let m = tiny();
    for (l, t) in [
        (&link, &target),
        (&dangling, &d.path().join("new.safetensors")),
    ] {
        let r = run(&logits_args(&m, &l.display().to_string()), &[]);
        assert_eq!(classify(&r), Outcome::Ok, "{r:?}");
        assert!(std::fs::symlink_metadata(l)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_logits_file(&std::fs::read(t).unwrap());
    }
    let leftovers: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A full device (char 1,7, made in a temp dir, never the machine's /dev/full) stays a device,
/// and the write error is reported.
#[test]
fn logits_out_to_a_device_writes_in_place_and_reports_errors() {
    if !is_root() {
        eprintln!("not root: mknod needs root; the FIFO test covers non-regular files");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dev = d.path().join("full");
    let made = std::process::Command::new("mknod")
        .arg(&dev)
        .args(["c", "1", "7"])
        .status()
        .unwrap();
    assert!(made.success());
    let err = one_line_error(
        &logits_args(&tiny(), &dev.display().to_string()),
        &[],
        &["full", "No space left on device"],
    );
    let ft = std::fs::symlink_metadata(&dev).unwrap().file_type();
    assert!(ft.is_char_device(), "{err}");
}

/// A FIFO is written into (a reader thread gets the file), never replaced.
#[test]
fn logits_out_to_a_fifo_writes_in_place() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(&fifo).unwrap())
    };
    let r = run(&logits_args(&tiny(), &fifo.display().to_string()), &[]);
    assert_eq!(classify(&r), Outcome::Ok, "{r:?}");
    assert_logits_file(&reader.join().unwrap());
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn max_new_tokens_at_u64_max_is_refused_at_once() {
    let m = tiny();
    for rt in ["actors", "reference"] {
        let args = [
            "generate",
            "-m",
            &m,
            "--prompt-ids",
            "0,5,9",
            "--runtime",
            rt,
            "--max-new-tokens",
            "18446744073709551615",
        ];
        let r = run(&args, &[]);
        assert_eq!(classify(&r), Outcome::CleanError, "{rt}: {r:?}");
        assert!(r.stderr.contains("position limit of 256"), "{}", r.stderr);
        assert!(r.elapsed < Duration::from_secs(20), "{rt}: {:?}", r.elapsed);
    }
}

#[test]
fn usage_errors_are_one_line_and_help_exits_zero() {
    let m = tiny();
    let err = one_line_error(&["generate", "--foo"], &[], &[]);
    assert_eq!(
        err.trim_end(),
        "troupe: error: unexpected argument '--foo'; see 'troupe generate --help'"
    );
    let err = one_line_error(&["--foo"], &[], &[]);
    assert_eq!(
        err.trim_end(),
        "troupe: error: unexpected argument '--foo'; see 'troupe --help'"
    );
    one_line_error(&[], &[], &["a command is required", "generate"]);
    one_line_error(&["generate", "-m", &m], &[], &["--prompt"]);
    one_line_error(&["frobnicate"], &[], &["frobnicate"]);
    one_line_error(&["generate", "-m", &m, "-n", "abc"], &[], &["abc"]);
    for args in [
        &["--help"][..],
        &["--version"],
        &["generate", "--help"],
        &["help"],
    ] {
        let r = run(args, &[]);
        assert_eq!(r.code, Some(0), "{args:?}: {r:?}");
        assert!(!r.stdout.is_empty());
    }
}

#[test]
fn prompt_ids_with_an_empty_entry_are_refused() {
    let m = tiny();
    for (ids, entry) in [("1,,2", "entry 1"), ("1,2,", "entry 2"), (",1", "entry 0")] {
        one_line_error(
            &["generate", "-m", &m, "--prompt-ids", ids, "-n", "1"],
            &[],
            &[entry, "empty"],
        );
    }
}

#[test]
fn malformed_troupe_fault_is_an_error_under_every_runtime() {
    let m = tiny();
    for rt in ["reference", "actors"] {
        one_line_error(
            &[
                "generate",
                "-m",
                &m,
                "--prompt-ids",
                "0",
                "-n",
                "1",
                "--runtime",
                rt,
            ],
            &[("TROUPE_FAULT", OsStr::new("actor:x,after:zz,kind:panic"))],
            &["TROUPE_FAULT", "after:zz"],
        );
    }
    let r = run(
        &[
            "generate",
            "-m",
            &m,
            "--prompt-ids",
            "0",
            "-n",
            "1",
            "--runtime",
            "reference",
        ],
        &[(
            "TROUPE_FAULT",
            OsStr::new("actor:layer0.attention,after:0,kind:panic"),
        )],
    );
    assert_eq!(classify(&r), Outcome::Ok, "{r:?}");
}
