//! The paged KV cache against one page per sequence: prefills longer than a page, decode across
//! page boundaries, several sequences started, advanced in random subsets, rolled back and
//! dropped in random order (so pages are freed and reused out of order) give logits bit-identical
//! to each sequence run alone in a pool whose pages hold its whole length. And a pool that runs
//! out fails only the request that needed the page.

use std::sync::Arc;

use proptest::prelude::*;

use crate::fixtures::*;
use troupe_engine::error::EngineError;
use troupe_engine::executor::{ReferenceExecutor, SeqChunk};
use troupe_engine::generate::{generate, generate_each, GenerateRequest};
use troupe_engine::kernels::CpuBackend;
use troupe_engine::model::{ChunkKind, KvConfig, Model, SequenceCache};
use troupe_engine::sampling::SamplingParams;
use troupe_engine::Backend;

/// One sequence of the schedule: its chunks (the first is the prompt) and the turn it starts at.
#[derive(Clone, Debug)]
struct Seq {
    chunks: Vec<Vec<u32>>,
    start_turn: usize,
}

/// What one turn does to each started, unfinished sequence: advance it, skip it, or run its next
/// chunk, roll it back and run it again (supervision's retry).
#[derive(Clone, Copy, Debug)]
enum Move {
    Advance,
    Skip,
    Retry,
}

fn seqs(vocab: u32) -> impl Strategy<Value = Vec<Seq>> {
    let chunk = |max: usize| proptest::collection::vec(0..vocab, 1..=max);
    let seq = (
        chunk(40),
        proptest::collection::vec(chunk(3), 1..8),
        0usize..4,
    )
        .prop_map(|(prompt, rest, start_turn)| {
            let mut chunks = vec![prompt];
            chunks.extend(rest);
            Seq { chunks, start_turn }
        });
    proptest::collection::vec(seq, 1..5)
}

fn moves() -> impl Strategy<Value = Vec<Move>> {
    proptest::collection::vec(
        prop_oneof![6 => Just(Move::Advance), 2 => Just(Move::Skip), 1 => Just(Move::Retry)],
        64,
    )
}

/// Logits of every chunk of `s`, run alone in one page of `page_tokens`.
fn alone(model: &Model, be: &CpuBackend, s: &Seq, page_tokens: usize) -> Vec<Vec<u32>> {
    let config = KvConfig {
        page_tokens,
        capacity_pages: 1,
    };
    let exec = ReferenceExecutor::with_kv(model, be, Arc::new(model.kv_pools(be, config).unwrap()));
    let mut cache = exec.new_cache().unwrap();
    s.chunks
        .iter()
        .enumerate()
        .map(|(k, c)| run(&exec, be, &mut [(c.clone(), &mut cache, kind_of(k))]).remove(0))
        .collect()
}

/// A sequence's first chunk is its prompt; the later ones stand for generated tokens.
fn kind_of(chunk: usize) -> ChunkKind {
    match chunk {
        0 => ChunkKind::Prompt,
        _ => ChunkKind::Generated,
    }
}

/// One forward pass over `(tokens, cache)` pairs → each chunk's logits as bits.
fn run(
    exec: &ReferenceExecutor<'_>,
    be: &CpuBackend,
    parts: &mut [(Vec<u32>, &mut SequenceCache, ChunkKind)],
) -> Vec<Vec<u32>> {
    let lens: Vec<usize> = parts.iter().map(|p| p.0.len()).collect();
    let mut chunks: Vec<SeqChunk<'_>> = parts
        .iter_mut()
        .map(|(t, c, kind)| SeqChunk {
            tokens: t.clone(),
            cache: c,
            kind: *kind,
        })
        .collect();
    let logits = be
        .download(&exec.forward(&mut chunks, None).unwrap())
        .unwrap();
    let mut row = 0;
    lens.iter()
        .map(|&n| {
            let bits = logits.data()[row * logits.cols()..(row + n) * logits.cols()]
                .iter()
                .map(|v| v.to_bits())
                .collect();
            row += n;
            bits
        })
        .collect()
}

/// Runs the schedule with `page_tokens`-position pages; returns each sequence's chunk logits.
fn paged(
    model: &Model,
    be: &CpuBackend,
    seqs: &[Seq],
    moves: &[Move],
    page_tokens: usize,
) -> Vec<Vec<Vec<u32>>> {
    let config = KvConfig {
        page_tokens,
        capacity_pages: 4096,
    };
    let pools = Arc::new(model.kv_pools(be, config).unwrap());
    let exec = ReferenceExecutor::with_kv(model, be, pools.clone());
    let mut caches: Vec<Option<SequenceCache>> = seqs.iter().map(|_| None).collect();
    let mut done = vec![0usize; seqs.len()];
    let mut got: Vec<Vec<Vec<u32>>> = seqs.iter().map(|_| Vec::new()).collect();
    let mut next_move = moves.iter().cycle();
    let mut turn = 0;
    while done.iter().zip(seqs).any(|(&d, s)| d < s.chunks.len()) {
        let mut picked = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            if turn < s.start_turn || done[i] == s.chunks.len() {
                continue;
            }
            let m = *next_move.next().unwrap();
            if matches!(m, Move::Skip) && turn < 64 {
                continue;
            }
            if caches[i].is_none() {
                caches[i] = Some(pools.new_cache());
            }
            picked.push((i, m));
        }
        turn += 1;
        if picked.is_empty() {
            continue;
        }
        let before: Vec<usize> = picked
            .iter()
            .map(|&(i, _)| caches[i].as_ref().unwrap().len())
            .collect();
        let mut outs = run_picked(&exec, be, seqs, &done, &mut caches, &picked);
        // Retries: roll the sequence back to before its chunk and run it again alone; the rerun
        // must reproduce the batched result.
        for (k, &(i, m)) in picked.iter().enumerate() {
            if matches!(m, Move::Retry) {
                let cache = caches[i].as_mut().unwrap();
                cache.truncate(before[k]);
                let again = run_picked(&exec, be, seqs, &done, &mut caches, &[(i, m)]).remove(0);
                assert_eq!(
                    again, outs[k],
                    "sequence {i}: a re-run after truncate differs"
                );
            }
        }
        for (k, &(i, _)) in picked.iter().enumerate() {
            got[i].push(std::mem::take(&mut outs[k]));
            done[i] += 1;
            if done[i] == seqs[i].chunks.len() {
                caches[i] = None; // returns its pages
            }
        }
    }
    assert!(pools.layers.iter().all(|p| p.pages_in_use() == 0));
    got
}

