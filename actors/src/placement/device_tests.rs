//! Devices end to end: a caller's own [`BackendFactory`] serves a device troupe does not know
//! (`DeviceId::Custom`), the default factory refuses it naming the field, and `--device` applies
//! to every stream. The model is a tiny random-weight graph written to a temp dir.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use troupe_engine::executor::ReferenceExecutor;
use troupe_engine::graph::LoadedGraph;
use troupe_engine::kernels::CpuBackend;
use troupe_engine::model::Model;
use troupe_engine::{Backend, DeviceId};

use crate::backend_factory::{BackendBuildError, BackendFactory};
use crate::{ActorError, ActorRuntime, FaultPlan, RuntimeConfig, RuntimeOptions};

/// 2 layers (the first dense), 4 routed experts, random weights.
const TINY_GRAPH: &str = include_str!("tiny_graph.toml");

fn tiny_model() -> Arc<Model> {
    // Tests run concurrently: each call writes its own file, so none reads another's half-written one.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("troupe-device-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("tiny-{n}.toml"));
    std::fs::write(&path, TINY_GRAPH).expect("write graph");
    let graph = LoadedGraph::open(&path).expect("graph");
    let _ = std::fs::remove_file(&path);
    Arc::new(Model::load(&graph, &mut |_, _| {}).expect("model"))
}

fn config(
    placement: &str,
    device: Option<DeviceId>,
    factory: Option<BackendFactory>,
) -> RuntimeConfig {
    RuntimeConfig {
        options: RuntimeOptions {
            schedule: Some("sequential".into()),
            device,
            backends: factory,
            ..Default::default()
        },
        placement: Some(toml::from_str(placement).expect("placement")),
        faults: Some(FaultPlan::default()),
        ..Default::default()
    }
}

/// Serves `cpu` and the custom device `my-npu` (the CPU kernels under another name), counting
/// the `my-npu` backends it builds.
fn custom_factory(built: Arc<AtomicUsize>) -> BackendFactory {
    BackendFactory::new(move |device| match device {
        DeviceId::Cpu => Ok(Arc::new(CpuBackend::new()) as Arc<dyn Backend>),
        DeviceId::Custom(name) if name == "my-npu" => {
            built.fetch_add(1, Ordering::SeqCst);
            Ok(Arc::new(CpuBackend::new()))
        }
        other => Err(BackendBuildError::Unsupported {
            device: other.clone(),
            serves: "cpu and my-npu".into(),
        }),
    })
}

const TWO_STREAMS: &str =
    "[[streams]]\nname = \"host\"\n[[streams]]\nname = \"accel\"\ndevice = \"my-npu\"\n";

#[test]
fn a_custom_factory_serves_a_custom_device() {
    let model = tiny_model();
    let prompt = [0u32, 5, 9, 17, 3];
    let want = ReferenceExecutor::new(&model, &CpuBackend::new())
        .logits(&prompt)
        .expect("reference");
    let built = Arc::new(AtomicUsize::new(0));
    let cfg = config(TWO_STREAMS, None, Some(custom_factory(built.clone())));
    let rt = ActorRuntime::start_with(model.clone(), None, None, cfg).expect("start");
    assert_eq!(
        rt.core().placement.stream_devices,
        [DeviceId::Cpu, DeviceId::Custom("my-npu".into())]
    );
    let got = rt.logits(&prompt).expect("logits");
    rt.shutdown().expect("shutdown");
    assert_eq!(
        built.load(Ordering::SeqCst),
        1,
        "the factory built the custom stream"
    );
    let bits = |t: &troupe_engine::Tensor| t.data().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got), bits(&want), "logits differ from the reference");
}

#[test]
fn a_device_no_factory_serves_is_refused_naming_the_field() {
    let model = tiny_model();
    // The default factory builds cpu only.
    match ActorRuntime::start_with(model.clone(), None, None, config(TWO_STREAMS, None, None)) {
        Err(ActorError::Placement { field, message }) => {
            assert_eq!(field, "streams[1].device");
            assert!(
                message.contains("`my-npu`") && message.contains("backend factory"),
                "{message}"
            );
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("my-npu was built without a factory serving it"),
    }
    // `RuntimeOptions::device` puts every stream on one device; its error names `--device`.
    let other = DeviceId::Custom("other-npu".into());
    let built = Arc::new(AtomicUsize::new(0));
    let cfg = config(
        "streams = 2",
        Some(other),
        Some(custom_factory(built.clone())),
    );
    match ActorRuntime::start_with(model.clone(), None, None, cfg) {
        Err(ActorError::Placement { field, .. }) => assert_eq!(field, "--device"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("other-npu was built"),
    }
    let npu = DeviceId::Custom("my-npu".into());
    let cfg = config(
        "streams = 2",
        Some(npu.clone()),
        Some(custom_factory(built.clone())),
    );
    let rt = ActorRuntime::start_with(model, None, None, cfg).expect("start on my-npu");
    assert_eq!(rt.core().placement.stream_devices, [npu.clone(), npu]);
    rt.shutdown().expect("shutdown");
    // The two streams on my-npu share one backend: its handles are one device's memory.
    assert_eq!(built.load(Ordering::SeqCst), 1);
}

#[test]
fn an_out_of_range_link_override_is_refused() {
    let model = tiny_model();
    let mut cfg = config("streams = 1", None, None);
    cfg.link = Some(crate::LinkSpec {
        latency: std::time::Duration::from_micros(10),
        gbps: 1e-300,
    });
    match ActorRuntime::start_with(model, None, None, cfg) {
        Err(ActorError::Placement { field, .. }) => assert_eq!(field, "link.gbps"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("gbps = 1e-300 accepted"),
    }
}
