//! AMX tiles for bf16 × bf16 linears: what the [`super::isa::Isa::Amx`] path runs under
//! `--compute bf16` when a weight is bf16 and its rows are a multiple of [`TILE_K`] long.
//!
//! A tile register holds up to 16 rows of 64 bytes. `tdpbf16ps C, A, B` adds to each f32 element
//! `C[i][j]` the 32 products of row `i` of `A` (32 bf16 values) and column `j` of `B` (stored as
//! 16 rows of bf16 pairs, the "VNNI" layout). Here `A` is 16 weight rows read in place (a weight
//! row is an output column) and `B` is 16 activation rows, packed once per linear by
//! [`PackedRows`]; a 2 × 2 block of such tiles (32 output columns × 32 activation rows) keeps
//! four accumulators in tile registers while the inner dimension streams by in 32-element
//! steps.
//!
//! **Order.** Every output element is one accumulator that takes the inner dimension's 32-element
//! chunks in order, one instruction each. How the instruction adds its 32 products inside one
//! step is the processor's: Intel's SDM writes it as 32 sequential rounded additions, but on a
//! Sapphire Rapids-class Xeon that emulation matched 60–71% of 200,000 random cases, and none of
//! the others tried (either product order, a pair summed exactly, all 32 products summed exactly
//! before one or two roundings, alignment truncated to 23–40 bits) did better than 83%; they
//! differ by a few units in the last place. So this path has no portable emulation. What the
//! engine relies on holds by construction and is tested
//! (`engine/tests/it/amx_tiles.rs`): an element's value depends only on its activation row and
//! its weight row, never on the other rows of the tiles, the batch size, the chunking or the
//! threads, and it stays within f32 accumulation error of the exact dot product.
//!
//! The kernel asks Linux once for permission to use tile data (`arch_prctl`); a processor or
//! kernel without it leaves the path unavailable, so `Isa::Amx` is never chosen there. Each call
//! configures the tiles and releases them before it returns, so no other code sees tile state.

use std::sync::OnceLock;

/// Inner-dimension elements one tile instruction takes per row: 32 bf16 (64 bytes).
pub const TILE_K: usize = 32;
/// Rows of an operand tile: 16 weight rows, or 16 activation rows packed as pairs.
pub(super) const TILE_ROWS: usize = 16;
/// bf16 elements of one packed activation tile (16 pair rows × 16 activation rows × 2).
const PACKED_TILE: usize = TILE_ROWS * TILE_K;
/// Activation tiles (of 16 rows) one pass over a task's columns keeps hot: 128 rows, whose
/// packed inner dimension stays in the L2 cache while every column block meets them.
const ROW_TILES_PER_PASS: usize = 8;

/// Whether this processor has AMX-BF16 and the operating system lets this process use tile
/// data (asked once).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // Leaf 7 is read only when leaf 0 says it exists.
    let (max_leaf, leaf7) = (__cpuid(0).eax, __cpuid_count(7, 0));
    if max_leaf < 7 {
        return false;
    }
    const AMX_BF16: u32 = 1 << 22;
    const AMX_TILE: u32 = 1 << 24;
    leaf7.edx & AMX_BF16 != 0 && leaf7.edx & AMX_TILE != 0 && request_tile_data()
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: Linux (5.16 and later) enables the
/// tile-data state for the whole process on request; older kernels refuse.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_data() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: this system call changes only the process's permission to use AMX state; it
    // reads and writes none of our memory (`syscall` clobbers rcx and r11, declared).
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

/// Activation rows (bf16 bits, `[n, k]` row-major) repacked as tile operands: for each block of
/// 16 rows (the last zero-padded) and each 32-element chunk of the inner dimension, one
/// 512-element tile whose row `p` holds, for activation rows `m = 0..16`, elements `2p` and
/// `2p + 1` of the chunk.
pub struct PackedRows {
    data: Vec<u16>,
    n: usize,
    k: usize,
}

