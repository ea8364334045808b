//! Every `GpuBackend` op passes exactly the parameters its PTX entry declares (count, order and
//! kind: pointer / u32 / f32) with the launch configuration from `launch`. Runs on a recording
//! device, so the host-side marshalling the CUDA backend uses is checked without a GPU.

use std::sync::Mutex;

use troupe_engine::backend::{
    AttentionParams, Backend, ExpertWeights, HeadSlice, RopeSlot, RouterRule,
};
use troupe_engine::device_tensor::{BlockTableRef, KvLayout};
use troupe_engine::dtype::DType;
use troupe_engine::error::PassSite;
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
    fn sm(&self) -> u32 {
        89
    }
    fn upload(&self, bytes: &[u8]) -> GpuResult<Vec<u8>> {
        Ok(bytes.to_vec())
    }
    fn alloc(&self, bytes: usize) -> GpuResult<Vec<u8>> {
        Ok(vec![0; bytes])
    }
    fn write(&self, buf: &mut Vec<u8>, offset: usize, bytes: &[u8]) -> GpuResult<()> {
        buf[offset..offset + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }
    fn download(&self, buf: &Vec<u8>, bytes: usize) -> GpuResult<Vec<u8>> {
        let mut v = buf.clone();
        v.resize(bytes, 0);
        Ok(v)
    }
    fn address(&self, buf: &Vec<u8>) -> u64 {
        buf.as_ptr() as u64
    }
    fn launch(&self, l: &Launch, args: &[Arg<'_, Vec<u8>>]) -> GpuResult<()> {
        let kinds = args
            .iter()
            .map(|a| match a {
                Arg::Buf(_) | Arg::BufAt(..) | Arg::Null => "u64",
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
    let x = b
        .upload(&Tensor::matrix(3, 8, vec![0.5; 24]).unwrap())
        .unwrap();
    let w8 = Weight::from_f32("w8", vec![8], &[1.0; 8]);
    let wl = Weight::from_u16("wl", DType::BF16, vec![5, 8], &[0x3f80; 40]);
    b.embedding(&wl, &[0, 4, 2]).unwrap();
    b.rms_norm(&x, &w8, 1e-6).unwrap();
    b.linear(&x, &wl).unwrap();
    b.linear(&x, &Weight::from_f32("wf", vec![2, 8], &[0.0; 16]))
        .unwrap();
    b.silu_mul(&x, &x).unwrap();
    b.add(&x, &x).unwrap();
    let heads = [
        Weight::from_f32("h0", vec![3, 4], &[0.0; 12]),
        Weight::from_f32("h1", vec![3, 4], &[0.0; 12]),
    ];
    b.per_head_linear(&x, &heads).unwrap();
    let slice = HeadSlice {
        heads: 2,
        stride: 4,
        offset: 1,
        width: 2,
    };
    b.head_columns(&x, slice).unwrap();
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
    b.rope(&x, slot, 7, &table).unwrap();
    let p = AttentionParams {
        heads: 2,
        kv_heads: 1,
        d1: 4,
        d2: 0,
        v_dim: 4,
        scale: 0.5,
        q_start: 0,
        sliding_window: None,
    };
    let kv = b
        .upload(&Tensor::matrix(3, 4, vec![0.1; 12]).unwrap())
        .unwrap();
    b.attention(&x, None, &kv, None, &kv, &p).unwrap();
    let layout = KvLayout {
        page_tokens: 2,
        key_width: 4,
        rope_width: 0,
        value_width: 4,
    };
    let store = b.kv_store(layout, 4).unwrap();
    let bt = BlockTableRef {
        id: 9,
        generation: 0,
        pages: &[3, 1],
    };
    b.kv_write(&store, bt, 0, &kv, None, Some(&kv)).unwrap();
    b.paged_attention(&x, None, &store, bt, 3, &p).unwrap();
    b.kv_read(&store, bt, 3).unwrap();
    b.slice_rows(&x, 1, 2).unwrap();
    b.concat_rows(&[x.clone(), x.clone()]).unwrap();
    b.gather_rows(&x, &[2, 0]).unwrap();
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
    let bias = Weight::from_f32("bias", vec![8], &[0.0; 8]);
    let r = b.route(&x, &rule, Some(&bias)).unwrap();
    let ew = |n: &str, rows, cols| Weight::from_f32(n, vec![rows, cols], &vec![0.0; rows * cols]);
    let (g, u, d) = (ew("g", 6, 8), ew("u", 6, 8), ew("d", 8, 6));
    let experts = [ExpertWeights {
        id: 3,
        gate: &g,
        up: &u,
        down: &d,
    }];
    let rows = b.grouped_mlp(&x, &r, &experts).unwrap();
    let rows2 = b.grouped_mlp(&x, &r, &experts).unwrap();
    b.moe_combine(&x, &r, &[rows], Some(&x)).unwrap();
    b.moe_combine(&x, &r, &[rows2.clone(), rows2], None)
        .unwrap();
    b.check_finite(&x, PassSite::Head).unwrap();
    b.download(&x).unwrap();
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
            "add_f32",
            "copy_rows_b32",
            "grouped_linear_f32w",
            "copy_rows_b32",
            "copy_rows_b32",
            "rope_f32",
            "attention_f32",
            "copy_rows_b32",
            "copy_rows_b32",
            "attention_f32",
            "copy_rows_b32",
            "copy_rows_b32",
            "copy_rows_b32",
            "copy_rows_b32",
            "copy_rows_b32",
            "route_topk",
            "moe_sort",
            "moe_gather",
            "grouped_linear_f32w",
            "grouped_linear_f32w",
            "silu_mul_f32",
            "grouped_linear_f32w",
            "moe_sort",
            "moe_gather",
            "grouped_linear_f32w",
            "grouped_linear_f32w",
            "silu_mul_f32",
            "grouped_linear_f32w",
            "moe_combine",
            "copy_rows_b32",
            "moe_index_merge",
            "copy_rows_b32",
            "moe_index_merge",
            "moe_combine",
            "check_finite_f32",
            "flag_copy_b32",
            "argmax_f32",
        ]
    );
    for (l, kinds) in launches.iter() {
        assert_eq!(declared_params(l.kernel), *kinds, "kernel {}", l.kernel);
    }
}

/// FP8 weights: the weight-only `linear_fp8w` / `grouped_linear_fp8w` by default, and under W8A8
/// (sm_89+) `fp8_quant_act` + `fp8_gemm_blockscaled` where `k % 128 == 0`, `linear_fp8w` elsewhere.
#[test]
fn fp8_ops_match_their_entry_signatures() {
    use troupe_engine::backend::Routing;
    use troupe_ptx::Fp8Compute;
    let recorder = || Recorder {
        launches: Mutex::new(Vec::new()),
    };
    let fp8 = |n: &str, rows: usize, cols: usize| {
        crate::common::weight(n, DType::F8E4M3, vec![rows, cols], &vec![0.25; rows * cols])
    };
    let (w8, w128) = (fp8("w8", 5, 8), fp8("w128", 5, 128));
    let (g, u, d) = (fp8("g", 6, 8), fp8("u", 6, 8), fp8("d", 8, 6));
    let experts = [ExpertWeights {
        id: 1,
        gate: &g,
        up: &u,
        down: &d,
    }];
    let routing = Routing {
        ids: vec![vec![1]; 3],
        weights: vec![vec![1.0]; 3],
    };
    let default = GpuBackend::new(recorder());
    let w8a8 = GpuBackend::new(recorder())
        .with_fp8_compute(Fp8Compute::W8A8)
        .expect("the recorder is sm_89");
    for b in [&default, &w8a8] {
        let x8 = b
            .upload(&Tensor::matrix(3, 8, vec![0.5; 24]).unwrap())
            .unwrap();
        let x128 = b
            .upload(&Tensor::matrix(3, 128, vec![0.5; 384]).unwrap())
            .unwrap();
        b.linear(&x8, &w8).unwrap();
        b.linear(&x128, &w128).unwrap();
        let r = b.routing_to_device(&routing, 1).unwrap();
        b.grouped_mlp(&x8, &r, &experts).unwrap();
    }
    let names = |b: &GpuBackend<Recorder>| -> Vec<&'static str> {
        let launches = b.device().launches.lock().unwrap();
        for (l, kinds) in launches.iter() {
            assert_eq!(declared_params(l.kernel), *kinds, "kernel {}", l.kernel);
        }
        launches.iter().map(|(l, _)| l.kernel).collect()
    };
    let grouped = [
        "moe_sort",
        "moe_gather",
        "grouped_linear_fp8w",
        "grouped_linear_fp8w",
        "silu_mul_f32",
        "grouped_linear_fp8w",
    ];
    let mut want = vec!["linear_fp8w", "linear_fp8w"];
    want.extend(grouped);
    assert_eq!(names(&default), want);
    let mut want = vec!["linear_fp8w", "fp8_quant_act", "fp8_gemm_blockscaled"];
    want.extend(grouped);
    assert_eq!(names(&w8a8), want);
}
