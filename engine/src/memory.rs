//! The memory pre-check: how many bytes a run needs (weights, KV cache, a margin for activations)
//! against how many this machine can give (`MemAvailable`, lowered by a cgroup v2 `memory.max`
//! and by the process's address-space limit), so an oversized model fails at once with one clear
//! error instead of being killed after minutes of allocating.
//!
//! The weight count walks the compiled [`Plan`] as `troupe inspect` does, but on a reduced copy
//! of the spec (at most one dense and one MoE layer, one routed expert) scaled back up, so a spec
//! with 10⁹ layers or experts costs no memory to estimate. Every product is checked; a count
//! that does not fit in `u64` saturates (and then certainly fails the check).

use std::fmt;
use std::path::Path;

use crate::graph::ir::{NodeKind, Plan};
use crate::graph::spec::{AttentionSpec, ModelSpec};
use crate::model::KvConfig;

/// What a run will hold at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunShape {
    /// Sequences decoded together (each has its own KV cache).
    pub sequences: usize,
    /// Positions each sequence reaches (prompt + generated tokens).
    pub tokens_per_sequence: usize,
    /// Compute threads (random weights are generated this many tensors at a time).
    pub threads: usize,
}

/// Bytes a run needs, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryNeed {
    /// Every weight tensor (random weights are allocated; checkpoint tensors are mmap'd and read).
    pub weights: u64,
    /// The f32 KV cache pages all sequences hold at full length (latent + rope key for MLA;
    /// whole pages, at most the pool capacity).
    pub kv_cache: u64,
    /// Activations, logits, attention scores, random-weight generation buffers, runtime overhead.
    pub activations: u64,
}

/// Fixed allowance for the runtime itself (threads, tokio, allocator slack).
const RUNTIME_BYTES: u64 = 64 << 20;

impl MemoryNeed {
    /// The bytes `spec` needs for `shape` with the default KV pools; `random` when the weights
    /// are generated.
    pub fn of(spec: &ModelSpec, random: bool, shape: &RunShape) -> MemoryNeed {
        MemoryNeed::with_kv(spec, random, shape, &KvConfig::default_for(spec))
    }

