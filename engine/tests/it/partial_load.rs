//! A rank's share of a model (`Model::load_where`): the tensors the predicate refuses are absent
//! (never materialised, reading one is an error naming it); the rest load as in a full load.

use troupe_engine::graph::LoadedGraph;
use troupe_engine::model::{Attention, Model};

use crate::fixtures::fixture;

#[test]
fn a_partial_load_leaves_out_what_it_is_not_asked_for() {
    let graph = LoadedGraph::open(&fixture("deepseek-v3-tiny")).unwrap();
    // Keep only layer 1's experts 0..4 (as a rank holding one expert group would, with no
    // attention), and the whole of layer 0's attention.
    let keep = |n: &str| {
        [
            "model.layers.1.mlp.experts.0.",
            "model.layers.1.mlp.experts.1.",
            "model.layers.1.mlp.experts.2.",
            "model.layers.1.mlp.experts.3.",
        ]
        .iter()
        .any(|p| n.starts_with(p))
            || n.starts_with("model.layers.0.self_attn.")
    };
    let part = Model::load_where(&graph, &keep, &mut |_, _| {}).unwrap();
    let full = Model::load(&graph, &mut |_, _| {}).unwrap();
    let moe = part.layers[1].moe().unwrap();
    let full_moe = full.layers[1].moe().unwrap();
    for (e, (mine, all)) in moe.experts.iter().zip(&full_moe.experts).enumerate() {
        assert_eq!(mine.gate.shape(), all.gate.shape());
        assert_eq!(mine.down.dtype(), all.down.dtype());
        match e < 4 {
            true => assert_eq!(mine.up.bytes(), all.up.bytes(), "expert {e}"),
            false => {
                assert!(
                    !mine.up.is_loaded() && mine.up.bytes().is_empty(),
                    "expert {e}"
                );
                let err = mine.up.as_f32().map(|_| ()).unwrap_err().to_string()
                    + &mine.up.as_u16().map(|_| ()).unwrap_err().to_string();
                assert!(
                    err.contains(mine.up.name()) && err.contains("not loaded"),
                    "{err}"
                );
            }
        }
    }
    assert!(!moe.router.gate.is_loaded() && !part.embed.is_loaded() && !part.lm_head.is_loaded());
    // MLA's absorbed matrices come from kv_b_proj: made where it is loaded, absent elsewhere.
    let absorbed = |m: &Model, l: usize| match &m.layers[l].attention {
        Attention::Mla(a) => (
            a.kv_b.is_loaded(),
            a.uk_t.iter().all(|w| w.is_loaded()),
            a.uv[0].bytes().to_vec(),
        ),
        Attention::Gqa(_) => panic!("deepseek-v3-tiny is MLA"),
    };
    assert_eq!(absorbed(&part, 0), absorbed(&full, 0));
    assert!(absorbed(&part, 0).1);
    let (kv_b, uk, uv) = absorbed(&part, 1);
    assert!(!kv_b && !uk && uv.is_empty());
}
