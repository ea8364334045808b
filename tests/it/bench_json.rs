//! `troupe bench --json` on a bundled fixture, for both runtimes on `cpu` and on the PTX
//! interpreter: the last stdout line is one JSON object with the run's identity, one test per
//! pp/tg test and depth (llama-bench's names, the depth apart), and what each decode step moved
//! host↔device and launched, counted by the backends. On the interpreter a greedy decode step
//! of the reference executor brings back at most the sampled id (4 bytes for one sequence), the
//! actor runtime the id and the routing decisions; both send at most 64 bytes per sequence.

use std::process::Command;

use serde_json::Value;

use crate::common::case_dir;

/// `troupe bench --json` with tiny sizes; the parsed last stdout line.
fn bench_json(device: &str, runtime: &str) -> Value {
    let model = case_dir("deepseek-v3-tiny");
    let args = [
        "bench",
        "-m",
        model.to_str().expect("utf-8 path"),
        "-p",
        "5",
        "-n",
        "3",
        "-d",
        "0,9",
        "-r",
        "1",
        "--json",
        "--device",
        device,
        "--runtime",
        runtime,
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_troupe"))
        .args(args)
        .output()
        .expect("run troupe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The text rows come first, named like llama-bench's.
    assert!(stdout.contains("tg3 @ d9"), "{stdout}");
    assert!(stdout.contains("pp5 @ d9"), "{stdout}");
    let last = stdout.lines().last().expect("a last line");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"))
}

fn number(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is not a number in {v}"))
}

fn check(v: &Value, device: &str, runtime: &str) {
    let what = format!("{device}/{runtime}");
    assert!(
        v["model"]
            .as_str()
            .is_some_and(|m| m.contains("deepseek-v3-tiny")),
        "{what}: {v}"
    );
    assert_eq!(v["device"], device, "{what}");
    assert_eq!(v["runtime"], runtime, "{what}");
    assert!(
        v["isa"].as_str().is_some_and(|s| !s.is_empty()),
        "{what}: {v}"
    );
    assert!(number(v, "threads") >= 1.0, "{what}");
    let tests = v["tests"].as_array().expect("tests");
    let got: Vec<(String, u64, u64, u64)> = tests
        .iter()
        .map(|t| {
            (
                t["name"].as_str().expect("name").to_string(),
                t["n_prompt"].as_u64().expect("n_prompt"),
                t["n_gen"].as_u64().expect("n_gen"),
                t["n_depth"].as_u64().expect("n_depth"),
            )
        })
        .collect();
    let want = [
        ("pp5", 5, 0, 0),
        ("tg3", 0, 3, 0),
        ("pp5", 5, 0, 9),
        ("tg3", 0, 3, 9),
    ]
    .map(|(n, p, g, d)| (n.to_string(), p, g, d));
    assert_eq!(got, want, "{what}");
    for t in tests {
        let (tok_s, lo, hi) = (number(t, "tok_s"), number(t, "min"), number(t, "max"));
        assert!(tok_s > 0.0 && lo <= tok_s && tok_s <= hi, "{what}: {t}");
    }
    // Every decode step embeds a token id: at least 4 bytes go in on a device; the CPU keeps
    // everything on the host.
    let (h2d, d2h) = (
        number(v, "h2d_bytes_per_decode_step"),
        number(v, "d2h_bytes_per_decode_step"),
    );
    if device == "cpu" {
        assert_eq!((h2d, d2h), (0.0, 0.0), "{what}");
    } else {
        assert!(h2d >= 4.0, "{what}: {h2d}");
    }
    let launches = v["kernel_launches"].as_object().expect("kernel_launches");
    assert!(!launches.is_empty(), "{what}: {v}");
    for (k, n) in launches {
        assert!(n.as_f64().is_some_and(|n| n > 0.0), "{what}: {k} = {n}");
    }
    let costs = v["depth_costs"].as_array().expect("depth_costs");
    assert_eq!(costs.len(), 1, "{what}: {v}");
    assert_eq!(costs[0]["n_depth"], 9, "{what}");
    assert!(number(&costs[0], "cache_bytes") > 0.0, "{what}");
}

#[test]
fn bench_json_on_cpu_for_both_runtimes() {
    for runtime in ["reference", "actors"] {
        check(&bench_json("cpu", runtime), "cpu", runtime);
    }
}

#[test]
fn bench_json_on_the_ptx_interpreter_counts_what_crosses() {
    for runtime in ["reference", "actors"] {
        let v = bench_json("ptx-interp", runtime);
        check(&v, "ptx-interp", runtime);
        if runtime == "reference" {
            // Greedy sampling on the device: the sampled id is all that comes back; once the
            // weights are resident, a step's upload is its token id (and a new page's table
            // entry): issue #9's budget of 64 bytes per sequence.
            assert!(number(&v, "d2h_bytes_per_decode_step") <= 4.0, "{v}");
            assert!(number(&v, "h2d_bytes_per_decode_step") <= 64.0, "{v}");
        } else {
            // The actor runtime may also bring each MoE layer's routing decisions to the host
            // (ids and weights: 8 bytes per slot; deepseek-v3-tiny: top-4, layers 1-3 MoE) and
            // nothing else.
            let routing = 8.0 * 4.0 * 3.0;
            assert!(
                number(&v, "d2h_bytes_per_decode_step") <= 4.0 + routing,
                "{v}"
            );
            assert!(number(&v, "h2d_bytes_per_decode_step") <= 64.0, "{v}");
        }
    }
}