    /// As [`MemoryNeed::of`] with the KV pools configured as `kv`: each sequence holds whole
    /// pages of `kv.page_tokens` positions, and a layer's pool never holds more than
    /// `kv.capacity_pages` pages.
    pub fn with_kv(spec: &ModelSpec, random: bool, shape: &RunShape, kv: &KvConfig) -> MemoryNeed {
        let weights = WeightCount::of(spec);
        let elem = spec.dtype.size() as u128;
        let layers = spec.num_hidden_layers as u128;
        let tokens = shape.tokens_per_sequence.max(1) as u128;
        let seqs = shape.sequences.max(1) as u128;
        let page = kv.page_tokens.max(1) as u128;
        let pages = mul(&[tokens.div_ceil(page), seqs]).min(kv.capacity_pages as u128);
        let kv_cache = mul(&[4, kv_values_per_token_layer(spec), layers, pages, page]);
        // Per token: the logits row, a few hidden-wide and FFN-wide buffers; per sequence one
        // score matrix of one head (T × T); generation: parallel f32 + 16-bit copies of the
        // largest tensor.
        let d = spec.attention_dims();
        let widest = [
            spec.hidden_size as u128,
            spec.intermediate_size as u128,
            mul(&[d.heads as u128, (d.qk_dim + d.v_dim) as u128]),
            spec.moe.as_ref().map_or(0, |m| {
                let shared = mul(&[m.n_shared_experts as u128, m.moe_intermediate_size as u128]);
                let routed = mul(&[
                    m.num_experts_per_tok as u128,
                    m.moe_intermediate_size as u128,
                ]);
                shared.max(routed)
            }),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        let per_token = spec.vocab_size as u128 + 8 * widest;
        let mut activations = mul(&[4, per_token, tokens, seqs]) + mul(&[4, tokens, tokens, seqs]);
        if random {
            let parallel = shape.threads.clamp(1, 64) as u128;
            activations += mul(&[4 + 2 * elem, weights.largest, parallel]);
        }
        MemoryNeed {
            weights: sat(weights.bytes),
            kv_cache: sat(kv_cache),
            activations: sat(activations + RUNTIME_BYTES as u128),
        }
    }

    /// The sum, saturating at `u64::MAX`.
    pub fn total(&self) -> u64 {
        self.weights
            .saturating_add(self.kv_cache)
            .saturating_add(self.activations)
    }
}

/// Elements and bytes of a model's weights, and its largest tensor.
struct WeightCount {
    bytes: u128,
    largest: u128,
}

impl WeightCount {
    fn of(spec: &ModelSpec) -> WeightCount {
        let (reduced, dense_layers, moe_layers, experts) = reduced_spec(spec);
        let plan = Plan::compile(&reduced);
        let elem = spec.dtype.size() as u128;
        // FP8 models: e4m3 linear weights (plus one f32 scale per 128×128 block), bf16 elsewhere.
        let fp8 = spec.dtype == crate::dtype::DType::F8E4M3;
        let fp8_names = crate::weights::fp8::fp8_weight_names(&plan);
        let mut count = WeightCount {
            bytes: 0,
            largest: 0,
        };
        let mut seen = std::collections::HashSet::new();
        for node in &plan.nodes {
            let copies = match node.layer {
                None => 1,
                Some(l) if reduced.is_moe_layer(l) => moe_layers,
                Some(_) => dense_layers,
            };
            for w in node.weights.iter().filter(|w| seen.insert(w.name.as_str())) {
                let numel = mul(&w.shape.iter().map(|&x| x as u128).collect::<Vec<_>>());
                // Routed experts and the router rows exist once per expert.
                let per_expert = matches!(node.kind, NodeKind::Moe { .. })
                    && (w.name.contains(".experts.") || w.name.contains(".gate."));
                let numel = if per_expert {
                    mul(&[numel, experts])
                } else {
                    numel
                };
                // The DeepSeek-V3 correction bias is always f32.
                let size = if w.shape.len() == 1 && w.name.ends_with("_bias") {
                    4
                } else if fp8 && !fp8_names.contains(&w.name) {
                    2
                } else {
                    elem
                };
                let scales = if fp8 && fp8_names.contains(&w.name) {
                    let blocks = w.shape.iter().map(|&d| d.div_ceil(128) as u128);
                    let per = mul(&[4, mul(&blocks.collect::<Vec<_>>())]);
                    if per_expert {
                        mul(&[per, experts])
                    } else {
                        per
                    }
                } else {
                    0
                };
                count.largest = count.largest.max(numel);
                count.bytes = count
                    .bytes
                    .saturating_add(mul(&[numel, size, copies]))
                    .saturating_add(mul(&[scales, copies]));
            }
        }
        count
    }
}

/// `spec` with at most one dense and one MoE layer and one routed expert, plus how many dense
/// layers, MoE layers and routed experts the real spec has.
fn reduced_spec(spec: &ModelSpec) -> (ModelSpec, u128, u128, u128) {
    let mut reduced = spec.clone();
    let layers = spec.num_hidden_layers;
    let (dense, experts) = match &spec.moe {
        Some(m) => (m.first_k_dense_replace.min(layers), m.n_routed_experts),
        None => (layers, 0),
    };
    let moe = layers - dense;
    reduced.num_hidden_layers = usize::from(dense > 0) + usize::from(moe > 0);
    if let Some(m) = &mut reduced.moe {
        m.first_k_dense_replace = usize::from(dense > 0);
        m.n_routed_experts = 1;
        m.num_experts_per_tok = 1;
        m.n_group = 1;
        m.topk_group = 1;
    }
    (reduced, dense as u128, moe as u128, experts as u128)
}

/// f32 values one layer caches per token (as `troupe inspect`'s "KV B/tok" counts them).
fn kv_values_per_token_layer(spec: &ModelSpec) -> u128 {
    let d = spec.attention_dims();
    match &spec.attention {
        AttentionSpec::Mla {
            kv_lora_rank,
            qk_rope_head_dim,
            ..
        } => *kv_lora_rank as u128 + *qk_rope_head_dim as u128,
        AttentionSpec::Gqa { .. } => mul(&[d.kv_heads as u128, d.qk_dim as u128 + d.v_dim as u128]),
    }
}

/// A saturating product (u128 cannot overflow for two usize factors, but chains can).
fn mul(factors: &[u128]) -> u128 {
    factors
        .iter()
        .try_fold(1u128, |acc, &f| acc.checked_mul(f))
        .unwrap_or(u128::MAX)
}

fn sat(x: u128) -> u64 {
    u64::try_from(x).unwrap_or(u64::MAX)
}

/// What bounds the memory this process can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryLimit {
    /// `MemAvailable` in /proc/meminfo.
    MemAvailable,
    /// A cgroup v2 `memory.max` (minus what the cgroup already uses).
    Cgroup,
    /// The process's address-space limit (`ulimit -v`), minus what it already maps.
    AddressSpace,
}

