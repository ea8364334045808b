//! Tests of the CPU attention kernels: the math against a plain f64 reference, paged against
//! contiguous (bit for bit, every page size, MLA and GQA layouts), AVX2 against portable, one
//! thread against two, one query row against many.

use crate::backend::AttentionParams;
use crate::device_tensor::KvLayout;
use crate::kernels::attention::{attention, TensorRows};
use crate::kernels::attention_core::attend;
use crate::kernels::attention_cost::attention_cost;
use crate::kernels::attention_simd::exp_scalar;
use crate::kernels::isa::{self, Isa};
use crate::kernels::paged_attention::{paged_attention, PageRows};
use crate::tensor::Tensor;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn tensor(&mut self, rows: usize, cols: usize, amp: f32) -> Tensor {
        let data = (0..rows * cols).map(|_| self.f32() * amp).collect();
        Tensor::matrix(rows, cols, data).unwrap()
    }
}

/// One random case: a cache of `len` rows in `layout` and queries at `q_start..`.
struct Case {
    p: AttentionParams,
    layout: KvLayout,
    len: usize,
    rows: Vec<f32>,
    q: Tensor,
    q_rope: Option<Tensor>,
}

impl Case {
    fn new(rng: &mut Rng, mla: bool, page_tokens: usize) -> Case {
        let len = 1 + rng.below(700);
        Case::with_len(rng, mla, page_tokens, len)
    }
    fn with_len(rng: &mut Rng, mla: bool, page_tokens: usize, len: usize) -> Case {
        let group = [1, 2, 3, 4, 5, 8, 16][rng.below(7)];
        Case::with_group(rng, mla, page_tokens, len, group)
    }
    fn with_group(rng: &mut Rng, mla: bool, page_tokens: usize, len: usize, group: usize) -> Case {
        let kv_heads = if mla { 1 } else { 1 + rng.below(3) };
        let d1 = [3, 8, 13, 16, 32, 40][rng.below(6)];
        let d2 = if mla { [4, 8, 11, 16][rng.below(4)] } else { 0 };
        let v_dim = if mla {
            d1
        } else {
            [5, 8, 16, 24, 33][rng.below(5)]
        };
        Case::shaped(rng, mla, page_tokens, len, [kv_heads, group, d1, d2, v_dim])
    }
    /// Query row `i` alone, with the keys it sees (positions up to its own).
    fn row_alone(&self, i: usize) -> Case {
        let len = self.p.q_start + i + 1;
        let mut one = Case {
            p: self.p,
            layout: self.layout,
            len,
            rows: self.rows[..len * self.layout.row_width()].to_vec(),
            q: self.q.slice_rows(i, i + 1),
            q_rope: self.q_rope.as_ref().map(|r| r.slice_rows(i, i + 1)),
        };
        one.p.q_start += i;
        one
    }
    /// A case of `kv_heads` kv heads of `group` query heads each, key parts `d1` and `d2`
    /// (MLA: `d2` is the shared rope key and the values are the `d1` key columns).
    fn shaped(rng: &mut Rng, mla: bool, page_tokens: usize, len: usize, dims: [usize; 5]) -> Case {
        let [kv_heads, group, d1, d2, v_dim] = dims;
        let heads = kv_heads * group;
        let tq = 1 + rng.below(len.min(9));
        let layout = KvLayout {
            page_tokens,
            key_width: kv_heads * d1,
            rope_width: d2,
            value_width: if mla { 0 } else { kv_heads * v_dim },
        };
        let p = AttentionParams {
            heads,
            kv_heads,
            d1,
            d2,
            v_dim,
            scale: 1.0 / ((d1 + d2) as f32).sqrt(),
            q_start: len - tq,
            sliding_window: if rng.below(3) == 0 {
                Some(1 + rng.below(200))
            } else {
                None
            },
        };
        let rows = (0..len * layout.row_width())
            .map(|_| rng.f32() * 2.0)
            .collect();
        let q = rng.tensor(tq, heads * d1, 2.0);
        let q_rope = (d2 > 0).then(|| rng.tensor(tq, heads * d2, 2.0));
        Case {
            p,
            layout,
            len,
            rows,
            q,
            q_rope,
        }
    }
    /// The cache as `k`, `k_rope`, `v` tensors.
    fn contiguous(&self) -> (Tensor, Option<Tensor>, Tensor) {
        let (w, kw, rw) = (
            self.layout.row_width(),
            self.layout.key_width,
            self.layout.rope_width,
        );
        let col = |from: usize, width: usize| {
            let data = self
                .rows
                .chunks(w)
                .flat_map(|r| r[from..from + width].to_vec())
                .collect();
            Tensor::matrix(self.len, width, data).unwrap()
        };
        let v = if self.layout.value_width == 0 {
            col(0, kw)
        } else {
            col(kw + rw, self.layout.value_width)
        };
        (col(0, kw), (rw > 0).then(|| col(kw, rw)), v)
    }
    /// The cache spread over pages (each padded with garbage past the last row).
    fn pages(&self) -> Vec<Vec<f32>> {
        let per = self.layout.page_tokens * self.layout.row_width();
        self.rows
            .chunks(per)
            .map(|c| {
                let mut page = c.to_vec();
                page.resize(per, f32::NAN);
                page
            })
            .collect()
    }
    /// `paged_attention` on `isa`.
    fn paged(&self, isa: Isa) -> Tensor {
        let pages = self.pages();
        let refs: Vec<&[f32]> = pages.iter().map(|p| &p[..]).collect();
        let rows = PageRows::checked(&refs, &self.layout, self.len, self.q.rows(), &self.p);
        let q_rope = self.q_rope.as_ref();
        attend(
            "paged_attention",
            &self.q,
            q_rope,
            &rows.unwrap(),
            &self.p,
            isa,
        )
        .unwrap()
    }
    /// `attention` on the same rows, on `isa`.
    fn dense(&self, isa: Isa) -> Tensor {
        let (k, kr, v) = self.contiguous();
        let rows = TensorRows::checked(&k, kr.as_ref(), &v, self.q.rows(), &self.p).unwrap();
        attend(
            "attention",
            &self.q,
            self.q_rope.as_ref(),
            &rows,
            &self.p,
            isa,
        )
        .unwrap()
    }
}

