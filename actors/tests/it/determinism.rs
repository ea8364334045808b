//! Bit-identity with the reference executor for every built-in schedule on the fixtures, plus a
//! seeded random search over placements × schedules × splits × batch mixes (SplitMix64) on the
//! tiny fixtures and on the `extra/*-odd` checkpoints (odd dims, MQA, sliding window shorter than
//! the prompt, tied embeddings, 3-4 expert groups). Generations are short to keep the suite fast.

use crate::common::*;
use troupe_actors::{ActorRuntime, RuntimeConfig, RuntimeOptions};
use troupe_engine::weights::random::SplitMix64;

fn opts(schedule: &str, stages: Option<usize>) -> RuntimeConfig {
    RuntimeOptions {
        schedule: Some(schedule.into()),
        stages,
        ..Default::default()
    }
    .into()
}

#[test]
fn every_schedule_matches_reference_on_every_fixture() {
    for case in [
        "deepseek-v3-tiny",
        "deepseek-v2-lite-tiny",
        "mixtral-tiny",
        "llama-tiny",
        "deepseek-v3-tiny-bf16",
        "extra/deepseek-v3-odd",
        "extra/deepseek-v2-odd",
        "extra/mixtral-odd",
        "extra/llama-odd",
    ] {
        let (g, model) = load(case);
        let ps = prompts(case);
        let reqs: Vec<_> = ps
            .iter()
            .enumerate()
            .map(|(i, p)| request(p.clone(), 4, (i % 2 == 1).then_some(i as u64)))
            .collect();
        let want = reference(&model, &reqs);
        for (schedule, stages) in [
            ("sequential", None),
            ("two-microbatch", None),
            ("pipeline", Some(2)),
        ] {
            let rt = ActorRuntime::start_with(
                model.clone(),
                g.placement.as_ref(),
                g.schedule.as_ref(),
                opts(schedule, stages),
            )
            .expect("start");
            let got = rt.generate(&reqs).expect("generate");
            assert_same(&got, &want, &format!("{case} {schedule}"));
            assert_logits_match_reference(&rt, &model, &ps[0], &format!("{case} {schedule}"));
            rt.shutdown().expect("shutdown");
        }
    }
}

fn pick<'a, T>(rng: &mut SplitMix64, v: &'a [T]) -> &'a T {
    &v[(rng.next_u64() % v.len() as u64) as usize]
}

/// A random valid `[placement]` for `model` plus a random `[schedule]`.
fn random_config(
    rng: &mut SplitMix64,
    model: &troupe_engine::model::Model,
) -> (toml::Table, toml::Table) {
    let n_layers = model.layers.len();
    let n_streams = 1 + (rng.next_u64() % 4) as usize;
    let mut p = toml::Table::new();
    p.insert("streams".into(), toml::Value::Integer(n_streams as i64));
    // Random contiguous partition of the layers into stages.
    let n_stages = 1 + (rng.next_u64() % n_layers as u64) as usize;
    let mut cuts: Vec<usize> = (1..n_layers).collect();
    while cuts.len() > n_stages - 1 {
        let i = (rng.next_u64() % cuts.len() as u64) as usize;
        cuts.remove(i);
    }
    let mut stages = Vec::new();
    let mut first = 0;
    for c in cuts.iter().copied().chain([n_layers]) {
        stages.push(toml::Value::Array(vec![
            toml::Value::Integer(first as i64),
            toml::Value::Integer(c as i64 - 1),
        ]));
        first = c;
    }
    p.insert("stages".into(), toml::Value::Array(stages));
    let names: Vec<toml::Value> = (0..n_stages)
        .map(|_| toml::Value::String(format!("cpu{}", rng.next_u64() % n_streams as u64)))
        .collect();
    p.insert("stage_streams".into(), toml::Value::Array(names));
    p.insert(
        "experts".into(),
        toml::Value::String(pick(rng, &["round-robin", "block"]).to_string()),
    );
    p.insert(
        "expert_group_size".into(),
        toml::Value::Integer(*pick(rng, &[1i64, 2, 3, 4, 16])),
    );
    p.insert(
        "channel_capacity".into(),
        toml::Value::Integer(1 + (rng.next_u64() % 4) as i64),
    );
    if rng.next_u64() % 2 == 0 {
        // Two nodes: stages and expert groups on random nodes (cross-node transfers use the link).
        let node = |rng: &mut SplitMix64| toml::Value::Integer((rng.next_u64() % 2) as i64);
        p.insert("nodes".into(), toml::Value::Integer(2));
        let sn: Vec<toml::Value> = (0..n_stages).map(|_| node(rng)).collect();
        p.insert("stage_nodes".into(), toml::Value::Array(sn));
        let en: Vec<toml::Value> = (0..1 + rng.next_u64() % 2).map(|_| node(rng)).collect();
        p.insert("expert_nodes".into(), toml::Value::Array(en));
    }
    if rng.next_u64() % 2 == 0 {
        let mut link = toml::Table::new();
        link.insert(
            "latency_us".into(),
            toml::Value::Integer((rng.next_u64() % 50) as i64),
        );
        link.insert(
            "gbps".into(),
            toml::Value::Float(1.0 + (rng.next_u64() % 100) as f64),
        );
        p.insert("link".into(), toml::Value::Table(link));
    }
    let mut s = toml::Table::new();
    let kind = *pick(rng, &["sequential", "two-microbatch", "pipeline"]);
    s.insert("kind".into(), toml::Value::String(kind.into()));
    if rng.next_u64() % 2 == 0 {
        s.insert(
            "split_at".into(),
            toml::Value::Integer(1 + (rng.next_u64() % 4) as i64),
        );
    }
    s.insert(
        "micro_batches".into(),
        toml::Value::Integer(1 + (rng.next_u64() % 4) as i64),
    );
    (p, s)
}

