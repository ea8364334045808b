//! The device-resident ops of `GpuBackend` on the interpreter (race detector on) against
//! `CpuBackend`: the copies (`head_columns`, `slice_rows`, `concat_rows`, `gather_rows`: exact),
//! the residual `add` (exact), `per_head_linear` (one row and several), the grouped expert MLP
//! and `moe_combine` (one part and the same experts split in two parts: bit-identical), the
//! sticky non-finite flag reported by `argmax`/`download`/`routing_to_host`, typed
//! `WrongDevice` errors, the block-table cache (only appended entries cross) and the page store
//! growing on the device.

use crate::common::*;
use troupe_engine::backend::{Backend, ExpertWeights, HeadSlice, Routing};
use troupe_engine::device_tensor::{BlockTableRef, KvLayout};
use troupe_engine::dtype::DType;
use troupe_engine::error::PassSite;
use troupe_engine::kernels::CpuBackend;
use troupe_engine::weights::Weight;
use troupe_engine::{EngineError, Tensor};
use troupe_ptx::launch;

#[test]
fn copies_and_add_match_cpu_exactly() {
    let gpu = interp();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(201);
    let x = rng.matrix(5, 3 * 12, 1.0);
    let y = rng.matrix(5, 3 * 12, 1.0);
    let z = rng.matrix(2, 3 * 12, 1.0);
    let slice = HeadSlice {
        heads: 3,
        stride: 12,
        offset: 5,
        width: 7,
    };
    let both = |f: &dyn Fn(&dyn Backend) -> Tensor, what: &str| {
        assert_bits(what, f(&gpu).data(), f(&cpu).data());
    };
    both(
        &|b| {
            b.down(b.head_columns(&b.up(&x), slice))
                .expect("head_columns")
        },
        "head_columns",
    );
    both(
        &|b| b.down(b.slice_rows(&b.up(&x), 1, 4)).expect("slice"),
        "slice_rows",
    );
    both(
        &|b| {
            b.down(b.concat_rows(&[b.up(&x), b.up(&z), b.up(&y)]))
                .expect("concat")
        },
        "concat_rows",
    );
    both(
        &|b| {
            b.down(b.gather_rows(&b.up(&x), &[4, 0, 0, 2]))
                .expect("gather")
        },
        "gather_rows",
    );
    both(
        &|b| b.down(b.add(&b.up(&x), &b.up(&y))).expect("add"),
        "add",
    );
    let e = gpu
        .slice_rows(&gpu.up(&x), 3, 6)
        .expect_err("rows past the end");
    assert!(matches!(e, EngineError::Invalid(_)), "{e}");
}

#[test]
fn per_head_linear_matches_cpu() {
    let gpu = interp();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(202);
    let (heads, inw, outw) = (3usize, 20usize, 11usize);
    let ws: Vec<Weight> = (0..heads)
        .map(|h| {
            weight(
                &format!("uk{h}"),
                DType::F32,
                vec![outw, inw],
                &rng.vec(outw * inw, 0.5),
            )
        })
        .collect();
    for rows in [1usize, 4] {
        let x = rng.matrix(rows, heads * inw, 1.0);
        let got = gpu
            .down(gpu.per_head_linear(&gpu.up(&x), &ws))
            .expect("gpu");
        let want = cpu
            .down(cpu.per_head_linear(&cpu.up(&x), &ws))
            .expect("cpu");
        assert_eq!(got.shape(), want.shape());
        assert_close("per_head_linear", got.data(), want.data(), 1e-5, 1.0);
        // Batch invariance: the last row alone.
        let last = x.slice_rows(rows - 1, rows);
        let alone = gpu
            .down(gpu.per_head_linear(&gpu.up(&last), &ws))
            .expect("gpu");
        assert_bits("per_head_linear row", alone.data(), got.row(rows - 1));
    }
}

fn expert(rng: &mut Rng, dtype: DType, id: u32, hidden: usize, inter: usize) -> [Weight; 3] {
    let mk = |rng: &mut Rng, n: &str, r, c| {
        weight(
            &format!("e{id}.{n}"),
            dtype,
            vec![r, c],
            &rng.vec(r * c, 0.3),
        )
    };
    [
        mk(rng, "gate", inter, hidden),
        mk(rng, "up", inter, hidden),
        mk(rng, "down", hidden, inter),
    ]
}

#[test]
fn grouped_mlp_and_combine_match_cpu_and_split_parts_are_bit_identical() {
    grouped_mlp_case(DType::BF16, 203);
}

/// FP8 experts run `grouped_linear_fp8w` (address tables of 16 B per expert: bytes and scales).
#[test]
fn grouped_mlp_with_fp8_experts_matches_cpu() {
    grouped_mlp_case(DType::F8E4M3, 204);
}

