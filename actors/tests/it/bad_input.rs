//! Bad placements, schedules, fault specs and prompts give a clear error naming the field —
//! never a panic or a hang.

use crate::common::*;
use troupe_actors::{ActorError, ActorRuntime, FaultPlan, RuntimeConfig, RuntimeOptions};

fn start_err(placement: &str, schedule: &str, cfg: RuntimeConfig) -> ActorError {
    let (_g, model) = load("deepseek-v3-tiny");
    let p: toml::Table = toml::from_str(placement).expect("placement toml");
    let s: toml::Table = toml::from_str(schedule).expect("schedule toml");
    let cfg = RuntimeConfig {
        faults: cfg.faults.or(Some(FaultPlan::default())),
        ..cfg
    };
    match ActorRuntime::start_with(model, Some(&p), Some(&s), cfg) {
        Ok(rt) => {
            rt.shutdown().ok();
            panic!("placement {placement:?} schedule {schedule:?} was accepted")
        }
        Err(e) => e,
    }
}

fn placement_err(placement: &str) -> (String, String) {
    match start_err(placement, "", RuntimeConfig::default()) {
        ActorError::Placement { field, message } => (field, message),
        e => panic!("{placement}: expected a placement error, got {e}"),
    }
}

#[test]
fn placement_naming_a_missing_layer_is_rejected() {
    let (f, m) = placement_err("stages = [[0, 1], [2, 9]]");
    assert_eq!(f, "stages[1]");
    assert!(m.contains("layer 9 does not exist"), "{m}");
    let (f, m) = placement_err("[[expert_groups]]\nlayer = 7\nexperts = [0]\nstream = \"cpu0\"");
    assert_eq!(f, "expert_groups[0].layer");
    assert!(m.contains("layer 7"), "{m}");
}

#[test]
fn placement_naming_a_missing_expert_or_leaving_one_out_is_rejected() {
    let (f, m) = placement_err("[[expert_groups]]\nexperts = [0, 99]\nstream = \"cpu0\"");
    assert_eq!(f, "expert_groups");
    assert!(m.contains("expert 99 does not exist"), "{m}");
    let (_, m) = placement_err("[[expert_groups]]\nexperts = [0, 1]\nstream = \"cpu0\"");
    assert!(m.contains("expert 2 of layer 1 is not placed"), "{m}");
}

#[test]
fn placement_naming_a_missing_stream_is_rejected() {
    let (f, m) = placement_err("streams = 2\nstage_streams = [\"cpu7\"]");
    assert_eq!(f, "stage_streams[0]");
    assert!(m.contains("no stream named `cpu7`"), "{m}");
    // A bare name is a CPU stream, unless it reads as another device.
    let (f, _) = placement_err("streams = [\"cuda:0\"]");
    assert_eq!(f, "streams[0]");
    let (f, _) = placement_err("[[expert_groups]]\nexperts = [0]\nstream = \"nope\"");
    assert_eq!(f, "expert_groups[0].stream");
}

#[test]
fn cycles_and_empty_stages_are_rejected() {
    let (f, m) = placement_err("stages = [[2, 3], [0, 1]]");
    assert_eq!(f, "stages[1]");
    assert!(m.contains("cycle"), "{m}");
    let (f, m) = placement_err("stages = [[0, 1], [3, 2]]");
    assert_eq!(f, "stages[1]");
    assert!(m.contains("empty"), "{m}");
    let (f, _) = placement_err("stages = []");
    assert_eq!(f, "stages");
    let (f, m) = placement_err("stages = [[0, 1]]");
    assert_eq!(f, "stages");
    assert!(m.contains("layer 2 belongs to no stage"), "{m}");
    let (f, _) = placement_err("[link]\nlatency_us = 5");
    assert_eq!(f, "link.gbps");
    let (f, _) = placement_err("colour = \"red\"");
    assert_eq!(f, "colour");
}

