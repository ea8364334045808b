//! The facade's device factory as a library user meets it: `troupe::backends::default_factory()`
//! in `RuntimeOptions::backends` puts the actor runtime's streams on the PTX interpreter, where
//! it gives the reference executor's tokens and logits on the same device; an unknown custom
//! device is refused by name.

use std::sync::Arc;

use troupe::actors::{ActorRuntime, FaultPlan, RuntimeConfig, RuntimeOptions};
use troupe::engine::executor::ReferenceExecutor;
use troupe::engine::generate::{generate, GenerateRequest};
use troupe::engine::sampling::SamplingParams;
use troupe::engine::DeviceId;

use crate::common::{case_dir, load_model};

fn config(device: DeviceId) -> RuntimeConfig {
    RuntimeConfig {
        options: RuntimeOptions {
            schedule: Some("sequential".into()),
            device: Some(device),
            backends: Some(troupe::backends::default_factory()),
            ..Default::default()
        },
        faults: Some(FaultPlan::default()),
        ..Default::default()
    }
}

#[test]
fn the_default_factory_runs_actor_streams_on_the_ptx_interpreter() {
    let model = Arc::new(load_model(&case_dir("deepseek-v3-tiny")));
    let reqs = vec![GenerateRequest {
        prompt: vec![1, 7, 42, 99],
        max_new_tokens: 2,
        sampling: SamplingParams::default(),
        stop_token: None,
        stop_at_eos: false,
        keep_logits: true,
    }];
    let be = troupe::backends::backend(&DeviceId::PtxInterp).expect("interpreter backend");
    let want = generate(&ReferenceExecutor::new(&model, be.as_ref()), &reqs).expect("reference");
    let rt = ActorRuntime::start_with(model, None, None, config(DeviceId::PtxInterp))
        .expect("actors on ptx-interp");
    let got = rt.generate(&reqs).expect("generate");
    rt.shutdown().expect("shutdown");
    assert_eq!(got[0].generated, want[0].generated);
    assert_eq!(got[0].step_logits, want[0].step_logits);
    assert_eq!(got[0].step_logits.len(), 2);
}

#[test]
fn a_custom_device_the_default_factory_does_not_know_is_refused_by_name() {
    let model = Arc::new(load_model(&case_dir("deepseek-v3-tiny")));
    let device: DeviceId = "my-npu".parse().expect("a well-formed custom name");
    let err = ActorRuntime::start_with(model, None, None, config(device))
        .err()
        .expect("my-npu has no backend");
    assert!(err.to_string().contains("my-npu"), "{err}");
}
