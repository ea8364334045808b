//! Per-sequence KV caches: `LatentKvCache` for MLA (only the normalised kv_lora latent and the
//! one shared rope key per position — what DeepSeek caches) and `KvCache` for GQA (keys and
//! values per kv head).

use crate::tensor::Tensor;

/// MLA cache of one layer: `latent` rows of width `kv_lora`, `rope_key` rows of width `rope`.
#[derive(Clone, Debug, Default)]
pub struct LatentKvCache {
    pub kv_lora: usize,
    pub rope: usize,
    pub latent: Vec<f32>,
    pub rope_key: Vec<f32>,
}

/// GQA cache of one layer: keys `[len, kv_heads*head_dim]`, values likewise.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    pub k_width: usize,
    pub v_width: usize,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

/// The cache of one layer.
#[derive(Clone, Debug)]
pub enum LayerCache {
    Latent(LatentKvCache),
    Kv(KvCache),
}

impl LayerCache {
    /// Cached positions.
    pub fn len(&self) -> usize {
        match self {
            LayerCache::Latent(c) => c.latent.len() / c.kv_lora.max(1),
            LayerCache::Kv(c) => c.k.len() / c.k_width.max(1),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes held (f32).
    pub fn bytes(&self) -> usize {
        4 * match self {
            LayerCache::Latent(c) => c.latent.len() + c.rope_key.len(),
            LayerCache::Kv(c) => c.k.len() + c.v.len(),
        }
    }
}

impl LatentKvCache {
    pub fn append(&mut self, latent: &Tensor, rope_key: &Tensor) {
        self.latent.extend_from_slice(latent.data());
        self.rope_key.extend_from_slice(rope_key.data());
    }
    pub fn len(&self) -> usize {
        self.latent.len() / self.kv_lora.max(1)
    }
    pub fn is_empty(&self) -> bool {
        self.latent.is_empty()
    }
    pub fn latent_tensor(&self) -> Tensor {
        Tensor::from_flat(self.kv_lora, self.latent.clone())
    }
    pub fn rope_key_tensor(&self) -> Tensor {
        Tensor::from_flat(self.rope, self.rope_key.clone())
    }
}

impl KvCache {
    pub fn append(&mut self, k: &Tensor, v: &Tensor) {
        self.k.extend_from_slice(k.data());
        self.v.extend_from_slice(v.data());
    }
    pub fn len(&self) -> usize {
        self.k.len() / self.k_width.max(1)
    }
    pub fn is_empty(&self) -> bool {
        self.k.is_empty()
    }
}

/// All layers' caches of one sequence.
#[derive(Clone, Debug)]
pub struct SequenceCache {
    pub layers: Vec<LayerCache>,
}

impl SequenceCache {
    /// Positions already cached (equal across layers between forward passes).
    pub fn len(&self) -> usize {
        self.layers.first().map(|l| l.len()).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.bytes()).sum()
    }
}
