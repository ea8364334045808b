//! Choosing the next token from a row of logits: greedy (argmax, ties → lowest id), or
//! temperature / top-k / top-p sampling with a seeded generator (reproducible per seed).

use crate::weights::random::SplitMix64;

/// Sampling settings; `temperature: None` (or 0) means greedy.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SamplingParams {
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub seed: u64,
}

/// Index of the largest value; the lowest index wins ties; NaN never wins.
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] || row[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// A per-request sampler.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Sampler {
            params,
            rng: SplitMix64::new(params.seed),
        }
    }

    pub fn is_greedy(&self) -> bool {
        !matches!(self.params.temperature, Some(t) if t > 0.0)
    }

    /// Picks the next token.
    pub fn sample(&mut self, row: &[f32]) -> u32 {
        let t = match self.params.temperature {
            Some(t) if t > 0.0 => t,
            _ => return argmax(row),
        };
        let mut idx: Vec<usize> = (0..row.len()).filter(|&i| row[i].is_finite()).collect();
        if idx.is_empty() {
            return argmax(row);
        }
        idx.sort_by(|&a, &b| {
            row[b]
                .partial_cmp(&row[a])
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(&b))
        });
        if let Some(k) = self.params.top_k {
            idx.truncate(k.max(1));
        }
        let max = row[idx[0]] as f64;
        let mut probs: Vec<f64> = idx
            .iter()
            .map(|&i| ((row[i] as f64 - max) / t as f64).exp())
            .collect();
        let sum: f64 = probs.iter().sum();
        for p in &mut probs {
            *p /= sum;
        }
        if let Some(p) = self.params.top_p {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (j, q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p as f64 {
                    keep = j + 1;
                    break;
                }
            }
            probs.truncate(keep);
            idx.truncate(keep);
            let s: f64 = probs.iter().sum();
            for q in &mut probs {
                *q /= s;
            }
        }
        let u = self.rng.next_f64();
        let mut acc = 0.0;
        for (j, q) in probs.iter().enumerate() {
            acc += q;
            if u < acc {
                return idx[j] as u32;
            }
        }
        idx[idx.len() - 1] as u32
    }
}
