//! Supervision without loss: injected panics and hangs are restarted and re-issued, and the
//! outputs stay bit-identical; an actor failing repeatedly fails only the requests needing it.

use std::time::Duration;

use crate::common::*;
use troupe_actors::{ActorError, ActorRuntime, RuntimeConfig};
use troupe_engine::weights::random::SplitMix64;

fn config(faults: &str, schedule: &str, max_restarts: usize) -> RuntimeConfig {
    fault_config(
        faults,
        schedule,
        None,
        max_restarts,
        Duration::from_millis(150),
    )
}

#[test]
fn a_panic_and_a_hang_are_restarted_and_reissued_bit_identically() {
    let (_g, model) = load("deepseek-v3-tiny");
    let reqs = greedy_requests("deepseek-v3-tiny", 3);
    let want = reference(&model, &reqs);
    let spec = "actor:layer2.expert1,after:1,kind:panic; actor:layer1.attention,after:2,kind:hang; actor:layer3.router,after:1,kind:panic; actor:layer0.mlp,after:0,kind:hang";
    let rt = ActorRuntime::start_with(model.clone(), None, None, config(spec, "two-microbatch", 3))
        .expect("start");
    let got = rt.generate(&reqs).expect("generate");
    assert_same(&got, &want, "with faults");
    assert!(
        rt.core().faults_fired() >= 3,
        "faults fired: {}",
        rt.core().faults_fired()
    );
    rt.shutdown().expect("shutdown");
}

#[test]
fn hundred_random_faults_across_fifty_concurrent_requests_lose_nothing() {
    let (_g, model) = load("deepseek-v3-tiny");
    let ps = prompts("deepseek-v3-tiny");
    let mut rng = SplitMix64::new(42);
    let reqs: Vec<_> = (0..50)
        .map(|i| {
            let p = &ps[i % ps.len()];
            let len = 1 + (rng.next_u64() % p.len() as u64) as usize;
            request(p[..len].to_vec(), 3, (i % 3 == 0).then_some(i as u64))
        })
        .collect();
    let want = reference(&model, &reqs);
    // Actor names come from a fault-free start.
    let probe = ActorRuntime::start_with(model.clone(), None, None, config("", "sequential", 3))
        .expect("start");
    let names: Vec<String> = probe
        .core()
        .actor_names
        .iter()
        .filter(|n| !n.starts_with("stage"))
        .cloned()
        .collect();
    probe.shutdown().expect("shutdown");
    let spec: Vec<String> = (0..100)
        .map(|_| {
            let actor = &names[(rng.next_u64() % names.len() as u64) as usize];
            let kind = if rng.next_u64() % 10 == 0 {
                "hang"
            } else {
                "panic"
            };
            format!("actor:{actor},after:{},kind:{kind}", rng.next_u64() % 8)
        })
        .collect();
    let rt = ActorRuntime::start_with(
        model.clone(),
        None,
        None,
        config(&spec.join(";"), "two-microbatch", 1000),
    )
    .expect("start");
    let results = rt.generate_each(&reqs);
    let fired = rt.core().faults_fired();
    rt.shutdown().expect("shutdown");
    let got: Vec<_> = results
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|e| panic!("request {i} lost: {e}")))
        .collect();
    assert_same(&got, &want, "100 random faults");
    eprintln!("faults fired: {fired} of 100");
    assert!(fired >= 50, "only {fired} faults fired");
}

#[test]
fn an_actor_failing_repeatedly_fails_only_the_requests_that_need_it() {
    let (_g, model) = load("deepseek-v3-tiny");
    let reqs: Vec<_> = (0..40u32)
        .map(|t| request(vec![t * 7 + 3], 1, None))
        .collect();
    let want = reference(&model, &reqs);
    let rt = ActorRuntime::start_with(
        model.clone(),
        None,
        None,
        config(
            "actor:layer1.expert3,after:0,kind:panic,times:1000",
            "sequential",
            2,
        ),
    )
    .expect("start");
    let results = rt.generate_each(&reqs);
    rt.shutdown().expect("shutdown");
    let (mut ok, mut failed) = (0, 0);
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(out) => {
                ok += 1;
                assert_same(
                    std::slice::from_ref(out),
                    &want[i..i + 1],
                    &format!("surviving request {i}"),
                );
            }
            Err(ActorError::ActorDown { actor, reason, .. }) => {
                failed += 1;
                assert_eq!(actor, "layer1.expert3", "request {i}");
                assert!(reason.contains("failed"), "reason: {reason}");
            }
            Err(e) => panic!("request {i}: unexpected error {e}"),
        }
    }
    eprintln!("{ok} requests completed, {failed} failed with layer1.expert3 down");
    assert!(ok > 0 && failed > 0, "ok {ok} failed {failed}");
}
