//! KV cache capacity is configuration, and running out is one request's error: with a pool too
//! small for one of two requests, that request fails with the KV-cache-full message and the
//! other completes with the tokens and logits it has with room to spare — through the actor
//! runtime (`RuntimeOptions::kv`) and the command line (`--kv-pages`, `--page-tokens`).

use std::process::Command;
use std::sync::Arc;

use troupe::actors::{ActorRuntime, FaultPlan, RuntimeConfig, RuntimeOptions};
use troupe::engine::generate::GenerateRequest;
use troupe::engine::model::KvConfig;
use troupe::engine::sampling::SamplingParams;

use crate::common::{case_dir, load_model};

fn request(prompt: Vec<u32>, n: usize) -> GenerateRequest {
    GenerateRequest {
        prompt,
        max_new_tokens: n,
        sampling: SamplingParams::default(),
        stop_token: None,
        stop_at_eos: false,
        keep_logits: true,
    }
}

fn actors(kv: Option<KvConfig>) -> ActorRuntime {
    let model = Arc::new(load_model(&case_dir("deepseek-v3-tiny")));
    let cfg = RuntimeConfig {
        options: RuntimeOptions {
            kv,
            ..Default::default()
        },
        faults: Some(FaultPlan::default()),
        ..Default::default()
    };
    ActorRuntime::start_with(model, None, None, cfg).expect("actor runtime")
}

#[test]
fn a_request_too_long_for_the_pool_fails_alone_on_the_actor_runtime() {
    let short = request(vec![1, 7, 42], 4); // 7 positions: 2 pages of 4
    let long = request((0..20).map(|i| 3 + i * 5).collect(), 2); // 20 positions: 5 pages
    let small = KvConfig {
        page_tokens: 4,
        capacity_pages: 4,
    };
    let rt = actors(Some(small));
    let got = rt.generate_each(&[short.clone(), long.clone()]);
    rt.shutdown().expect("shutdown");
    let roomy = actors(None);
    let want = roomy.generate(&[short]).expect("with room to spare");
    roomy.shutdown().expect("shutdown");
    let first = got[0].as_ref().expect("the short request completes");
    assert_eq!(first.generated, want[0].generated);
    assert_eq!(first.step_logits, want[0].step_logits);
    match &got[1] {
        Err(e) => assert!(e.to_string().contains("KV cache full"), "{e}"),
        Ok(o) => panic!("the long request ran in a pool too small for it: {o:?}"),
    }
}

#[test]
fn kv_pages_on_the_command_line_bound_the_cache_for_both_runtimes() {
    let model = case_dir("deepseek-v3-tiny");
    let ids: Vec<String> = (0..20).map(|i| (3 + i * 5).to_string()).collect();
    let ids = ids.join(",");
    for runtime in ["actors", "reference"] {
        let run = |pages: &str| {
            Command::new(env!("CARGO_BIN_EXE_troupe"))
                .args(["generate", "-m", model.to_str().expect("utf-8 path")])
                .args(["--prompt-ids", &ids, "-n", "2", "--runtime", runtime])
                .args(["--kv-pages", pages, "--page-tokens", "4"])
                .output()
                .expect("run troupe")
        };
        let o = run("5"); // a prompt of 20 and one fed-back token: 21 positions, 6 pages
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{runtime}: {err}");
        assert_eq!(err.lines().count(), 1, "{runtime}: {err}");
        assert!(err.contains("KV cache full"), "{runtime}: {err}");
        let o = run("6");
        assert!(
            o.status.success(),
            "{runtime}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
