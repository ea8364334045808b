//! `ModelSpec::validate` and graph-file parsing: sizes bounded by what they imply (no overflow, no
//! unbounded plan), zeros that would break a kernel, non-finite floats, special token ids, and
//! errors that name the full field path.

use std::path::Path;

use troupe_engine::graph::ir::Plan;
use troupe_engine::graph::spec::{AttentionSpec, ModelSpec};
use troupe_engine::graph::validate::{MAX_PLAN_TENSORS, MAX_WIDTH};
use troupe_engine::graph::{GraphFile, LoadedGraph};
use troupe_engine::inspect::inspect;
use troupe_engine::EngineError;

use crate::fixtures::{case_spec, workspace_file};

/// The field an `InvalidSpec` error names (panics on any other outcome).
fn field_of(spec: &ModelSpec) -> String {
    match spec.validate() {
        Err(EngineError::InvalidSpec { field, .. }) => field,
        other => panic!("expected an InvalidSpec error, got {other:?}"),
    }
}

fn mla(
    spec: &mut ModelSpec,
) -> (
    &mut Option<usize>,
    &mut usize,
    &mut usize,
    &mut usize,
    &mut usize,
) {
    match &mut spec.attention {
        AttentionSpec::Mla {
            q_lora_rank,
            kv_lora_rank,
            qk_nope_head_dim,
            qk_rope_head_dim,
            v_head_dim,
        } => (
            q_lora_rank,
            kv_lora_rank,
            qk_nope_head_dim,
            qk_rope_head_dim,
            v_head_dim,
        ),
        AttentionSpec::Gqa { .. } => panic!("not an MLA spec"),
    }
}

type Edit = fn(&mut ModelSpec, usize);

/// Every size field of a DeepSeek-V3 spec, with the path its error must name.
fn size_fields() -> Vec<(&'static str, Edit)> {
    vec![
        ("model.vocab_size", |s, v| s.vocab_size = v),
        ("model.hidden_size", |s, v| s.hidden_size = v),
        ("model.num_attention_heads", |s, v| {
            s.num_attention_heads = v
        }),
        ("model.intermediate_size", |s, v| s.intermediate_size = v),
        ("model.num_hidden_layers", |s, v| s.num_hidden_layers = v),
        ("model.attention.q_lora_rank", |s, v| *mla(s).0 = Some(v)),
        ("model.attention.kv_lora_rank", |s, v| *mla(s).1 = v),
        ("model.attention.qk_nope_head_dim", |s, v| *mla(s).2 = v),
        ("model.attention.qk_rope_head_dim", |s, v| *mla(s).3 = v),
        ("model.attention.v_head_dim", |s, v| *mla(s).4 = v),
        ("model.moe.n_routed_experts", |s, v| {
            s.moe.as_mut().unwrap().n_routed_experts = v
        }),
        ("model.moe.moe_intermediate_size", |s, v| {
            s.moe.as_mut().unwrap().moe_intermediate_size = v
        }),
        ("model.moe.n_shared_experts", |s, v| {
            s.moe.as_mut().unwrap().n_shared_experts = v
        }),
    ]
}

#[test]
fn huge_sizes_are_refused_naming_the_field() {
    let base = case_spec("deepseek-v3-tiny");
    base.validate().unwrap();
    for (field, edit) in size_fields() {
        for v in [i64::MAX as usize, usize::MAX, 1_000_000_000, 99_999_992] {
            let mut s = base.clone();
            edit(&mut s, v);
            assert_eq!(field_of(&s), field, "{field} = {v}");
        }
    }
}

#[test]
fn shared_expert_width_is_bounded_as_a_product() {
    let mut s = case_spec("deepseek-v3-tiny");
    let m = s.moe.as_mut().unwrap();
    m.moe_intermediate_size = MAX_WIDTH / 2;
    m.n_shared_experts = 4;
    assert_eq!(field_of(&s), "model.moe.n_shared_experts");
}

#[test]
fn many_layers_times_many_experts_is_bounded_without_building_the_plan() {
    // 60 000 layers × 60 000 experts would be 10^10 tensors: refused by counting, at once.
    let mut s = case_spec("deepseek-v3-tiny");
    s.num_hidden_layers = 60_000;
    let m = s.moe.as_mut().unwrap();
    m.n_routed_experts = 60_000;
    m.n_group = 1;
    m.topk_group = 1;
    let started = std::time::Instant::now();
    assert_eq!(field_of(&s), "model.moe.n_routed_experts");
    assert!(started.elapsed().as_secs() < 2, "counting took too long");
    let t = Plan::totals(&s).unwrap();
    assert!(t.tensors > MAX_PLAN_TENSORS);
}

#[test]
fn plan_totals_match_the_compiled_plan() {
    for case in [
        "deepseek-v3-tiny",
        "deepseek-v2-lite-tiny",
        "mixtral-tiny",
        "extra/llama-odd",
    ] {
        let spec = case_spec(case);
        let plan = Plan::compile(&spec);
        let specs = plan.weight_specs();
        let params: u64 = specs
            .iter()
            .map(|w| w.shape.iter().product::<usize>() as u64)
            .sum();
        let t = Plan::totals(&spec).unwrap();
        assert_eq!(
            (t.tensors, t.params),
            (specs.len() as u64, params),
            "{case}"
        );
    }
}

#[test]
fn deepseek_v3_671b_still_inspects() {
    let g = LoadedGraph::open(&workspace_file("graphs/deepseek-v3-671b.toml")).unwrap();
    let plan = Plan::compile(&g.spec);
    let (rows, total) = inspect(&plan);
    assert_eq!(rows.len(), 61 + 3);
    // The main model is 671B parameters (the MTP module, never run, is not in the plan).
    assert!(
        (6.6e11..6.8e11).contains(&(total.params as f64)),
        "{}",
        total.params
    );
    assert_eq!(Plan::totals(&g.spec).unwrap().params, total.params);
}