fn grouped_mlp_case(dtype: DType, seed: u64) {
    let gpu = interp();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(seed);
    let (tokens, hidden, inter, n_experts, top_k) = (19usize, 24usize, 10usize, 6u32, 2usize);
    let ws: Vec<[Weight; 3]> = (0..n_experts)
        .map(|e| expert(&mut rng, dtype, e, hidden, inter))
        .collect();
    let ew = |ids: &[u32]| -> Vec<ExpertWeights<'_>> {
        ids.iter()
            .map(|&e| ExpertWeights {
                id: e,
                gate: &ws[e as usize][0],
                up: &ws[e as usize][1],
                down: &ws[e as usize][2],
            })
            .collect()
    };
    let mut routing = Routing {
        ids: Vec::new(),
        weights: Vec::new(),
    };
    for t in 0..tokens {
        let a = (t as u32 * 5) % n_experts;
        let b = (a + 1 + t as u32 % (n_experts - 1)) % n_experts;
        routing
            .ids
            .push(if a < b { vec![a, b] } else { vec![b, a] });
        routing.weights.push(rng.vec(top_k, 1.0));
    }
    let x = rng.matrix(tokens, hidden, 1.0);
    let res = rng.matrix(tokens, hidden, 1.0);
    let shared = rng.matrix(tokens, hidden, 1.0);
    let all: Vec<u32> = (0..n_experts).collect();
    let run = |b: &dyn Backend, parts: &[&[u32]]| -> Tensor {
        let r = b.routing_to_device(&routing, top_k).expect("routing");
        let xd = b.up(&x);
        let rows: Vec<_> = parts
            .iter()
            .map(|p| b.grouped_mlp(&xd, &r, &ew(p)).expect("grouped_mlp"))
            .collect();
        b.down(b.moe_combine(&b.up(&res), &r, &rows, Some(&b.up(&shared))))
            .expect("combine")
    };
    let before = gpu.counters();
    let got = run(&gpu, &[&all]);
    let kernel = launch::grouped_linear(dtype, 1, 1, 1)
        .expect("config")
        .kernel;
    assert_eq!(gpu.counters().since(&before).launches.get(kernel), Some(&3));
    let want = run(&cpu, &[&all]);
    assert_close("grouped MLP + combine", got.data(), want.data(), 1e-4, 1.0);
    let split = run(&gpu, &[&[1, 3, 5], &[0, 2, 4]]);
    assert_bits("combine of two parts", split.data(), got.data());
    // A new set of experts re-uploads no weight: only its three address tables (8 B per
    // expert, 16 B for FP8: bytes and scales) and its expert-id map (4 B per id up to the largest).
    let per_expert = if dtype == DType::F8E4M3 { 16 } else { 8 };
    let (xd, r) = (
        gpu.up(&x),
        gpu.routing_to_device(&routing, top_k).expect("routing"),
    );
    let before = gpu.counters();
    gpu.grouped_mlp(&xd, &r, &ew(&[0, 5])).expect("grouped_mlp");
    assert_eq!(
        gpu.counters().since(&before).h2d_bytes,
        3 * per_expert * 2 + 4 * 6
    );
}

#[test]
fn non_finite_flag_is_reported_by_the_next_transfer_only() {
    let gpu = interp();
    let mut x = Tensor::matrix(3, 5, vec![0.25; 15]).expect("x");
    let ok = gpu.up(&x);
    x.data_mut()[7] = f32::NAN;
    let bad = gpu.up(&x);
    // Happy path: the check and the argmax read 4 bytes per row, nothing else.
    gpu.check_finite(&ok, PassSite::Layer(0)).expect("check");
    let before = gpu.counters();
    assert_eq!(gpu.argmax(&ok).expect("argmax"), vec![0, 0, 0]);
    assert_eq!(gpu.counters().since(&before).d2h_bytes, 12);
    // A failing check is reported by the next transfer, with its site, row and value.
    gpu.check_finite(&bad, PassSite::Layer(3))
        .expect("deferred");
    gpu.check_finite(&bad, PassSite::Head).expect("deferred");
    match gpu.argmax(&ok) {
        Err(EngineError::NonFinite { layer, row, value }) => {
            assert_eq!((layer, row), (PassSite::Layer(3), 1));
            assert!(value.is_nan());
        }
        other => panic!("expected NonFinite, got {other:?}"),
    }
    // Reported once: the flag is clear again.
    assert!(gpu.argmax(&ok).is_ok());
    gpu.check_finite(&bad, PassSite::Embedding)
        .expect("deferred");
    assert!(matches!(
        gpu.download(&ok),
        Err(EngineError::NonFinite {
            layer: PassSite::Embedding,
            ..
        })
    ));
    assert_bits(
        "download after the report",
        gpu.download(&ok).expect("ok").data(),
        &[0.25; 15],
    );
    let r = gpu
        .routing_to_device(
            &Routing {
                ids: vec![vec![1], vec![0]],
                weights: vec![vec![1.0], vec![0.5]],
            },
            1,
        )
        .expect("routing");
    gpu.check_finite(&bad, PassSite::Head).expect("deferred");
    assert!(matches!(
        gpu.routing_to_host(&r),
        Err(EngineError::NonFinite {
            layer: PassSite::Head,
            ..
        })
    ));
    assert_eq!(
        gpu.routing_to_host(&r).expect("ok").ids,
        vec![vec![1], vec![0]]
    );
}