/// The bytes this process may still allocate, and what set that bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Available {
    pub bytes: u64,
    pub limit: MemoryLimit,
}

impl Available {
    /// Reads /proc (Linux); `None` when the machine does not say.
    pub fn of_this_process() -> Option<Available> {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let mut best = Available {
            bytes: parse_kib_field(&read("/proc/meminfo")?, "MemAvailable:")?,
            limit: MemoryLimit::MemAvailable,
        };
        let mut lower = |bytes: Option<u64>, limit| {
            if let Some(b) = bytes.filter(|&b| b < best.bytes) {
                best = Available { bytes: b, limit };
            }
        };
        if let Some(path) = read("/proc/self/cgroup")
            .as_deref()
            .and_then(cgroup_v2_path)
        {
            lower(
                cgroup_headroom(Path::new("/sys/fs/cgroup"), &path),
                MemoryLimit::Cgroup,
            );
        }
        if let (Some(limits), Some(status)) = (read("/proc/self/limits"), read("/proc/self/status"))
        {
            let mapped = parse_kib_field(&status, "VmSize:").unwrap_or(0);
            lower(
                address_space_limit(&limits).map(|l| l.saturating_sub(mapped)),
                MemoryLimit::AddressSpace,
            );
        }
        Some(best)
    }
}

