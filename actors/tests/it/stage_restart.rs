//! Stage supervisors are supervised too: the root restarts a failed `stage{S}` actor, which
//! replaces its children and re-issues the stage's calls in flight — outputs stay bit-identical.
//! A stage failing past the restart budget fails the requests with `ActorDown`.

use std::time::Duration;

use crate::common::*;
use troupe_actors::{ActorError, ActorRuntime, RuntimeConfig};

fn config(faults: &str, schedule: &str, max_restarts: usize) -> RuntimeConfig {
    fault_config(
        faults,
        schedule,
        Some(2),
        max_restarts,
        Duration::from_millis(500),
    )
}

#[test]
fn a_failed_stage_is_restarted_and_its_calls_reissued_bit_identically() {
    let (_g, model) = load("deepseek-v3-tiny");
    let reqs = greedy_requests("deepseek-v3-tiny", 3);
    let want = reference(&model, &reqs);
    for schedule in ["sequential", "two-microbatch", "pipeline"] {
        let spec = "actor:stage1,after:2,kind:panic; actor:stage0,after:1,kind:panic; actor:layer3.router,after:2,kind:panic";
        let rt = ActorRuntime::start_with(model.clone(), None, None, config(spec, schedule, 5))
            .expect("start");
        let got = rt.generate(&reqs).expect("generate");
        let fired = rt.core().faults_fired();
        rt.shutdown().expect("shutdown");
        assert_same(&got, &want, &format!("{schedule} with stage faults"));
        assert!(fired >= 3, "{schedule}: faults fired: {fired}");
    }
}

#[test]
fn a_stage_failing_repeatedly_is_declared_down() {
    let (_g, model) = load("deepseek-v3-tiny");
    let reqs: Vec<_> = (0..3u32).map(|t| request(vec![t + 3], 2, None)).collect();
    let rt = ActorRuntime::start_with(
        model,
        None,
        None,
        config(
            "actor:stage1,after:0,kind:panic,times:1000",
            "sequential",
            2,
        ),
    )
    .expect("start");
    let results = rt.generate_each(&reqs);
    rt.shutdown().expect("shutdown");
    for (i, r) in results.iter().enumerate() {
        match r {
            Err(ActorError::ActorDown { actor, .. }) => assert_eq!(actor, "stage1", "request {i}"),
            other => panic!(
                "request {i}: expected stage1 down, got {:?}",
                other.as_ref().err()
            ),
        }
    }
}

#[test]
fn stage_faults_must_be_panics() {
    let (_g, model) = load("deepseek-v3-tiny");
    let err = ActorRuntime::start_with(
        model,
        None,
        None,
        config("actor:stage0,after:0,kind:hang", "sequential", 2),
    )
    .err()
    .expect("rejected");
    assert!(
        matches!(&err, ActorError::Fault { spec, .. } if spec == "stage0"),
        "{err}"
    );
}
