//! The prefix cache over HTTP: a request sharing full KV pages with an earlier prompt takes them
//! (the `troupe_prefix_cache_*` series count the tokens and the hit rate), and its tokens equal
//! those of a server started with `--no-prefix-cache`.

use super::client::post;
use super::{greedy, token_ids, Served};

const MODEL: &str = "fortune-tiny";
const PAGE: usize = 16;

fn ids(seed: u32, n: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|j| (seed * 97 + j * 31) % 4000 + 3)
        .collect()
}

#[test]
fn a_shared_prefix_is_served_from_the_cache_with_the_uncached_tokens() {
    let pages = ["--page-tokens", "16"];
    let cached = Served::start(MODEL, &pages);
    let uncached = Served::start(MODEL, &["--page-tokens", "16", "--no-prefix-cache"]);
    let prefix = ids(1, 3 * PAGE + 5);
    let with = |tail: u32| -> Vec<u32> { prefix.iter().copied().chain(ids(tail, 7)).collect() };
    let (first, second) = (with(2), with(3));
    let run = |s: &Served, p: &[u32]| {
        token_ids(&post(s.addr, "/v1/completions", &greedy(MODEL, p, 12)).json())
    };
    let first_out = run(&cached, &first);
    assert_eq!(first_out, run(&uncached, &first), "a cold request differs");
    assert_eq!(
        run(&cached, &second),
        run(&uncached, &second),
        "a warm request differs"
    );
    let looked_up = (first.len() + second.len()) as f64;
    let hits = (3 * PAGE) as f64; // the second prompt finds the first's 3 full prefix pages
    assert_eq!(
        cached.metric("troupe_prefix_cache_prompt_tokens_total"),
        Some(looked_up)
    );
    assert_eq!(
        cached.metric("troupe_prefix_cache_hit_tokens_total"),
        Some(hits)
    );
    assert_eq!(
        cached.metric("troupe_prefix_cache_hit_rate"),
        Some(hits / looked_up)
    );
    // Both prompts have the same 3 full pages (60 positions), all of the shared prefix.
    assert_eq!(cached.metric("troupe_prefix_cache_pages"), Some(3.0));
    assert_eq!(
        uncached.metric("troupe_prefix_cache_hit_tokens_total"),
        None
    );
}