#[test]
fn zero_head_dims_are_refused_naming_the_field() {
    for (field, edit) in [
        (
            "model.attention.qk_nope_head_dim",
            (|s, _| *mla(s).2 = 0) as Edit,
        ),
        ("model.attention.qk_rope_head_dim", |s, _| *mla(s).3 = 0),
        ("model.attention.v_head_dim", |s, _| *mla(s).4 = 0),
        ("model.attention.kv_lora_rank", |s, _| *mla(s).1 = 0),
        ("model.attention.q_lora_rank", |s, _| *mla(s).0 = Some(0)),
    ] {
        let mut s = case_spec("deepseek-v3-tiny");
        edit(&mut s, 0);
        assert_eq!(field_of(&s), field);
    }
    let mut s = case_spec("llama-tiny");
    if let AttentionSpec::Gqa { head_dim, .. } = &mut s.attention {
        *head_dim = 0;
    }
    assert_eq!(field_of(&s), "model.attention.head_dim");
}

#[test]
fn non_finite_floats_are_refused_naming_the_field() {
    type FloatEdit = fn(&mut ModelSpec, f64);
    let fields: Vec<(&str, FloatEdit)> = vec![
        ("model.rms_norm_eps", |s, v| s.rms_norm_eps = v),
        ("model.rope.theta", |s, v| s.rope.theta = v),
        ("model.rope.yarn.factor", |s, v| {
            s.rope.yarn.as_mut().unwrap().factor = v
        }),
        ("model.rope.yarn.beta_fast", |s, v| {
            s.rope.yarn.as_mut().unwrap().beta_fast = v
        }),
        ("model.rope.yarn.beta_slow", |s, v| {
            s.rope.yarn.as_mut().unwrap().beta_slow = v
        }),
        ("model.rope.yarn.mscale", |s, v| {
            s.rope.yarn.as_mut().unwrap().mscale = v
        }),
        ("model.rope.yarn.mscale_all_dim", |s, v| {
            s.rope.yarn.as_mut().unwrap().mscale_all_dim = v
        }),
        ("model.rope.yarn.attention_factor", |s, v| {
            s.rope.yarn.as_mut().unwrap().attention_factor = Some(v)
        }),
        ("model.moe.routed_scaling_factor", |s, v| {
            s.moe.as_mut().unwrap().routed_scaling_factor = v
        }),
    ];
    for (field, edit) in fields {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut s = case_spec("deepseek-v3-tiny");
            edit(&mut s, v);
            assert_eq!(field_of(&s), field, "{field} = {v}");
        }
    }
}

#[test]
fn special_token_ids_must_be_in_the_vocabulary() {
    let mut s = case_spec("deepseek-v3-tiny");
    s.bos_token_id = Some(5000);
    assert_eq!(field_of(&s), "model.bos_token_id");
    let mut s = case_spec("deepseek-v3-tiny");
    s.eos_token_id = Some(s.vocab_size as u32);
    assert_eq!(field_of(&s), "model.eos_token_id");
}

const MINI: &str = "graphs/ds-v3-mini.toml";

fn parse_edited(edit: impl Fn(String) -> String) -> String {
    let text = std::fs::read_to_string(workspace_file(MINI)).unwrap();
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit changed nothing");
    match GraphFile::parse(&edited, Path::new("g.toml")) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("edited graph parsed"),
    }
}

#[test]
fn graph_file_errors_name_the_full_field_path() {
    let e = parse_edited(|t| t.replace("kv_lora_rank = 256", "kv_lora_rank = -1"));
    assert!(e.contains("`model.attention.kv_lora_rank`"), "{e}");
    let e = parse_edited(|t| t.replace("kv_lora_rank = 256\n", ""));
    assert!(
        e.contains("`model.attention.kv_lora_rank` is required"),
        "{e}"
    );
    let e = parse_edited(|t| t.replace("v_head_dim = 64", "v_head_dim = \"x\""));
    assert!(e.contains("`model.attention.v_head_dim`"), "{e}");
    let e = parse_edited(|t| t.replace("n_group = 8", "n_group = 8.5"));
    assert!(e.contains("`model.moe.n_group`"), "{e}");
    let e = parse_edited(|t| t.replace("topk_group = 4", "topk_group = 4\nbogus = 1"));
    assert!(
        e.contains("unknown field `bogus`") && e.contains("model.moe"),
        "{e}"
    );
    assert!(!e.contains('\n'), "one line: {e}");
}

#[test]
fn graph_file_non_finite_floats_are_refused() {
    for (from, to, field) in [
        ("std = 0.02", "std = nan", "weights.random.std"),
        ("theta = 10000.0", "theta = inf", "model.rope.theta"),
        (
            "rms_norm_eps = 1e-6",
            "rms_norm_eps = inf",
            "model.rms_norm_eps",
        ),
        (
            "routed_scaling_factor = 2.5",
            "routed_scaling_factor = nan",
            "model.moe.routed_scaling_factor",
        ),
    ] {
        let e = parse_edited(|t| t.replace(from, to));
        assert!(e.contains(field), "{to}: {e}");
    }
}

#[test]
fn graph_files_round_trip_through_to_toml() {
    let g = LoadedGraph::open(&workspace_file(MINI)).unwrap();
    let text = g.to_graph_file().to_toml();
    let back = GraphFile::parse(&text, Path::new("round-trip.toml")).unwrap();
    assert_eq!(back.model, g.spec);
}
