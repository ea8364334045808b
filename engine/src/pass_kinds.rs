//! A forward pass's chunks by kind (prompt rows or generated tokens): whether a pass is all
//! generated rows (its kernels' row kind, [`crate::kernels::row_kind`]), whether it mixes kinds,
//! which chunks each kind's pass takes when a path splits a mixed pass, and the split passes'
//! logits put back in batch order. The reference executor and the actor runtime both split
//! with these, so the two cut a pass the same way.

use crate::backend::Backend;
use crate::device_tensor::DeviceTensor;
use crate::error::{EngineError, Result};
use crate::model::ChunkKind;

/// The pass has at least one chunk and every chunk is a generated token's: its rows are
/// generated rows.
pub fn all_generated(kinds: impl IntoIterator<Item = ChunkKind>) -> bool {
    let mut any = false;
    for k in kinds {
        if k != ChunkKind::Generated {
            return false;
        }
        any = true;
    }
    any
}

/// The pass has chunks of both kinds.
pub fn mixed(kinds: impl IntoIterator<Item = ChunkKind>) -> bool {
    let (mut prompt, mut generated) = (false, false);
    for k in kinds {
        match k {
            ChunkKind::Prompt => prompt = true,
            ChunkKind::Generated => generated = true,
        }
    }
    prompt && generated
}

/// The passes a split runs, in order: the prompt chunks' pass, then the generated chunks',
/// each as its kind and its chunks' indices in batch order; a kind without chunks has no pass.
pub fn by_kind(kinds: &[ChunkKind]) -> Vec<(ChunkKind, Vec<usize>)> {
    [ChunkKind::Prompt, ChunkKind::Generated]
        .into_iter()
        .map(|kind| {
            let members = (0..kinds.len()).filter(|&i| kinds[i] == kind).collect();
            (kind, members)
        })
        .filter(|(_, members): &(_, Vec<usize>)| !members.is_empty())
        .collect()
}

/// One tensor in batch order from the split passes' outputs: `parts[k]` holds the rows of the
/// chunks `parts[k].0` (in that order), chunk `i` having `rows[i]` rows. Every chunk must
/// appear in exactly one part.
pub fn to_batch_order(
    be: &dyn Backend,
    rows: &[usize],
    parts: &[(Vec<usize>, DeviceTensor)],
) -> Result<DeviceTensor> {
    let mut by_chunk: Vec<Option<DeviceTensor>> = vec![None; rows.len()];
    for (members, out) in parts {
        let mut at = 0;
        for &i in members {
            let n = *rows
                .get(i)
                .ok_or_else(|| EngineError::internal("a split pass names a chunk it lacks"))?;
            if by_chunk[i].is_some() {
                return Err(EngineError::internal("a chunk ran in two split passes"));
            }
            by_chunk[i] = Some(be.slice_rows(out, at, at + n)?);
            at += n;
        }
    }
    let by_chunk = by_chunk
        .into_iter()
        .map(|t| t.ok_or_else(|| EngineError::internal("a chunk left out of its kind's pass")))
        .collect::<Result<Vec<_>>>()?;
    be.concat_rows(&by_chunk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::CpuBackend;
    use crate::tensor::Tensor;
    use ChunkKind::{Generated as G, Prompt as P};

    #[test]
    fn kinds_of_a_pass() {
        assert!(all_generated([G, G]));
        assert!(!all_generated([G, P]));
        assert!(!all_generated([]), "an empty pass has no generated rows");
        assert!(mixed([P, G, P]));
        assert!(!mixed([P, P]) && !mixed([G]) && !mixed([]));
        assert_eq!(
            by_kind(&[G, P, G, P]),
            vec![(P, vec![1, 3]), (G, vec![0, 2])]
        );
        assert_eq!(by_kind(&[G, G]), vec![(G, vec![0, 1])]);
        assert!(by_kind(&[]).is_empty());
    }

    #[test]
    fn split_outputs_go_back_to_batch_order() {
        let be = CpuBackend::default();
        let up = |rows: &[f32]| be.upload(&Tensor::matrix(rows.len(), 1, rows.to_vec()).unwrap());
        // Chunks 0 (2 rows) and 2 (1 row) ran in one pass, chunk 1 (3 rows) in the other.
        let rows = [2, 3, 1];
        let parts = vec![
            (vec![0, 2], up(&[0.0, 1.0, 5.0]).unwrap()),
            (vec![1], up(&[2.0, 3.0, 4.0]).unwrap()),
        ];
        let out = to_batch_order(&be, &rows, &parts).unwrap();
        let out = be.download(&out).unwrap();
        assert_eq!(out.data(), &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);

        let missing = vec![(vec![0, 2], up(&[0.0, 1.0, 5.0]).unwrap())];
        assert!(to_batch_order(&be, &rows, &missing).is_err());
        let twice = vec![parts[0].clone(), parts[0].clone(), parts[1].clone()];
        assert!(to_batch_order(&be, &rows, &twice).is_err());
    }
}