/// Softmax attention in f64, the textbook way.
fn reference(c: &Case) -> Vec<f64> {
    let (k, kr, v) = c.contiguous();
    let p = &c.p;
    let group = p.heads / p.kv_heads;
    let mut out = Vec::new();
    for i in 0..c.q.rows() {
        let pos = p.q_start + i;
        let first = p.sliding_window.map_or(0, |w| (pos + 1).saturating_sub(w));
        for h in 0..p.heads {
            let g = h / group;
            let s: Vec<f64> = (first..=pos)
                .map(|j| {
                    let mut d = 0.0f64;
                    for t in 0..p.d1 {
                        d += c.q.row(i)[h * p.d1 + t] as f64 * k.row(j)[g * p.d1 + t] as f64;
                    }
                    for t in 0..p.d2 {
                        let qr = c.q_rope.as_ref().unwrap().row(i)[h * p.d2 + t] as f64;
                        d += qr * kr.as_ref().unwrap().row(j)[t] as f64;
                    }
                    d * p.scale as f64
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            for col in 0..p.v_dim {
                let o: f64 = (first..=pos)
                    .zip(&e)
                    .map(|(j, w)| w * v.row(j)[g * p.v_dim + col] as f64)
                    .sum();
                out.push(o / sum);
            }
        }
    }
    out
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.data().iter().map(|x| x.to_bits()).collect()
}

#[test]
fn matches_the_f64_reference() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for n in 0..60 {
        let c = Case::new(&mut rng, n % 2 == 0, 64);
        let want = reference(&c);
        let got = c.dense(isa::active());
        for (g, w) in got.data().iter().zip(&want) {
            assert!(
                (*g as f64 - w).abs() <= 2e-5 * (1.0 + w.abs()),
                "case {n}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn paged_is_bit_identical_to_contiguous_for_every_page_size() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for n in 0..48 {
        let mla = n % 2 == 0;
        for shift in 0..=7 {
            let c = Case::new(&mut rng, mla, 1 << shift);
            let dense = c.dense(isa::active());
            assert_eq!(
                bits(&c.paged(isa::active())),
                bits(&dense),
                "case {n}, page {}",
                1 << shift
            );
        }
    }
}

#[test]
fn every_path_the_processor_has_gives_the_portable_bits() {
    let mut rng = Rng(0x0bad_cafe_f00d_d00d);
    for n in 0..40 {
        let c = Case::new(&mut rng, n % 2 == 1, 16);
        let (dense, paged) = (bits(&c.dense(Isa::Portable)), bits(&c.paged(Isa::Portable)));
        for isa in Isa::available() {
            assert_eq!(bits(&c.dense(isa)), dense, "case {n} dense on {isa:?}");
            assert_eq!(bits(&c.paged(isa)), paged, "case {n} paged on {isa:?}");
        }
    }
}

/// One query head per kv head (GQA without grouping, MLA's naive prefill with its shared rope
/// key) with values 64 or more wide: the AVX2 form's one-head key tiles of 8, 4 and 2 and its
/// value strips of 8 vectors must give the portable bits, for chunks ending anywhere.
#[test]
fn one_head_tiles_give_the_portable_bits() {
    let mut rng = Rng(0x51de_0f0e_1ead);
    // [kv_heads, group, d1, d2, v_dim]
    let shapes = [[3, 1, 64, 32, 64], [1, 1, 96, 0, 128], [2, 1, 16, 8, 72]];
    for (s, dims) in shapes.into_iter().enumerate() {
        for n in 0..6 {
            let len = 1 + rng.below(700);
            let c = Case::shaped(&mut rng, false, 16, len, dims);
            let (dense, paged) = (bits(&c.dense(Isa::Portable)), bits(&c.paged(Isa::Portable)));
            for isa in Isa::available() {
                assert_eq!(
                    bits(&c.dense(isa)),
                    dense,
                    "shape {s} case {n} dense on {isa:?}"
                );
                assert_eq!(
                    bits(&c.paged(isa)),
                    paged,
                    "shape {s} case {n} paged on {isa:?}"
                );
            }
        }
    }
}

/// Kv heads of 16 and 32 query heads with values a multiple of 16 wide take the
/// heads-in-lanes form on AVX-512 (`attention_lanes512`); it must give the portable bits too,
/// for every key width (ragged lane tails included), rope width, window and query count.
#[test]
fn the_heads_in_lanes_form_gives_the_portable_bits() {
    let mut rng = Rng(0x1a2e_5f00_d00d_0016);
    for n in 0..24 {
        let mla = n % 2 == 0;
        let len = 1 + rng.below(400);
        let mut c = Case::with_group(&mut rng, mla, 16, len, [16, 32][n % 4 / 2]);
        if !c.p.v_dim.is_multiple_of(16) {
            // Widen the values to a multiple of 16 (MLA's values are its key columns).
            c = loop {
                let next = Case::with_group(&mut rng, mla, 16, len, c.p.heads / c.p.kv_heads);
                if next.p.v_dim.is_multiple_of(16) {
                    break next;
                }
            };
        }
        let (dense, paged) = (bits(&c.dense(Isa::Portable)), bits(&c.paged(Isa::Portable)));
        for isa in Isa::available() {
            assert_eq!(bits(&c.dense(isa)), dense, "case {n} dense on {isa:?}");
            assert_eq!(bits(&c.paged(isa)), paged, "case {n} paged on {isa:?}");
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let mut rng = Rng(0x5151_2020_7777_0101);
    let pool = |n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    };
    let (one, two) = (pool(1), pool(2));
    for n in 0..12 {
        // several chunks, enough work to go parallel
        let len = 520 + rng.below(300);
        let c = Case::with_len(&mut rng, n % 2 == 0, 32, len);
        assert_eq!(
            bits(&one.install(|| c.paged(isa::active()))),
            bits(&two.install(|| c.paged(isa::active())))
        );
        assert_eq!(
            bits(&one.install(|| c.dense(isa::active()))),
            bits(&two.install(|| c.dense(isa::active())))
        );
    }
}

#[test]
fn each_query_row_is_the_same_alone_or_in_a_batch() {
    let mut rng = Rng(0x7a7a_0000_1111_2222);
    for n in 0..16 {
        let c = Case::new(&mut rng, n % 2 == 0, 8);
        let all = c.paged(isa::active());
        for i in 0..c.q.rows() {
            let mut one = Case {
                p: c.p,
                layout: c.layout,
                len: c.len,
                rows: c.rows.clone(),
                q: c.q.slice_rows(i, i + 1),
                q_rope: c.q_rope.as_ref().map(|r| r.slice_rows(i, i + 1)),
            };
            one.p.q_start = c.p.q_start + i;
            one.len = c.p.q_start + i + 1; // a decode step sees only the rows cached so far
            assert_eq!(
                bits(&one.paged(isa::active())),
                bits(&all.slice_rows(i, i + 1)),
                "case {n} row {i}"
            );
        }
    }
}

/// Calls of more than four query rows fold each row's chunks as they are computed (on AVX-512
/// without a window: sixteen (row, head) query vectors in lanes, rows of one block ending in
/// different chunks); calls of fewer compute every chunk first and combine after. Every form
/// must give each row the bits of the row alone, on the portable path and on the machine's.
#[test]
fn folding_chunks_per_row_gives_the_bits_of_combining_them_after() {
    let mut rng = Rng(0x5eed_f01d_0000_0009);
    // [kv_heads, group, d1, d2, v_dim] over 37 query rows: row lanes (no window, values a
    // multiple of 16 wide) with blocks of one row's 16 heads, of 4 rows × 4 heads, of 8 rows ×
    // 2 heads for each of 3 kv heads, and of 16 rows × 1 head (the last of 5 rows); then blocks
    // of 16 rows, one kv head after another (a window, or values 24 wide; the last block of 5).
    for (n, (mla, dims, window)) in [
        (true, [1, 16, 32, 16, 32], None),
        (true, [1, 4, 16, 8, 16], None),
        (false, [3, 2, 13, 0, 16], None),
        (false, [2, 1, 16, 0, 32], None),
        (true, [1, 4, 32, 11, 32], Some(300)),
        (false, [1, 3, 8, 0, 24], None),
        (false, [2, 3, 16, 0, 16], Some(129)),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = Case::shaped(&mut rng, mla, 16, 520, dims);
        let tq = 37;
        c.p.sliding_window = window;
        c.p.q_start = c.len - tq;
        c.q = rng.tensor(tq, c.p.heads * c.p.d1, 2.0);
        c.q_rope = (c.p.d2 > 0).then(|| rng.tensor(tq, c.p.heads * c.p.d2, 2.0));
        for path in [Isa::Portable, isa::active()] {
            let all = c.paged(path);
            for i in 0..tq {
                let one = c.row_alone(i);
                assert_eq!(
                    bits(&one.paged(path)),
                    bits(&all.slice_rows(i, i + 1)),
                    "case {n} row {i} on {path:?}"
                );
            }
        }
    }
}

#[test]
fn exp_is_accurate_over_the_softmax_range() {
    let mut x = -87.0f32;
    while x <= 0.0 {
        let (got, want) = (exp_scalar(x) as f64, (x as f64).exp());
        assert!(
            (got - want).abs() <= 3e-7 * want,
            "exp({x}) = {got}, want {want}"
        );
        x += 0.013;
    }
    assert_eq!(exp_scalar(0.0), 1.0);
    assert_eq!(exp_scalar(-100.0), 0.0);
    assert_eq!(exp_scalar(f32::NEG_INFINITY), 0.0);
    assert!(exp_scalar(f32::NAN).is_nan());
}

#[test]
fn shape_errors_are_errors() {
    let mut rng = Rng(42);
    let c = Case::new(&mut rng, true, 4);
    let pages = c.pages();
    let refs: Vec<&[f32]> = pages.iter().map(|p| &p[..]).collect();
    let (q, qr, l) = (&c.q, c.q_rope.as_ref(), &c.layout);
    assert!(paged_attention(q, qr, &refs[..refs.len() - 1], l, c.len, &c.p).is_err());
    assert!(paged_attention(q, qr, &refs, l, c.p.q_start + q.rows() - 1, &c.p).is_err());
    assert!(paged_attention(q, None, &refs, l, c.len, &c.p).is_err());
    let odd = KvLayout {
        page_tokens: 3,
        ..*l
    };
    assert!(paged_attention(q, qr, &refs, &odd, c.len, &c.p).is_err());
    let wide = KvLayout {
        rope_width: l.rope_width + 1,
        ..*l
    };
    assert!(paged_attention(q, qr, &refs, &wide, c.len, &c.p).is_err());
    let (k, kr, v) = c.contiguous();
    assert!(attention(q, qr, &k, None, &v, &c.p).is_err());
    assert!(attention(q, qr, &k.slice_rows(0, c.p.q_start), kr.as_ref(), &v, &c.p).is_err());
    let bad = AttentionParams {
        kv_heads: c.p.heads + 1,
        ..c.p
    };
    assert!(attention(q, qr, &k, kr.as_ref(), &v, &bad).is_err());
}

#[test]
fn cost_counts_each_visible_row_once() {
    let layout = KvLayout {
        page_tokens: 64,
        key_width: 256,
        rope_width: 32,
        value_width: 0,
    };
    let p = AttentionParams {
        heads: 16,
        kv_heads: 1,
        d1: 256,
        d2: 32,
        v_dim: 256,
        scale: 1.0,
        q_start: 4095,
        sliding_window: None,
    };
    assert_eq!(
        attention_cost(&layout, 4096, &p),
        (4096 * 288 * 4, 2 * 16 * 4096 * (288 + 256))
    );
    let windowed = AttentionParams {
        sliding_window: Some(100),
        ..p
    };
    assert_eq!(attention_cost(&layout, 4096, &windowed).0, 100 * 288 * 4);
}

/// Many query rows on AVX2 without a window take `attention_rows` (blocks of 24 rows in
/// register tiles): every row must get the portable bits and the bits of the row alone, for
/// blocks that start mid-chunk, rows of one block that end in different chunks, ragged key
/// parts, several query heads per kv head and values 8 to 64 wide.
#[test]
fn query_row_tiles_give_the_bits_of_each_row_alone() {
    let mut rng = Rng(0x0077_1e5a_0000_0024);
    // (MLA, [kv_heads, group, d1, d2, v_dim], query rows)
    for (n, (mla, dims, tq)) in [
        (false, [3, 1, 64, 32, 64], 53),
        (false, [2, 3, 13, 11, 24], 30),
        (false, [1, 4, 16, 0, 8], 29),
        (true, [1, 4, 32, 16, 32], 41),
    ]
    .into_iter()
    .enumerate()
    {
        let len = 300 + rng.below(300);
        let mut c = Case::shaped(&mut rng, mla, 16, len, dims);
        c.p.sliding_window = None;
        c.p.q_start = c.len - tq;
        c.q = rng.tensor(tq, c.p.heads * c.p.d1, 2.0);
        c.q_rope = (c.p.d2 > 0).then(|| rng.tensor(tq, c.p.heads * c.p.d2, 2.0));
        let all = c.paged(isa::active());
        assert_eq!(bits(&all), bits(&c.paged(Isa::Portable)), "case {n} paged");
        assert_eq!(
            bits(&c.dense(isa::active())),
            bits(&c.dense(Isa::Portable)),
            "case {n} dense"
        );
        for i in 0..tq {
            let one = c.row_alone(i);
            assert_eq!(
                bits(&one.paged(isa::active())),
                bits(&all.slice_rows(i, i + 1)),
                "case {n} row {i}"
            );
        }
    }
}