#[test]
fn foreign_handles_are_wrong_device_errors() {
    let gpu = interp();
    let other = interp();
    let cpu = CpuBackend::new();
    let t = Tensor::matrix(2, 4, vec![1.0; 8]).expect("t");
    let w = Weight::from_f32("w", vec![3, 4], &[0.5; 12]);
    for (x, from) in [(cpu.up(&t), "host"), (other.up(&t), "other device")] {
        match gpu.linear(&x, &w) {
            Err(EngineError::WrongDevice { op, backend, .. }) => {
                assert_eq!(
                    (op.as_str(), backend.as_str()),
                    ("linear", "ptx-interp"),
                    "{from}"
                )
            }
            r => panic!("{from}: expected WrongDevice, got {r:?}"),
        }
    }
    let layout = KvLayout {
        page_tokens: 4,
        key_width: 4,
        rope_width: 0,
        value_width: 4,
    };
    let store = other.kv_store(layout, 2).expect("store");
    let table = BlockTableRef {
        id: 1,
        generation: 0,
        pages: &[0],
    };
    let x = gpu.up(&t);
    assert!(matches!(
        gpu.kv_write(&store, table, 0, &x, None, Some(&x)),
        Err(EngineError::WrongDevice { .. })
    ));
}

/// A block table's device copy: a new page costs 4 bytes h2d, a known table nothing, a new
/// generation one full upload.
#[test]
fn block_tables_upload_only_appended_entries() {
    let gpu = interp();
    let layout = KvLayout {
        page_tokens: 2,
        key_width: 3,
        rope_width: 0,
        value_width: 3,
    };
    let store = gpu.kv_store(layout, 40).expect("store");
    let row = gpu.up(&Tensor::matrix(1, 3, vec![1.0, 2.0, 3.0]).expect("row"));
    let mut pages: Vec<u32> = Vec::new();
    let step = |pos: usize, pages: &[u32], generation: u64| -> u64 {
        let table = BlockTableRef {
            id: 77,
            generation,
            pages,
        };
        let before = gpu.counters();
        gpu.kv_write(&store, table, pos, &row, None, Some(&row))
            .expect("kv_write");
        gpu.counters().since(&before).h2d_bytes
    };
    for pos in 0..40 {
        if pos % 2 == 0 {
            pages.push(39 - pos as u32 / 2);
        }
        let h2d = step(pos, &pages, 0);
        let want = if pos % 2 == 0 { 4 } else { 0 };
        assert_eq!(h2d, want, "position {pos}");
    }
    // Truncation to 3 pages: a new generation, one upload of the whole table.
    pages.truncate(3);
    assert_eq!(step(5, &pages, 1), 12);
    let back = gpu
        .down(gpu.kv_read(
            &store,
            BlockTableRef {
                id: 77,
                generation: 1,
                pages: &pages,
            },
            6,
        ))
        .expect("kv_read");
    assert_bits("kv_read", back.row(5), &[1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
}

/// The page storage grows on the device as higher page ids come into use: pages written before
/// a growth keep their rows, and no byte crosses for it.
#[test]
fn page_store_grows_on_the_device_keeping_its_pages() {
    let gpu = interp();
    let layout = KvLayout {
        page_tokens: 2,
        key_width: 2,
        rope_width: 1,
        value_width: 0,
    };
    let store = gpu.kv_store(layout, 64).expect("store");
    let pages = [1u32, 3, 62];
    let table = |n| BlockTableRef {
        id: 5,
        generation: 0,
        pages: &pages[..n],
    };
    let key: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let rope: Vec<f32> = (0..6).map(|i| -(i as f32)).collect();
    let up = |v: &[f32], c| gpu.up(&Tensor::matrix(v.len() / c, c, v.to_vec()).expect("t"));
    let (k1, r1) = (up(&key[..8], 2), up(&rope[..4], 1));
    let (k2, r2) = (up(&key[8..], 2), up(&rope[4..], 1));
    gpu.kv_write(&store, table(2), 0, &k1, Some(&r1), None)
        .expect("pages 1 and 3");
    let before = gpu.counters();
    gpu.kv_write(&store, table(3), 4, &k2, Some(&r2), None)
        .expect("page 62: the store grows");
    assert_eq!(
        gpu.counters().since(&before).h2d_bytes,
        4,
        "the new table entry only"
    );
    let back = gpu.down(gpu.kv_read(&store, table(3), 6)).expect("kv_read");
    for j in 0..6 {
        assert_bits("row", back.row(j), &[key[2 * j], key[2 * j + 1], rope[j]]);
    }
}