#[test]
fn random_placements_schedules_splits_and_batches_match_reference_bits() {
    let mut rng = SplitMix64::new(0x7e57_ac70);
    let cases = [
        "deepseek-v3-tiny",
        "deepseek-v2-lite-tiny",
        "mixtral-tiny",
        "extra/deepseek-v3-odd",
        "extra/deepseek-v2-odd",
        "extra/mixtral-odd",
        "extra/llama-odd",
    ];
    let loaded: Vec<_> = cases.iter().map(|c| (load(c), prompts(c))).collect();
    for iter in 0..28 {
        let ((g, model), ps) = &loaded[iter % cases.len()];
        let (placement, schedule) = random_config(&mut rng, model);
        // A random batch mix: some prompts (possibly repeated, possibly truncated), random lengths and sampling.
        let n = 1 + (rng.next_u64() % 5) as usize;
        let reqs: Vec<_> = (0..n)
            .map(|_| {
                let p = pick(&mut rng, ps);
                let len = 1 + (rng.next_u64() % p.len() as u64) as usize;
                let seed = (rng.next_u64() % 2 == 0).then(|| rng.next_u64());
                request(p[..len].to_vec(), 1 + (rng.next_u64() % 4) as usize, seed)
            })
            .collect();
        let want = reference(model, &reqs);
        let what = format!(
            "iteration {iter} ({}) placement {placement} schedule {schedule}",
            cases[iter % cases.len()]
        );
        let rt = ActorRuntime::start_with(
            model.clone(),
            Some(&placement),
            Some(&schedule),
            RuntimeConfig::default(),
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        let got = rt.generate(&reqs).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_same(&got, &want, &what);
        let _ = g;
        rt.shutdown().expect("shutdown");
    }
}

/// A pass mixing prompt and generated chunks, run as one pass per kind (what a path whose
/// kernels depend on the row kind does, `troupe_engine::kernels::row_kind`), gives the
/// reference executor's split pass bit for bit, under a schedule with micro-batches.
#[test]
fn a_pass_split_by_kind_matches_the_reference() {
    use troupe_actors::batch::SeqCaches;
    use troupe_actors::pass::SeqInput;
    use troupe_engine::backend::Backend;
    use troupe_engine::executor::{ReferenceExecutor, SeqChunk};
    use troupe_engine::kernels::CpuBackend;
    use troupe_engine::model::ChunkKind;

    let (g, model) = load("deepseek-v3-tiny");
    let (a_prompt, b_prompt, b_next) = (vec![3u32, 17, 9, 44, 2, 8], vec![5u32, 6, 7, 8], 11u32);
    let be = CpuBackend::new();
    let ex = ReferenceExecutor::new(&model, &be);
    let (mut a, mut b) = (ex.new_cache().unwrap(), ex.new_cache().unwrap());
    ex.forward(&mut [SeqChunk::prompt(b_prompt.clone(), &mut b)], None)
        .unwrap();
    let want = ex
        .forward_by_kind(
            &mut [
                SeqChunk::generated(b_next, &mut b),
                SeqChunk::prompt(a_prompt.clone(), &mut a),
            ],
            None,
        )
        .unwrap();
    let want = be.download(&want).unwrap();

    let rt = ActorRuntime::start_with(
        model.clone(),
        g.placement.as_ref(),
        g.schedule.as_ref(),
        opts("two-microbatch", None),
    )
    .expect("start");
    let core = rt.core();
    let (ca, cb) = (
        SeqCaches::new(&core.kv_pools),
        SeqCaches::new(&core.kv_pools),
    );
    let seq =
        |request, tokens: Vec<u32>, caches: &std::sync::Arc<SeqCaches>, start, kind| SeqInput {
            request,
            tokens,
            caches: caches.clone(),
            start,
            kind,
        };
    core.forward(vec![seq(1, b_prompt.clone(), &cb, 0, ChunkKind::Prompt)])
        .map_err(|f| f.error)
        .expect("B's prompt");
    let got = core
        .forward_by_kind(vec![
            seq(1, vec![b_next], &cb, b_prompt.len(), ChunkKind::Generated),
            seq(2, a_prompt, &ca, 0, ChunkKind::Prompt),
        ])
        .map_err(|f| f.error)
        .expect("the split pass");
    let got = got.on.download(&got.t).unwrap();
    let bits = |t: &troupe_engine::Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got), bits(&want));
    rt.shutdown().expect("shutdown");
}