fn run_picked(
    exec: &ReferenceExecutor<'_>,
    be: &CpuBackend,
    seqs: &[Seq],
    done: &[usize],
    caches: &mut [Option<SequenceCache>],
    picked: &[(usize, Move)],
) -> Vec<Vec<u32>> {
    let mut parts: Vec<(Vec<u32>, &mut SequenceCache, ChunkKind)> = Vec::new();
    for (i, c) in caches.iter_mut().enumerate() {
        if picked.iter().any(|&(j, _)| j == i) {
            parts.push((
                seqs[i].chunks[done[i]].clone(),
                c.as_mut().unwrap(),
                kind_of(done[i]),
            ));
        }
    }
    // `parts` is in sequence order, as `picked` is.
    run(exec, be, &mut parts)
}

fn check_case(case: &str, seqs: &[Seq], moves: &[Move], page_tokens: usize) {
    let model = load_model(&fixture(case));
    let be = CpuBackend::new();
    let longest: usize = seqs
        .iter()
        .map(|s| s.chunks.iter().map(|c| c.len()).sum::<usize>())
        .max()
        .unwrap_or(1);
    let whole = longest.next_power_of_two();
    let got = paged(&model, &be, seqs, moves, page_tokens);
    for (i, s) in seqs.iter().enumerate() {
        let want = alone(&model, &be, s, whole);
        assert!(
            got[i] == want,
            "{case}: sequence {i} with {page_tokens}-token pages differs from one page"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    #[test]
    fn paged_mla_logits_equal_one_page(s in seqs(1024), m in moves(), shift in 0usize..4) {
        check_case("deepseek-v3-tiny", &s, &m, 1 << shift);
    }

    #[test]
    fn paged_gqa_logits_equal_one_page(s in seqs(1024), m in moves(), shift in 0usize..4) {
        check_case("llama-tiny", &s, &m, 1 << shift);
    }

    #[test]
    fn paged_sliding_window_logits_equal_one_page(s in seqs(1024), m in moves(), shift in 2usize..5) {
        check_case("extra/mixtral-odd", &s, &m, 1 << shift);
    }
}

/// Three requests share a pool too small for all of them: the one that asks for a page when
/// none is left (request 0, in its 9th decode step) fails with `KvCacheFull`, the others finish
/// with the tokens they produce alone, and every page goes back to the pool.
#[test]
fn a_full_pool_fails_only_the_request_that_needed_a_page() {
    let model = load_model(&fixture("deepseek-v3-tiny"));
    let be = CpuBackend::new();
    let req = |len: usize, new: usize| GenerateRequest {
        prompt: (0..len as u32).map(|t| (t * 37 + 11) % 1024).collect(),
        max_new_tokens: new,
        sampling: SamplingParams::default(),
        stop_token: None,
        stop_at_eos: false,
        keep_logits: false,
    };
    // 8-token pages, 6 per layer. Request 1 is done after its prefill; requests 0 and 2 then
    // hold 2 + 4 pages until request 0 reaches position 16 and finds the pool empty; request 2
    // then grows to its 6 pages (44 positions) alone.
    let reqs = [req(8, 20), req(4, 1), req(24, 21)];
    let config = KvConfig {
        page_tokens: 8,
        capacity_pages: 6,
    };
    let pools = Arc::new(model.kv_pools(&be, config).unwrap());
    let exec = ReferenceExecutor::with_kv(&model, &be, pools.clone());
    let outs = generate_each(&exec, &reqs).unwrap();
    match &outs[0] {
        Err(EngineError::KvCacheFull {
            capacity_pages: 6,
            page_tokens: 8,
            ..
        }) => {}
        other => panic!("expected KvCacheFull for request 0, got {other:?}"),
    }
    assert!(pools.layers.iter().all(|p| p.pages_in_use() == 0));
    let roomy = ReferenceExecutor::new(&model, &be);
    for i in [1, 2] {
        let alone = generate(&roomy, &reqs[i..=i]).unwrap().remove(0);
        let got = outs[i].as_ref().expect("the short requests finish");
        assert_eq!(got.generated, alone.generated, "request {i}");
        assert_eq!(got.generated.len(), reqs[i].max_new_tokens);
    }
    assert!(matches!(
        generate(&exec, &reqs),
        Err(EngineError::KvCacheFull { .. })
    ));
}
