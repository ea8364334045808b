//! The prefix cache on the async `Engine`: requests whose prompts start with the full KV pages of
//! earlier prompts take those pages (the hit counters say how many tokens), and every request's
//! tokens and logits rows are bit-identical to the reference executor's cold run. The prompts
//! cover a 1-token uncached rest (which a rule choosing MLA's form by chunk length would break),
//! a prompt equal to an earlier one, a second turn that includes the first turn's output, and a
//! sampled request.

use futures_util::StreamExt;

use crate::common::*;
use troupe_actors::{Engine, EngineOptions, FaultPlan, RuntimeConfig, RuntimeOptions};
use troupe_engine::generate::{GenerateOutput, GenerateRequest};
use troupe_engine::model::KvConfig;

const PAGE: usize = 4;

async fn run(engine: &Engine, r: GenerateRequest) -> GenerateOutput {
    let mut s = engine.generate(r).await.expect("a valid request");
    let mut out = GenerateOutput::default();
    while let Some(t) = s.next().await {
        let t = t.expect("token");
        out.generated.push(t.token);
        out.step_logits.extend(t.logits);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_prefixes_give_the_cold_runs_bits() {
    let (g, model) = load("deepseek-v3-tiny");
    let ps = prompts("deepseek-v3-tiny");
    let base: Vec<u32> = ps[2][..18].to_vec(); // 4 full pages and 2 positions
    let mut one_more = base[..2 * PAGE].to_vec(); // 2 cached pages, 1 token to compute
    one_more.push(ps[1][3]);
    let mut diverging = base[..PAGE + 2].to_vec(); // 1 cached page, then other tokens
    diverging.extend_from_slice(&ps[1][..9]);
    let cfg = RuntimeConfig {
        options: RuntimeOptions {
            kv: Some(KvConfig {
                page_tokens: PAGE,
                capacity_pages: 256,
            }),
            prefix_cache: true,
            ..Default::default()
        },
        faults: Some(FaultPlan::default()),
        ..Default::default()
    };
    let engine = Engine::start(model.clone(), &g, EngineOptions::from(cfg))
        .await
        .expect("start");
    let first = request(base.clone(), 5, None);
    let first_out = run(&engine, first.clone()).await;
    let mut second_turn = base.clone();
    second_turn.extend(&first_out.generated);
    second_turn.extend_from_slice(&ps[0][..3]);
    // (request, tokens its prompt should find cached)
    let cases = [
        (first, 0),
        (request(one_more, 4, None), 2 * PAGE),
        (request(base.clone(), 4, None), 4 * PAGE),
        (request(diverging, 4, None), PAGE),
        (request(second_turn, 3, None), 4 * PAGE),
        (request(base[..17].to_vec(), 6, Some(7)), 4 * PAGE),
    ];
    let reqs: Vec<GenerateRequest> = cases.iter().map(|c| c.0.clone()).collect();
    let want = reference(&model, &reqs);
    let mut got = vec![first_out];
    let mut hits = 0;
    let mut prompt_tokens = 0;
    for (i, (r, cached)) in cases.iter().enumerate().skip(1) {
        got.push(run(&engine, r.clone()).await);
        hits += cached;
        prompt_tokens += r.prompt.len();
        let s = engine.prefix_cache_stats();
        assert_eq!(
            s.hit_tokens as usize, hits,
            "request {i}: cached tokens found"
        );
        assert_eq!(
            s.prompt_tokens as usize,
            prompt_tokens + cases[0].0.prompt.len(),
            "request {i}: prompt tokens looked up"
        );
    }
    assert_same(&got, &want, "with the prefix cache");
    assert!(engine.prefix_cache_stats().cached_pages >= 4);
    engine.shutdown().await.expect("shutdown");
}