/// A `Name:   123 kB` line of /proc/meminfo or /proc/self/status, in bytes.
fn parse_kib_field(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line[field.len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// The cgroup v2 path (`0::/a/b`) of /proc/self/cgroup.
fn cgroup_v2_path(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().trim_start_matches('/').to_string())
}

/// The smallest `memory.max − memory.current` of the cgroup at `path` and its ancestors.
fn cgroup_headroom(root: &Path, path: &str) -> Option<u64> {
    let mut dir = root.join(path);
    let mut best: Option<u64> = None;
    loop {
        let max = std::fs::read_to_string(dir.join("memory.max")).ok();
        if let Some(max) = max.and_then(|m| m.trim().parse::<u64>().ok()) {
            let used = std::fs::read_to_string(dir.join("memory.current"))
                .ok()
                .and_then(|c| c.trim().parse::<u64>().ok())
                .unwrap_or(0);
            let room = max.saturating_sub(used);
            best = Some(best.map_or(room, |b| b.min(room)));
        }
        if dir == root || !dir.pop() || !dir.starts_with(root) {
            return best;
        }
    }
}

/// The soft `Max address space` of /proc/self/limits, in bytes (None when unlimited).
fn address_space_limit(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    line["Max address space".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A run that does not fit.
#[derive(Debug, thiserror::Error)]
#[error("the model needs ~{} ({} weights, {} KV cache, {} activations) and this machine has {} available{}", Bytes(need.total()), Bytes(need.weights), Bytes(need.kv_cache), Bytes(need.activations), Bytes(available.bytes), limit_note(available.limit))]
pub struct MemoryError {
    pub need: MemoryNeed,
    pub available: Available,
}

fn limit_note(limit: MemoryLimit) -> &'static str {
    match limit {
        MemoryLimit::MemAvailable => "",
        MemoryLimit::Cgroup => " (cgroup memory.max)",
        MemoryLimit::AddressSpace => " (address-space limit, ulimit -v)",
    }
}

/// `Ok` when `need` fits in `available` (or the machine does not say how much it has).
pub fn check(need: MemoryNeed, available: Option<Available>) -> Result<(), MemoryError> {
    match available {
        Some(a) if need.total() > a.bytes => Err(MemoryError { need, available: a }),
        _ => Ok(()),
    }
}

/// Bytes in decimal units (`23 GB`, `1.3 TB`), as people read memory sizes.
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
        let mut v = self.0 as f64;
        let mut unit = 0;
        while v >= 1000.0 && unit + 1 < UNITS.len() {
            v /= 1000.0;
            unit += 1;
        }
        if unit == 0 || v >= 10.0 {
            write!(f, "{v:.0} {}", UNITS[unit])
        } else {
            write!(f, "{v:.1} {}", UNITS[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_text_parsing() {
        let meminfo = "MemTotal:       32000000 kB\nMemAvailable:   23000000 kB\n";
        assert_eq!(
            parse_kib_field(meminfo, "MemAvailable:"),
            Some(23_552_000_000)
        );
        assert_eq!(parse_kib_field(meminfo, "VmSize:"), None);
        assert_eq!(
            cgroup_v2_path("12:cpu:/x\n0::/user.slice/session-1.scope\n").as_deref(),
            Some("user.slice/session-1.scope")
        );
        assert_eq!(cgroup_v2_path("12:cpu:/x\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max address space         4294967296           unlimited            bytes\n";
        assert_eq!(address_space_limit(limits), Some(4294967296));
        assert_eq!(
            address_space_limit(&limits.replace("4294967296", "unlimited")),
            None
        );
    }

    #[test]
    fn cgroup_headroom_takes_the_tightest_ancestor() {
        let root = tempfile_dir();
        let leaf = root.join("a/b");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(root.join("a/memory.max"), "1000\n").unwrap();
        std::fs::write(root.join("a/memory.current"), "400\n").unwrap();
        std::fs::write(leaf.join("memory.max"), "max\n").unwrap();
        assert_eq!(cgroup_headroom(&root, "a/b"), Some(600));
        assert_eq!(cgroup_headroom(&root, "elsewhere"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("troupe-memory-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn bytes_print_in_decimal_units() {
        assert_eq!(Bytes(999).to_string(), "999 B");
        assert_eq!(Bytes(23_000_000_000).to_string(), "23 GB");
        assert_eq!(Bytes(1_340_000_000_000).to_string(), "1.3 TB");
        assert_eq!(Bytes(u64::MAX).to_string(), "18 EB");
    }

    #[test]
    fn kv_bytes_count_whole_pages_up_to_the_pool_capacity() {
        let spec = crate::graph::file::LoadedGraph::open(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../graphs/ds-v3-mini.toml"),
        )
        .unwrap()
        .spec;
        let shape = |sequences, tokens_per_sequence| RunShape {
            sequences,
            tokens_per_sequence,
            threads: 1,
        };
        let row = 4 * kv_values_per_token_layer(&spec) as u64 * spec.num_hidden_layers as u64;
        let kv = |pages, cap, s: &RunShape| {
            let config = KvConfig {
                page_tokens: pages,
                capacity_pages: cap,
            };
            MemoryNeed::with_kv(&spec, false, s, &config).kv_cache
        };
        assert_eq!(kv(64, 1000, &shape(3, 65)), 3 * 2 * 64 * row);
        assert_eq!(kv(1, 1000, &shape(3, 65)), 3 * 65 * row);
        assert_eq!(kv(64, 4, &shape(3, 65)), 4 * 64 * row);
        assert_eq!(
            MemoryNeed::of(&spec, false, &shape(2, 100)).kv_cache,
            2 * 128 * row
        );
    }

    #[test]
    fn check_compares_the_total() {
        let need = MemoryNeed {
            weights: 10,
            kv_cache: 5,
            activations: 5,
        };
        let avail = |bytes| {
            Some(Available {
                bytes,
                limit: MemoryLimit::MemAvailable,
            })
        };
        assert!(check(need, avail(20)).is_ok());
        assert!(check(need, None).is_ok());
        let e = check(need, avail(19)).unwrap_err().to_string();
        assert!(
            e.contains("needs ~20 B") && e.contains("19 B available"),
            "{e}"
        );
    }
}