impl PackedRows {
    /// Packs `x16` (`n` rows of `k` elements; `k` a multiple of [`TILE_K`]).
    pub fn pack(x16: &[u16], n: usize, k: usize) -> PackedRows {
        assert!(
            k % TILE_K == 0 && x16.len() == n * k,
            "PackedRows::pack: {n} rows of {k} in {} elements",
            x16.len()
        );
        let chunks = k / TILE_K;
        let blocks = n.div_ceil(TILE_ROWS);
        let mut data = vec![0u16; blocks * chunks * PACKED_TILE];
        for (r, row) in x16.chunks_exact(k.max(1)).enumerate().take(n) {
            let (block, m) = (r / TILE_ROWS, r % TILE_ROWS);
            for (c, chunk) in row.chunks_exact(TILE_K).enumerate() {
                let tile = &mut data[(block * chunks + c) * PACKED_TILE..][..PACKED_TILE];
                for (p, pair) in chunk.chunks_exact(2).enumerate() {
                    tile[p * 2 * TILE_ROWS + 2 * m..][..2].copy_from_slice(pair);
                }
            }
        }
        PackedRows { data, n, k }
    }

    /// Activation rows.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Inner dimension.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The packed elements (tiles in order of row block, then inner chunk).
    pub fn as_slice(&self) -> &[u16] {
        &self.data
    }

    /// The tile of row block `block`, inner chunk `chunk`.
    fn tile(&self, block: usize, chunk: usize) -> *const u16 {
        self.data[(block * (self.k / TILE_K) + chunk) * PACKED_TILE..].as_ptr()
    }
}

/// The 64-byte tile configuration (palette 1): every tile is 16 rows of 64 bytes. Tiles 0–3
/// accumulate, 4–5 hold weight rows, 6–7 packed activations.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn full() -> TileConfig {
        let mut b = [0u8; 64];
        b[0] = 1;
        for tile in 0..8 {
            b[16 + 2 * tile..18 + 2 * tile].copy_from_slice(&64u16.to_le_bytes());
            b[48 + tile] = TILE_ROWS as u8;
        }
        TileConfig(b)
    }

    /// The configuration of a pass over one activation tile holding `n` (1–16) rows: the
    /// accumulators (0–1) and activation tiles (6–7) are `n` columns wide, so a load reads only
    /// the real rows' pairs (`n · 4` bytes of each 64-byte row of the packed tile) and the
    /// instruction computes only their columns; weight tiles (2–5) stay 16 rows of 64 bytes.
    /// Each element's computation is the same as in a full tile.
    fn narrow(n: usize) -> TileConfig {
        let mut c = TileConfig::full();
        let colsb = (n.clamp(1, TILE_ROWS) * 4) as u16;
        for tile in [0, 1, 6, 7] {
            c.0[16 + 2 * tile..18 + 2 * tile].copy_from_slice(&colsb.to_le_bytes());
        }
        c
    }
}

/// Where a task's weight tiles come from: 16 rows of `w` in place, or, for the task's last
/// columns when fewer than 16 remain, those rows copied into a zero-padded block (so every tile
/// has one shape and no load reads past the weight).
struct WeightTiles<'a> {
    w: &'a [u16],
    k: usize,
    c1: usize,
    /// The padded copy of the ragged last rows, and its first column.
    tail: Option<(Vec<u16>, usize)>,
}

