//! Every `GpuBackend` op passes exactly the parameters its PTX entry declares (count, order and
//! kind: pointer / u32 / f32) with the launch configuration from `launch`. Runs on a recording
//! device, so the host-side marshalling the CUDA backend uses is checked without a GPU.

use std::sync::Mutex;

use troupe_engine::backend::{AttentionParams, Backend, RopeSlot, RouterRule};
use troupe_engine::dtype::DType;
use troupe_engine::graph::spec::{RopeLayout, RopeSpec, Scoring, TopkMethod};
use troupe_engine::kernels::rope::RopeTable;
use troupe_engine::weights::Weight;
use troupe_engine::Tensor;
use troupe_ptx::device::{Arg, Device};
use troupe_ptx::error::GpuResult;
use troupe_ptx::kernels::file_of;
use troupe_ptx::launch::Launch;
use troupe_ptx::GpuBackend;

/// Buffers are host vectors; launches are recorded, not run.
struct Recorder {
    launches: Mutex<Vec<(Launch, Vec<&'static str>)>>,
}

impl Device for Recorder {
    type Buf = Vec<u8>;
    fn name(&self) -> String {
        "recorder".into()
    }
    fn upload(&self, bytes: &[u8]) -> GpuResult<Vec<u8>> {
        Ok(bytes.to_vec())
    }
    fn alloc(&self, bytes: usize) -> GpuResult<Vec<u8>> {
        Ok(vec![0; bytes])
    }
    fn download(&self, buf: &Vec<u8>, bytes: usize) -> GpuResult<Vec<u8>> {
        let mut v = buf.clone();
        v.resize(bytes, 0);
        Ok(v)
    }
    fn launch(&self, l: &Launch, args: &[Arg<'_, Vec<u8>>]) -> GpuResult<()> {
        let kinds = args
            .iter()
            .map(|a| match a {
                Arg::Buf(_) | Arg::Null => "u64",
                Arg::U32(_) => "u32",
                Arg::F32(_) => "f32",
            })
            .collect();
        self.launches.lock().unwrap().push((*l, kinds));
        Ok(())
    }
}

/// The `.param` types of `entry`, in order, read from the embedded PTX.
fn declared_params(entry: &str) -> Vec<String> {
    let src = file_of(entry).unwrap().source;
    let start = src.find(&format!(".visible .entry {entry}(")).unwrap();
    let end = start + src[start..].find(')').unwrap();
    src[start..end]
        .split(".param")
        .skip(1)
        .map(|p| {
            p.split_whitespace()
                .next()
                .unwrap()
                .trim_start_matches('.')
                .to_string()
        })
        .collect()
}

#[test]
fn every_op_matches_its_entry_signature() {
    let b = GpuBackend::new(Recorder {
        launches: Mutex::new(Vec::new()),
    });
    let x = Tensor::matrix(3, 8, vec![0.5; 24]).unwrap();
    let w8 = Weight::from_f32("w8", vec![8], &[1.0; 8]);
    let wl = Weight::from_u16("wl", DType::BF16, vec![5, 8], &[0x3f80; 40]);
    b.embedding(&wl, &[0, 4, 2]).unwrap();
    b.rms_norm(&x, &w8, 1e-6).unwrap();
    b.linear(&x, &wl).unwrap();
    b.linear(&x, &Weight::from_f32("wf", vec![2, 8], &[0.0; 16]))
        .unwrap();
    b.silu_mul(&x, &x).unwrap();
    let spec = RopeSpec {
        theta: 1e4,
        layout: RopeLayout::HalfSplit,
        yarn: None,
    };
    let table = RopeTable::new(&spec, 4);
    let slot = RopeSlot {
        heads: 2,
        head_stride: 4,
        offset: 0,
    };
    b.rope(&mut x.clone(), slot, &[0, 1, 2], &table).unwrap();
    let p = AttentionParams {
        heads: 2,
        kv_heads: 1,
        qk_dim: 4,
        v_dim: 4,
        scale: 0.5,
        q_start: 0,
        sliding_window: None,
    };
    let kv = Tensor::matrix(3, 4, vec![0.1; 12]).unwrap();
    b.attention(&x, &kv, &kv, &p).unwrap();
    let rule = RouterRule {
        n_experts: 8,
        top_k: 2,
        n_group: 4,
        topk_group: 2,
        scoring: Scoring::Sigmoid,
        method: TopkMethod::NoauxTc,
        norm_topk_prob: true,
        routed_scaling_factor: 2.5,
    };
    b.route(&x, &rule, Some(&[0.0; 8])).unwrap();
    b.argmax(&x).unwrap();

    let launches = b.device().launches.lock().unwrap();
    let names: Vec<&str> = launches.iter().map(|(l, _)| l.kernel).collect();
    assert_eq!(
        names,
        [
            "embedding_bf16",
            "rms_norm_f32",
            "linear_bf16w",
            "linear_f32w",
            "silu_mul_f32",
            "rope_f32",
            "attention_f32",
            "route_topk",
            "argmax_f32"
        ]
    );
    for (l, kinds) in launches.iter() {
        assert_eq!(declared_params(l.kernel), *kinds, "kernel {}", l.kernel);
    }
}
