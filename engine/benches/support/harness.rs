//! What the timing harnesses share (included with `#[path]`): this process's CPU time, which a
//! harness compares with wall time to tell a run that shared the cores with other work, and
//! seeded noise for inputs.

/// CPU time of this process so far (ns, all threads; Linux's per-task schedstat), or `None`
/// where that is not readable.
pub fn process_cpu_ns() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// `n` values in [-0.5, 0.5) from `seed` (xorshift; the same values on every run).
pub fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}
