//! FP8 block-scaled checkpoints (weights kept e4m3 in memory) through the actor runtime: every
//! built-in schedule bit-identical to the reference executor, and batch invariance (each request
//! alone gives the bits it gets inside the batch), on both FP8 fixtures (deepseek-v3-odd-fp8 has
//! dimensions that are not multiples of 128, so its blocks are partial at the edges).

use crate::common::*;
use troupe_actors::{ActorRuntime, RuntimeOptions};
use troupe_engine::dtype::DType;

#[test]
fn fp8_fixtures_are_bit_identical_under_every_schedule_and_batch_invariant() {
    for case in ["deepseek-v3-tiny-fp8", "deepseek-v3-odd-fp8"] {
        let (g, model) = load(case);
        assert_eq!(model.spec.dtype, DType::F8E4M3, "{case}");
        let reqs: Vec<_> = prompts(case)
            .into_iter()
            .enumerate()
            .map(|(i, p)| request(p, 4, (i % 2 == 1).then_some(i as u64)))
            .collect();
        let want = reference(&model, &reqs);
        for (i, r) in reqs.iter().enumerate() {
            let alone = reference(&model, std::slice::from_ref(r));
            assert_same(&alone, &want[i..=i], &format!("{case} request {i} alone"));
        }
        for (schedule, stages) in [
            ("sequential", None),
            ("two-microbatch", None),
            ("pipeline", Some(2)),
        ] {
            let rt = ActorRuntime::start_with(
                model.clone(),
                g.placement.as_ref(),
                g.schedule.as_ref(),
                RuntimeOptions {
                    schedule: Some(schedule.into()),
                    stages,
                    ..Default::default()
                }
                .into(),
            )
            .expect("start");
            let got = rt.generate(&reqs).expect("generate");
            assert_same(&got, &want, &format!("{case} {schedule}"));
            rt.shutdown().expect("shutdown");
        }
    }
}
