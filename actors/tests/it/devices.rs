//! Pluggable streams: a stream's `device` builds its backend through the factory passed in
//! `RuntimeOptions::backends` (troupe-actors itself never links troupe-ptx). On the PTX
//! interpreter the actor runtime gives the reference executor's tokens and logits on that device.

use std::sync::Arc;

use crate::common::*;
use troupe_actors::{
    ActorError, ActorRuntime, BackendBuildError, BackendFactory, FaultPlan, RuntimeConfig,
    RuntimeOptions,
};
use troupe_engine::executor::ReferenceExecutor;
use troupe_engine::generate::generate;
use troupe_engine::kernels::CpuBackend;
use troupe_engine::{Backend, DeviceId};

fn factory() -> BackendFactory {
    BackendFactory::new(|d| {
        let failed = |e: troupe_ptx::GpuError| BackendBuildError::Failed {
            device: d.clone(),
            source: Box::new(e),
        };
        match d {
            DeviceId::Cpu => Ok(Arc::new(CpuBackend::new()) as Arc<dyn Backend>),
            DeviceId::PtxInterp => troupe_ptx::interp_backend().map_err(failed),
            DeviceId::Cuda(n) => troupe_ptx::cuda_backend(*n).map_err(failed),
            other => Err(BackendBuildError::Unsupported {
                device: other.clone(),
                serves: "cpu, ptx-interp and cuda:N".into(),
            }),
        }
    })
}

fn config(device: Option<&str>) -> RuntimeConfig {
    RuntimeConfig {
        options: RuntimeOptions {
            schedule: Some("sequential".into()),
            device: device.map(|d| d.parse().expect("device name")),
            backends: Some(factory()),
            ..Default::default()
        },
        faults: Some(FaultPlan::default()),
        ..Default::default()
    }
}

#[test]
fn actors_on_the_ptx_interpreter_match_the_reference_on_the_same_device() {
    let (_g, model) = load("deepseek-v3-tiny");
    let prompt: Vec<u32> = prompts("deepseek-v3-tiny")[0]
        .iter()
        .copied()
        .take(4)
        .collect();
    let reqs = vec![request(prompt, 2, None)];
    let be = troupe_ptx::interp_backend().expect("interpreter");
    let want = generate(&ReferenceExecutor::new(&model, be.as_ref()), &reqs).expect("reference");
    let placement: toml::Table = toml::from_str("streams = 1").expect("placement");
    let rt = ActorRuntime::start_with(model, Some(&placement), None, config(Some("ptx-interp")))
        .expect("start");
    let got = rt.generate(&reqs).expect("generate");
    rt.shutdown().expect("shutdown");
    assert_same(&got, &want, "ptx-interp");
}

#[test]
fn placement_streams_name_their_device() {
    let (_g, model) = load("deepseek-v3-tiny");
    let reqs = vec![request(prompts("deepseek-v3-tiny")[0].clone(), 2, None)];
    let want = reference(&model, &reqs);
    let text = "[[streams]]\nname = \"main\"\ndevice = \"cpu\"\n[[streams]]\nname = \"side\"\nexpert_streams = 0";
    // A typo'd field inside a stream table names it.
    let table: toml::Table = toml::from_str(text).expect("toml");
    let err = ActorRuntime::start_with(model.clone(), Some(&table), None, config(None))
        .err()
        .expect("unknown field");
    assert!(
        matches!(&err, ActorError::Placement { field, .. } if field == "streams[1].expert_streams"),
        "{err}"
    );
    let text = "[[streams]]\nname = \"main\"\ndevice = \"cpu\"\n[[streams]]\nname = \"side\"";
    let table: toml::Table = toml::from_str(text).expect("toml");
    let rt =
        ActorRuntime::start_with(model.clone(), Some(&table), None, config(None)).expect("start");
    assert_same(
        &rt.generate(&reqs).expect("generate"),
        &want,
        "named cpu streams",
    );
    rt.shutdown().expect("shutdown");
    let table: toml::Table =
        toml::from_str("[[streams]]\nname = \"s0\"\ndevice = \"tpu\"").expect("toml");
    let err = ActorRuntime::start_with(model.clone(), Some(&table), None, config(None))
        .err()
        .expect("bad device");
    assert!(
        matches!(&err, ActorError::Placement { field, .. } if field == "streams[0].device"),
        "{err}"
    );
}

#[test]
fn a_missing_cuda_device_is_a_clear_startup_error() {
    let (_g, model) = load("deepseek-v3-tiny");
    let table: toml::Table =
        toml::from_str("[[streams]]\nname = \"gpu\"\ndevice = \"cuda:0\"").expect("toml");
    match ActorRuntime::start_with(model.clone(), Some(&table), None, config(None)) {
        Err(ActorError::Placement { field, message }) => {
            assert_eq!(field, "streams[0].device");
            assert!(!message.is_empty());
        }
        Err(e) => panic!("unexpected error: {e}"),
        // A machine with CUDA: the stream simply exists.
        Ok(rt) => rt.shutdown().expect("shutdown"),
    }
    // Without a factory only cpu exists, and the error says so.
    let cfg = RuntimeConfig {
        faults: Some(FaultPlan::default()),
        ..Default::default()
    };
    let err = ActorRuntime::start_with(model, Some(&table), None, cfg)
        .err()
        .expect("no factory");
    assert!(err.to_string().contains("backend factory"), "{err}");
}

#[test]
fn expert_groups_on_another_device_get_their_rows_moved_explicitly() {
    let (_g, model) = load("deepseek-v3-tiny");
    let reqs = vec![request(prompts("deepseek-v3-tiny")[0].clone(), 3, None)];
    let want = reference(&model, &reqs);
    // Routers, attention and the head on the CPU; every expert group on the interpreter.
    let text = "stage_streams = [\"host\"]\nexpert_streams = [\"gpu\"]\n[[streams]]\nname = \"host\"\ndevice = \"cpu\"\n[[streams]]\nname = \"gpu\"\ndevice = \"ptx-interp\"";
    let table: toml::Table = toml::from_str(text).expect("placement");
    let rt = ActorRuntime::start_with(model, Some(&table), None, config(None)).expect("start");
    let got = rt.generate(&reqs).expect("generate");
    let moved = rt.core().device_counters();
    rt.shutdown().expect("shutdown");
    assert_eq!(got[0].generated, want[0].generated, "tokens");
    for (g, w) in got[0].step_logits.iter().zip(&want[0].step_logits) {
        let scale = w.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let diff = g
            .iter()
            .zip(w)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff <= 1e-4 * scale.max(1.0), "logits differ by {diff}");
    }
    // The groups' rows and routing went up to the interpreter, their results came back down.
    assert!(moved.h2d_bytes > 0 && moved.d2h_bytes > 0, "{moved:?}");
    assert!(
        moved.launches.keys().any(|k| k.contains("grouped")),
        "{moved:?}"
    );
}