impl<'a> WeightTiles<'a> {
    fn new(w: &'a [u16], k: usize, (c0, c1): (usize, usize)) -> WeightTiles<'a> {
        let ragged = (c1 - c0) % TILE_ROWS;
        let tail = (ragged > 0).then(|| {
            let first = c1 - ragged;
            let mut block = vec![0u16; TILE_ROWS * k];
            block[..ragged * k].copy_from_slice(&w[first * k..c1 * k]);
            (block, first)
        });
        WeightTiles { w, k, c1, tail }
    }

    /// The 16 weight rows starting at column `c` (`c < c1`) and how many of them are real.
    fn at(&self, c: usize) -> (*const u16, usize) {
        match &self.tail {
            Some((block, first)) if c >= *first => (block.as_ptr(), self.c1 - first),
            _ => (self.w[c * self.k..].as_ptr(), TILE_ROWS),
        }
    }
}

/// Computes columns `c0..c1` of `x @ w^T` (`w`: bf16 `[out, k]` row-major) for every row of
/// `x`, handing each element to `emit(row, column, value)`.
///
/// Blocks: with two or more activation tiles in a pass, 2 weight tiles × 2 activation tiles
/// (each load used twice); with one (a decode step of up to 16 rows), 2 weight tiles × 1, two
/// chunks at a time, so four weight tiles are loading at once. (Tile registers are not renamed:
/// the earlier 4 × 1 block reused two weight registers, and each load waited for the
/// `tdpbf16ps` reading the register before it: ds-v3-mini decoded at 51 tok/s that way and
/// 64–65 this way, `troupe bench -p 0 -n 64 --compute bf16`, 2 threads.)
///
/// # Safety
/// [`available`] returned true; `w` holds at least `c1` rows of `x.k()` elements.
#[cfg(target_arch = "x86_64")]
pub unsafe fn columns(
    x: &PackedRows,
    w: &[u16],
    (c0, c1): (usize, usize),
    emit: &mut impl FnMut(usize, usize, f32),
) {
    use std::arch::asm;
    let k = x.k;
    if c0 >= c1 || x.n == 0 {
        return;
    }
    debug_assert!(w.len() >= c1 * k && k % TILE_K == 0);
    let chunks = k / TILE_K;
    let row_tiles = x.n.div_ceil(TILE_ROWS);
    let (w_stride, x_stride) = (k * 2, TILE_ROWS * 4);
    let tiles = WeightTiles::new(w, k, (c0, c1));
    let mut acc = [[[0.0f32; TILE_ROWS]; TILE_ROWS]; 4];

    macro_rules! load {
        ($tmm:literal, $ptr:expr, $stride:expr) => {
            asm!(concat!("tileloadd tmm", $tmm, ", [{p} + {s}*1]"), p = in(reg) $ptr, s = in(reg) $stride, options(nostack, readonly))
        };
    }
    macro_rules! dot {
        ($c:literal, $a:literal, $b:literal) => {
            asm!(
                concat!("tdpbf16ps tmm", $c, ", tmm", $a, ", tmm", $b),
                options(nostack, nomem)
            )
        };
    }
    macro_rules! zero {
        ($tmm:literal) => {
            asm!(concat!("tilezero tmm", $tmm), options(nostack, nomem))
        };
    }
    macro_rules! store {
        ($tmm:literal, $ptr:expr) => {
            asm!(concat!("tilestored [{p} + {s}*1], tmm", $tmm), p = in(reg) $ptr, s = in(reg) 64usize, options(nostack))
        };
    }
    // 2 weight tiles (`$two_w`: the second present) × 2 activation tiles (`$two_x`: the
    // second present); accumulator `2a + b` is weight tile `a` × activation tile `b`.
    macro_rules! block_2x2 {
        ($w:expr, $x:expr, $two_w:literal, $two_x:literal) => {{
            zero!("0");
            zero!("1");
            zero!("2");
            zero!("3");
            for c in 0..chunks {
                load!("4", $w[0].add(c * TILE_K), w_stride);
                load!("6", x.tile($x[0], c), x_stride);
                dot!("0", "4", "6");
                if $two_x {
                    load!("7", x.tile($x[1], c), x_stride);
                    dot!("1", "4", "7");
                }
                if $two_w {
                    load!("5", $w[1].add(c * TILE_K), w_stride);
                    dot!("2", "5", "6");
                    if $two_x {
                        dot!("3", "5", "7");
                    }
                }
            }
            store!("0", acc[0].as_mut_ptr());
            store!("1", acc[1].as_mut_ptr());
            store!("2", acc[2].as_mut_ptr());
            store!("3", acc[3].as_mut_ptr());
        }};
    }
    // 2 weight tiles (`$two_w`: the second present) × 1 activation tile, two chunks per step
    // so that four weight tiles load at once: tile registers are not renamed, so a load into a
    // register that a pending `tdpbf16ps` still reads waits for it. Accumulator `a` is weight
    // tile `a`, fed the chunks in ascending order as in the other blocks (the same bits).
    macro_rules! block_2x1_paired {
        ($w:expr, $x:expr, $two_w:literal) => {{
            zero!("0");
            zero!("1");
            let mut c = 0;
            while c + 1 < chunks {
                load!("6", x.tile($x, c), x_stride);
                load!("2", $w[0].add(c * TILE_K), w_stride);
                if $two_w {
                    load!("3", $w[1].add(c * TILE_K), w_stride);
                }
                load!("7", x.tile($x, c + 1), x_stride);
                load!("4", $w[0].add((c + 1) * TILE_K), w_stride);
                if $two_w {
                    load!("5", $w[1].add((c + 1) * TILE_K), w_stride);
                }
                dot!("0", "2", "6");
                if $two_w {
                    dot!("1", "3", "6");
                }
                dot!("0", "4", "7");
                if $two_w {
                    dot!("1", "5", "7");
                }
                c += 2;
            }
            if c < chunks {
                load!("6", x.tile($x, c), x_stride);
                load!("2", $w[0].add(c * TILE_K), w_stride);
                dot!("0", "2", "6");
                if $two_w {
                    load!("3", $w[1].add(c * TILE_K), w_stride);
                    dot!("1", "3", "6");
                }
            }
            store!("0", acc[0].as_mut_ptr());
            store!("1", acc[1].as_mut_ptr());
        }};
    }

    let mut configured: Option<[u8; 64]> = None;
    let mut first = 0;
    while first < row_tiles {
        let last = (first + ROW_TILES_PER_PASS).min(row_tiles);
        // One activation tile (a decode step of up to 16 rows): weight tiles stream against it,
        // its tiles only as wide as its rows.
        let single = last - first == 1;
        let config = match single {
            true => TileConfig::narrow(x.n - first * TILE_ROWS),
            false => TileConfig::full(),
        };
        if configured != Some(config.0) {
            asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
            configured = Some(config.0);
        }
        let mut c = c0;
        while c < c1 {
            let nw = (c1 - c).div_ceil(TILE_ROWS).min(2);
            let wt: [(*const u16, usize); 4] =
                std::array::from_fn(|a| tiles.at((c + a * TILE_ROWS).min(c1 - 1)));
            let wp = wt.map(|(p, _)| p);
            let block_end = (c + nw * TILE_ROWS).min(c1);
            let mut t = first;
            while t < last {
                let nx = if single { 1 } else { (last - t).min(2) };
                match (single, nw, nx) {
                    (true, 1, _) => block_2x1_paired!(wp, t, false),
                    (true, _, _) => block_2x1_paired!(wp, t, true),
                    (_, 1, 1) => block_2x2!(wp, [t, t], false, false),
                    (_, 1, _) => block_2x2!(wp, [t, t + 1], false, true),
                    (_, _, 1) => block_2x2!(wp, [t, t], true, false),
                    _ => block_2x2!(wp, [t, t + 1], true, true),
                }
                for a in 0..nw {
                    let (col, cols) = (c + a * TILE_ROWS, wt[a].1.min(c1 - c - a * TILE_ROWS));
                    for b in 0..nx {
                        let tile = if single { a } else { 2 * a + b };
                        let row0 = (t + b) * TILE_ROWS;
                        let rows = (x.n - row0).min(TILE_ROWS);
                        for (i, line) in acc[tile].iter().enumerate().take(cols) {
                            for (m, &v) in line.iter().enumerate().take(rows) {
                                emit(row0 + m, col + i, v);
                            }
                        }
                    }
                }
                t += nx;
            }
            c = block_end;
        }
        first = last;
    }
    asm!("tilerelease", options(nostack, nomem));
}
