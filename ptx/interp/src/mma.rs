//! Tensor-core emulation: `mma.sync.aligned.m16n8k{8,16,32}` with the exact PTX ISA
//! fragment layouts (groupID = lane>>2, threadID_in_group = lane%4) and
//! `ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.b16`. Accumulation is in f32, k
//! ascending, each product exact and each addition rounded to nearest (f16
//! accumulators are rounded once at the end); real hardware may differ in the last bits.

use super::ast::*;
use super::convert::{self, bf16_to_f32, f16_to_f32};
use super::error::PtxError;
use super::machine::{Machine, Track, Warp};

fn require_full_warp(m: &Machine, w: &Warp, pc: u32, exec: u32) -> Result<(), PtxError> {
    if exec != u32::MAX {
        return Err(m.divergence(
            w,
            pc,
            format!(
                ".aligned warp-collective needs all 32 lanes converged and active; executing lanes are {exec:#010x}"
            ),
        ));
    }
    Ok(())
}

fn elem(bits: u64, ty: Ty) -> f32 {
    match ty {
        Ty::BF16 => bf16_to_f32(bits as u16),
        Ty::F16 => f16_to_f32(bits as u16),
        Ty::E4m3 => convert::decode(bits & 0xFF, &convert::E4M3) as f32,
        Ty::E5m2 => convert::decode(bits & 0xFF, &convert::E5M2) as f32,
        Ty::TF32 => f32::from_bits(bits as u32 & 0xFFFF_E000),
        _ => f32::from_bits(bits as u32),
    }
}

pub fn exec_mma(
    m: &mut Machine,
    w: &mut Warp,
    pc: u32,
    exec: u32,
    op: &MmaOp,
) -> Result<(), PtxError> {
    require_full_warp(m, w, pc, exec)?;
    let (k, aty, bty) = match op.kind {
        MmaKind::F32Acc { k, a } => (k as usize, a, a),
        MmaKind::F16Acc { k } => (k as usize, Ty::F16, Ty::F16),
        MmaKind::Fp8 { a, b } => (32, a, b),
        MmaKind::Tf32 => (8, Ty::TF32, Ty::TF32),
    };
    let mut a = [[0f32; 32]; 16];
    let mut b = [[0f32; 8]; 32];
    let mut c = [[0f32; 8]; 16];
    let f16acc = matches!(op.kind, MmaKind::F16Acc { .. });
    for lane in 0..32usize {
        let g = lane >> 2;
        let t = lane & 3;
        for (i, s) in op.a.iter().enumerate() {
            let v = w.get(*s, lane);
            match op.kind {
                MmaKind::Fp8 { .. } => {
                    let (row, col) = (g + 8 * (i & 1), 4 * t + 16 * (i >> 1));
                    for j in 0..4 {
                        a[row][col + j] = elem(v >> (8 * j), aty);
                    }
                }
                MmaKind::Tf32 => a[g + 8 * (i & 1)][t + 4 * (i >> 1)] = elem(v, aty),
                _ => {
                    let (row, col) = if k == 16 {
                        (g + 8 * (i & 1), 2 * t + 8 * (i >> 1))
                    } else {
                        (g + 8 * i, 2 * t)
                    };
                    a[row][col] = elem(v & 0xFFFF, aty);
                    a[row][col + 1] = elem(v >> 16, aty);
                }
            }
        }
        for (i, s) in op.b.iter().enumerate() {
            let v = w.get(*s, lane);
            match op.kind {
                MmaKind::Fp8 { .. } => {
                    for j in 0..4 {
                        b[4 * t + 16 * i + j][g] = elem(v >> (8 * j), bty);
                    }
                }
                MmaKind::Tf32 => b[t + 4 * i][g] = elem(v, bty),
                _ => {
                    let kk = 2 * t + 8 * i;
                    b[kk][g] = elem(v & 0xFFFF, bty);
                    b[kk + 1][g] = elem(v >> 16, bty);
                }
            }
        }
        for (i, s) in op.c.iter().enumerate() {
            let v = w.get(*s, lane);
            if f16acc {
                c[g + 8 * i][2 * t] = f16_to_f32(v as u16);
                c[g + 8 * i][2 * t + 1] = f16_to_f32((v >> 16) as u16);
            } else {
                c[g + 8 * (i >> 1)][2 * t + (i & 1)] = f32::from_bits(v as u32);
            }
        }
    }
    let mut d = [[0f32; 8]; 16];
    for (r, drow) in d.iter_mut().enumerate() {
        for (col, dv) in drow.iter_mut().enumerate() {
            let mut acc = c[r][col];
            for kk in 0..k {
                acc += a[r][kk] * b[kk][col];
            }
            *dv = acc;
        }
    }
    for lane in 0..32usize {
        let g = lane >> 2;
        let t = lane & 3;
        for (i, &dr) in op.d.iter().enumerate() {
            let v = if f16acc {
                let lo = convert::f32_to_f16(d[g + 8 * i][2 * t], Rnd::Rn) as u64;
                let hi = convert::f32_to_f16(d[g + 8 * i][2 * t + 1], Rnd::Rn) as u64;
                lo | (hi << 16)
            } else {
                let x = d[g + 8 * (i >> 1)][2 * t + (i & 1)];
                convert::canon32(x) as u64
            };
            w.put(dr, lane, v, m.reg_mask(dr));
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn exec_ldmatrix(
    m: &mut Machine,
    w: &mut Warp,
    pc: u32,
    exec: u32,
    num: u32,
    trans: bool,
    ds: &[Reg],
    addr: &Addr,
    space: Space,
) -> Result<(), PtxError> {
    require_full_warp(m, w, pc, exec)?;
    let mut mat = [[[0u16; 8]; 8]; 4];
    for (j, matrix) in mat.iter_mut().enumerate().take(num as usize) {
        for (r, row) in matrix.iter_mut().enumerate() {
            let lane = j * 8 + r;
            let a = m.addr(w, addr, lane);
            if a % 16 != 0 {
                return Err(m.misaligned(w, lane, pc, space, a, 16));
            }
            let lo = m.load(w, lane, pc, space, a, 8, Track::Read)?;
            let hi = m.load(w, lane, pc, space, a + 8, 8, Track::Read)?;
            for cix in 0..4 {
                row[cix] = (lo >> (16 * cix)) as u16;
                row[cix + 4] = (hi >> (16 * cix)) as u16;
            }
        }
    }
    for lane in 0..32usize {
        let (row, col) = (lane / 4, 2 * (lane % 4));
        for (j, &d) in ds.iter().enumerate().take(num as usize) {
            let (lo, hi) = if trans {
                (mat[j][col][row], mat[j][col + 1][row])
            } else {
                (mat[j][row][col], mat[j][row][col + 1])
            };
            w.put(d, lane, lo as u64 | (hi as u64) << 16, m.reg_mask(d));
        }
    }
    Ok(())
}
