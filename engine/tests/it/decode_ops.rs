//! What one batched decode step asks of the backend (CPU op counts): per layer and sequence one
//! `kv_write` and one in-place `paged_attention` (no `kv_read`, no cache copy); per MoE layer one
//! `route`, one `grouped_mlp` for all experts and one `moe_combine`; greedy sampling through one
//! `argmax` and no `download` of the logits.

use crate::fixtures::*;
use troupe_engine::executor::{ReferenceExecutor, SeqChunk};
use troupe_engine::kernels::CpuBackend;
use troupe_engine::Backend;

#[test]
fn a_decode_step_attends_in_place_and_runs_each_moe_layer_as_three_ops() {
    for case in ["deepseek-v3-tiny", "mixtral-tiny"] {
        let model = load_model(&fixture(case));
        let be = CpuBackend::new();
        let exec = ReferenceExecutor::new(&model, &be);
        let mut caches = [exec.new_cache().unwrap(), exec.new_cache().unwrap()];
        let prompts = [vec![5u32, 9, 77, 3, 12], vec![100u32, 2, 8]];
        for (c, p) in caches.iter_mut().zip(&prompts) {
            let mut chunk = [SeqChunk::prompt(p.clone(), c)];
            exec.forward(&mut chunk, None).unwrap();
        }
        let before = be.counters();
        let [c0, c1] = &mut caches;
        let mut step = [SeqChunk::generated(41, c0), SeqChunk::generated(42, c1)];
        let logits = exec.forward(&mut step, None).unwrap();
        let ids = be.argmax(&logits).unwrap();
        assert_eq!(ids.len(), 2);
        let d = be.counters().since(&before);
        eprintln!(
            "{case}: ops of one decode step of 2 sequences: {:?}",
            d.launches
        );
        let n = |op: &str| d.launches.get(op).copied().unwrap_or(0) as usize;
        let layers = model.layers.len();
        let moe = (0..layers).filter(|&l| model.spec.is_moe_layer(l)).count();
        assert!(moe > 0, "{case} has MoE layers");
        assert_eq!((d.h2d_bytes, d.d2h_bytes), (0, 0), "{case}");
        assert_eq!(n("kv_write"), 2 * layers, "{case}: {d:?}");
        assert_eq!(n("paged_attention"), 2 * layers, "{case}: {d:?}");
        assert_eq!((n("kv_read"), n("attention")), (0, 0), "{case}: {d:?}");
        assert_eq!(n("route"), moe, "{case}: {d:?}");
        assert_eq!(n("grouped_mlp"), moe, "{case}: {d:?}");
        assert_eq!(n("moe_combine"), moe, "{case}: {d:?}");
        assert_eq!((n("argmax"), n("download")), (1, 0), "{case}: {d:?}");
        assert_eq!(n("embedding"), 1, "{case}: {d:?}");
    }
}