#[test]
fn impossible_schedules_are_rejected() {
    let cfg = RuntimeConfig {
        options: RuntimeOptions {
            schedule: Some("pipeline".into()),
            stages: Some(9),
            ..Default::default()
        },
        ..Default::default()
    };
    match start_err("", "", cfg) {
        ActorError::Placement { field, message } => {
            assert_eq!(field, "stages");
            assert!(
                message.contains("9 stages but the model has only 4 layers"),
                "{message}"
            );
        }
        e => panic!("expected a stages error, got {e}"),
    }
    match start_err("", "kind = \"zigzag\"", RuntimeConfig::default()) {
        ActorError::Schedule { field, .. } => assert_eq!(field, "kind"),
        e => panic!("{e}"),
    }
    let cfg = RuntimeConfig {
        options: RuntimeOptions {
            schedule: Some("bogus".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match start_err("", "", cfg) {
        ActorError::Schedule { field, message } => {
            assert_eq!(field, "--schedule");
            assert!(message.contains("unknown schedule `bogus`"), "{message}");
        }
        e => panic!("{e}"),
    }
    match start_err("", "micro_batches = 0", RuntimeConfig::default()) {
        ActorError::Schedule { field, .. } => assert_eq!(field, "micro_batches"),
        e => panic!("{e}"),
    }
}

#[test]
fn malformed_fault_specs_are_rejected() {
    for (spec, needle) in [
        ("actor:layer1.attention,after:two,kind:panic", "`after:two`"),
        (
            "actor:layer1.attention,after:1,kind:explode",
            "expected panic or hang",
        ),
        ("actor:layer1.attention,kind:panic", "missing `after:N`"),
        ("after:1,kind:panic", "missing `actor:NAME`"),
        (
            "actor:layer1.attention,after:1,kind:panic,colour:red",
            "unknown key `colour`",
        ),
        ("layer1.attention", "is not `key:value`"),
    ] {
        match FaultPlan::parse(spec) {
            Err(ActorError::Fault { message, .. }) => {
                assert!(message.contains(needle), "{spec}: {message}")
            }
            other => panic!("{spec}: {other:?}"),
        }
    }
    let cfg = RuntimeConfig {
        faults: Some(FaultPlan::parse("actor:layer9.expert1,after:1,kind:panic").unwrap()),
        ..Default::default()
    };
    match start_err("", "", cfg) {
        ActorError::Fault { message, .. } => assert!(
            message.contains("no actor named `layer9.expert1`"),
            "{message}"
        ),
        e => panic!("{e}"),
    }
}

#[test]
fn bad_prompts_give_the_engine_errors() {
    let (_g, model) = load("deepseek-v3-tiny");
    let rt = ActorRuntime::start_with(
        model,
        None,
        None,
        RuntimeConfig {
            faults: Some(FaultPlan::default()),
            ..Default::default()
        },
    )
    .expect("start");
    let e = rt
        .generate(&[request(vec![5, 99999], 2, None)])
        .expect_err("out of range");
    assert_eq!(
        e.to_string(),
        "prompt token id 99999 at position 1 is out of range (vocab size 1024)"
    );
    assert!(matches!(
        e.engine(),
        Some(troupe_engine::EngineError::TokenOutOfRange { .. })
    ));
    let e = rt.generate(&[request(vec![], 2, None)]).expect_err("empty");
    assert_eq!(e.to_string(), "empty prompt: at least one token is needed");
    let e = rt.logits(&vec![1; 300]).expect_err("too long");
    assert!(
        e.to_string().contains("exceeds the position limit of 256"),
        "{e}"
    );
    // The runtime still works afterwards.
    assert_eq!(
        rt.generate(&[request(vec![5, 6, 7], 2, None)])
            .expect("generate")[0]
            .generated
            .len(),
        2
    );
    rt.shutdown().expect("shutdown");
}

#[test]
fn max_new_tokens_near_usize_max_is_rejected_at_once_like_the_reference() {
    let (g, model) = load("deepseek-v3-tiny");
    let req = request(vec![5, 6, 7], usize::MAX, None);
    let be = troupe_engine::kernels::CpuBackend::new();
    let want = troupe_engine::generate::generate(
        &troupe_engine::executor::ReferenceExecutor::new(&model, &be),
        std::slice::from_ref(&req),
    )
    .expect_err("reference")
    .to_string();
    assert!(want.contains("exceeds the position limit of 256"), "{want}");
    let rt = ActorRuntime::start_with(
        model.clone(),
        None,
        None,
        RuntimeConfig {
            faults: Some(FaultPlan::default()),
            ..Default::default()
        },
    )
    .expect("start");
    let e = rt
        .generate(std::slice::from_ref(&req))
        .expect_err("generate");
    assert_eq!(e.to_string(), want);
    // Straight into the batcher (no up-front check in the caller): refused before any token.
    let t0 = std::time::Instant::now();
    let each = rt.generate_each(std::slice::from_ref(&req));
    assert_eq!(each[0].as_ref().expect_err("batcher").to_string(), want);
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    rt.shutdown().expect("shutdown");
    // The async service too: the error comes before any stream.
    let tokio_rt = tokio::runtime::Runtime::new().expect("tokio");
    let first = tokio_rt.block_on(async {
        let engine = troupe_actors::Engine::start(
            model,
            &g,
            RuntimeConfig {
                faults: Some(FaultPlan::default()),
                ..Default::default()
            },
        )
        .await
        .expect("engine");
        let first = engine.generate(req).await.map(|_| ());
        engine.shutdown().await.expect("shutdown");
        first
    });
    assert_eq!(first.expect_err("service").to_string(), want);
}
