//! Per-sequence KV caches: `LatentKvCache` for MLA (only the normalised kv_lora latent and the
//! one shared rope key per position — what DeepSeek caches) and `KvCache` for GQA (keys and
//! values per kv head). Their storage is private to the engine: executors append through the
//! attention steps and roll back with [`LayerCache::truncate`].

use crate::tensor::Tensor;

/// MLA cache of one layer: `latent` rows of width `kv_lora`, `rope_key` rows of width `rope`.
#[derive(Clone, Debug, Default)]
pub struct LatentKvCache {
    pub(crate) kv_lora: usize,
    pub(crate) rope: usize,
    pub(crate) latent: Vec<f32>,
    pub(crate) rope_key: Vec<f32>,
}

/// GQA cache of one layer: keys `[len, kv_heads*head_dim]`, values likewise.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    pub(crate) k_width: usize,
    pub(crate) v_width: usize,
    pub(crate) k: Vec<f32>,
    pub(crate) v: Vec<f32>,
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
    /// Drops cached positions `len..` (no-op when `len` is not below the cached length): rolls a
    /// cache back to before a chunk, so a re-run of that chunk gives the same bits.
    pub fn truncate(&mut self, len: usize) {
        match self {
            LayerCache::Latent(c) => {
                c.latent.truncate(len.saturating_mul(c.kv_lora));
                c.rope_key.truncate(len.saturating_mul(c.rope));
            }
            LayerCache::Kv(c) => {
                c.k.truncate(len.saturating_mul(c.k_width));
                c.v.truncate(len.saturating_mul(c.v_width));
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_rolls_back_to_a_position_and_ignores_longer_lengths() {
        let mut latent = LayerCache::Latent(LatentKvCache {
            kv_lora: 2,
            rope: 1,
            ..Default::default()
        });
        let mut kv = LayerCache::Kv(KvCache {
            k_width: 3,
            v_width: 2,
            ..Default::default()
        });
        if let LayerCache::Latent(c) = &mut latent {
            c.append(
                &Tensor::from_flat(2, (0..6).map(|i| i as f32).collect()),
                &Tensor::from_flat(1, vec![7.0, 8.0, 9.0]),
            );
        }
        if let LayerCache::Kv(c) = &mut kv {
            c.append(
                &Tensor::from_flat(3, vec![1.0; 9]),
                &Tensor::from_flat(2, vec![2.0; 6]),
            );
        }
        for c in [&mut latent, &mut kv] {
            assert_eq!(c.len(), 3);
            c.truncate(usize::MAX);
            assert_eq!(c.len(), 3);
            c.truncate(1);
            assert_eq!(c.len(), 1);
        }
        assert_eq!(latent.bytes(), 4 * (2 + 1));
        assert_eq!(kv.bytes(), 4 * (3 + 2));
        if let LayerCache::Latent(c) = &latent {
            assert_eq!(
                (c.latent.as_slice(), c.rope_key.as_slice()),
                (&[0.0, 1.0][..], &[7.0][..])
            );
        }
    }
}
