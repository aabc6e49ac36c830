//! Matrix products with bf16 inputs and f32 accumulation: `C = A·B`, A and B rounded to bf16
//! (round to nearest even), every product of two bf16 exact in f32, sums in f32.
//!
//! Three kernels compute the same products ([`kernel_name`] says which one runs):
//! - AMX (Intel Sapphire Rapids and later, with Linux's permission for the tile state): `tdpbf16ps`
//!   multiplies a 16 × 32 tile of A by a 32 × 16 tile of B into 16 × 16 f32 sums, 16,384
//!   multiply-adds per instruction;
//! - AVX512_BF16 (AMD Zen 4 and later, Intel Cooper Lake and later): `vdpbf16ps`, 32 bf16 pairs
//!   into 16 f32 sums per instruction, twice the multiply-adds of an f32 FMA on half the bytes;
//! - elsewhere a portable loop (slowly: it exists so that results do not depend on the machine,
//!   not for speed).
//!
//! Layout (as BLIS/GotoBLAS): B is packed once into panels of [`NR`] columns, each a sequence of
//! k-pairs `[B[2p, j], B[2p+1, j]]` for the panel's columns (zero-padded to a multiple of 16
//! pairs), so one 64-byte row holds the pairs of 16 columns: a `vdpbf16ps` operand, and a row of
//! an AMX B tile. A is rounded per call: for `vdpbf16ps` packed into tiles of [`MR`] rows,
//! `[pair p][row]` as one 32-bit word per row, which the kernel broadcasts, the kernel keeping an
//! MR × NR block of C in 28 registers over a block of [`KC`] pairs; for AMX rounded into tile
//! order (16 rows × 32 values per tile, 1 KiB in one piece), the kernel keeping a 32 × 32 block
//! of C in four tiles over all of k.
//!
//! On wav2vec2-base's shapes (500 × 768 × 3072 ...): one Zen 4 core ~200 GFLOP/s with
//! `vdpbf16ps` (230 for the instruction alone, ~85-100 for f32 FMA products); two cores of an
//! Intel Xeon with AMX ~900-1,050 GFLOP/s with `tdpbf16ps`, against ~300 for f32 products and
//! ~150 for `vdpbf16ps` there (`cargo run --release -p speechtune-kernels --example bf16_products`).

use rayon::prelude::*;

/// Rows of A per kernel call.
pub const MR: usize = 14;
/// Columns of B per panel (two 16-lane vectors).
pub const NR: usize = 32;
/// k-pairs per block: a panel block is `KC · NR · 4` bytes = 48 KiB (L2; the tile's 21 KiB in
/// L1). 384 measured 3-10 % faster than 192 or 96 on a Zen 4 core, the same as 768.
const KC: usize = 384;
/// Rows of an AMX tile; also k-pairs per tile of B.
const TILE: usize = 16;

/// A kernel that computes the products (the same values, to f32 summation order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// `tdpbf16ps` on AMX tiles.
    Amx,
    /// `vdpbf16ps` on 512-bit vectors.
    Avx512,
    /// Plain f32 arithmetic.
    Portable,
}

impl Kernel {
    /// The name benchmarks report: `amx_bf16`, `avx512_bf16` or `portable`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Amx => "amx_bf16",
            Kernel::Avx512 => "avx512_bf16",
            Kernel::Portable => "portable",
        }
    }

    /// The kernels this machine runs, fastest first (the portable one always).
    pub fn available() -> Vec<Kernel> {
        let mut kernels = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            let avx512 = std::is_x86_feature_detected!("avx512bf16")
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw");
            if avx512 && amx::enabled() {
                kernels.push(Kernel::Amx);
            }
            if avx512 {
                kernels.push(Kernel::Avx512);
            }
        }
        kernels.push(Kernel::Portable);
        kernels
    }
}

/// The kernel products run on: the fastest of [`Kernel::available`], or the one the environment
/// variable `SPEECHTUNE_BF16_KERNEL` names (`avx512_bf16`, `portable`: for comparisons). A name
/// this machine cannot run is reported on stderr, naming the ones it can, and the fastest runs.
/// Decided once per process.
pub fn kernel() -> Kernel {
    static KERNEL: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(|| choose(&Kernel::available(), std::env::var("SPEECHTUNE_BF16_KERNEL").ok().as_deref()))
}

/// The kernel `requested` names among `available` (fastest first), else the fastest, with a
/// warning when a name was given that is not among them.
fn choose(available: &[Kernel], requested: Option<&str>) -> Kernel {
    match requested {
        Some(name) if !name.is_empty() => available.iter().copied().find(|k| k.name() == name).unwrap_or_else(|| {
            let names: Vec<_> = available.iter().map(|k| k.name()).collect();
            eprintln!(
                "warning: SPEECHTUNE_BF16_KERNEL={name:?} is not a kernel this machine runs ({}); using {}",
                names.join(", "),
                available[0].name()
            );
            available[0]
        }),
        _ => available[0],
    }
}

/// The name of [`kernel`].
pub fn kernel_name() -> &'static str {
    kernel().name()
}

/// True when products run on bf16 instructions (AMX or AVX512_BF16); false means the portable
/// loop.
pub fn native() -> bool {
    kernel() != Kernel::Portable
}

/// `x` rounded to the nearest bf16 (ties to even), as its 16 bits. NaN stays NaN.
#[inline]
pub fn to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if x.is_nan() {
        return ((u >> 16) | 0x40) as u16;
    }
    let round = ((u >> 16) & 1) + 0x7fff;
    (u.wrapping_add(round) >> 16) as u16
}

/// The f32 value of a bf16.
#[inline]
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// The right-hand side `B` (`k × n`) of a product, rounded to bf16 and packed in panels:
/// `[panel][pair of k][column in panel][2]`, zero past `k` and `n`.
#[derive(Clone, Debug)]
pub struct PackedB {
    k: usize,
    n: usize,
    /// k-pairs holding values: `k / 2` rounded up.
    pairs: usize,
    /// k-pairs per panel: `pairs` rounded up to a multiple of 16 (an AMX tile's rows).
    stride: usize,
    data: Vec<u16>,
}

impl PackedB {
    /// `rows_first`: visit `B` row by row within a panel (for sources laid out by rows of `B`),
    /// else column by column (sources laid out by columns), so that the reads are sequential.
    fn pack(k: usize, n: usize, rows_first: bool, get: impl Fn(usize, usize) -> u16 + Sync) -> Self {
        Self::pack_with(k, n, |panel, q, _| {
            let cols = NR.min(n - q * NR);
            let mut put = |i: usize, c: usize| panel[((i / 2) * NR + c) * 2 + i % 2] = get(i, q * NR + c);
            if rows_first {
                (0..k).for_each(|i| (0..cols).for_each(|c| put(i, c)));
            } else {
                (0..cols).for_each(|c| (0..k).for_each(|i| put(i, c)));
            }
        })
    }

    /// `B[i, j] = value(i, j)`.
    pub fn from_fn(k: usize, n: usize, value: impl Fn(usize, usize) -> f32 + Sync) -> Self {
        Self::pack(k, n, true, |i, j| to_bf16(value(i, j)))
    }

    /// `B` given row-major, `b[i * n + j] = B[i, j]` (burn's `[in, out]` linear weight).
    pub fn from_rows(b: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(b.len(), k * n, "B of {k} × {n} needs {} values, got {}", k * n, b.len());
        Self::from_strided_rows(b, n, k, n, 1.0)
    }

    /// `B` given as its transpose, `bt[j * k + i] = B[i, j]` (a PyTorch `[out, in]` weight).
    pub fn from_transposed(bt: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(bt.len(), k * n, "Bᵀ of {n} × {k} needs {} values, got {}", k * n, bt.len());
        Self::from_strided_transposed(bt, k, k, n, 1.0)
    }

    /// `B[i, j] = scale · b[i · stride + j]`: `k` rows of `n` values inside wider rows (one
    /// head's values in attention's `[time, heads × head_dim]`).
    pub fn from_strided_rows(b: &[f32], stride: usize, k: usize, n: usize, scale: f32) -> Self {
        assert!(k == 0 || n == 0 || b.len() >= (k - 1) * stride + n, "B of {k} rows of {n} values, stride {stride}");
        let zeros = [0.0f32; NR];
        Self::pack_with(k, n, |panel, q, pairs| {
            let cols = NR.min(n - q * NR);
            for p in 0..pairs {
                let row = |i: usize| if i < k { &b[i * stride + q * NR..][..cols] } else { &zeros[..cols] };
                round_pairs(row(2 * p), row(2 * p + 1), scale, &mut panel[p * NR * 2..][..cols * 2]);
            }
        })
    }

    /// `B[i, j] = scale · bt[j · stride + i]`: `Bᵀ`'s `n` rows of `k` values inside wider rows
    /// (one head's keys in attention's `[time, heads × head_dim]`, for `Kᵀ`).
    pub fn from_strided_transposed(bt: &[f32], stride: usize, k: usize, n: usize, scale: f32) -> Self {
        assert!(k == 0 || n == 0 || bt.len() >= (n - 1) * stride + k, "Bᵀ of {n} rows of {k} values, stride {stride}");
        Self::pack_with(k, n, |panel, q, pairs| {
            let (mut x, mut r) = (vec![0.0f32; k], vec![0u16; 2 * pairs]);
            for c in 0..NR.min(n - q * NR) {
                let row = &bt[(q * NR + c) * stride..][..k];
                x.iter_mut().zip(row).for_each(|(x, &v)| *x = v * scale);
                round_row(&x, &mut r[..k]);
                for (p, pair) in r.chunks_exact(2).enumerate() {
                    panel[(p * NR + c) * 2..][..2].copy_from_slice(pair);
                }
            }
        })
    }

    /// Panels zeroed, then `fill(panel, q, pairs)` writes panel `q`'s values (its `pairs` k-pairs
    /// of up to `NR` columns), panels in parallel.
    fn pack_with(k: usize, n: usize, fill: impl Fn(&mut [u16], usize, usize) + Sync) -> Self {
        let pairs = k.div_ceil(2);
        let stride = pairs.next_multiple_of(TILE);
        let panel_len = stride * NR * 2;
        let mut data = vec![0u16; n.div_ceil(NR) * panel_len];
        data.par_chunks_mut(panel_len.max(1)).enumerate().for_each(|(q, panel)| fill(panel, q, pairs));
        PackedB { k, n, pairs, stride, data }
    }

    /// The bf16 bits of `B[i, j]`.
    #[inline]
    pub fn get(&self, i: usize, j: usize) -> u16 {
        self.data[(((j / NR) * self.stride + i / 2) * NR + j % NR) * 2 + i % 2]
    }

    /// `Bᵀ` packed the same way (exact: the values are already bf16).
    pub fn transposed(&self) -> Self {
        Self::pack(self.n, self.k, false, |i, j| self.get(j, i))
    }

    /// Rows of `B` (the products' inner dimension).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of `B`.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 2
    }
}

/// `A` (`m × k`, row stride `lda`) rounded to bf16 in tiles of `MR` rows: `[tile][pair][row]`.
fn pack_a(a: &[f32], m: usize, k: usize, lda: usize) -> Vec<u32> {
    let pairs = k.div_ceil(2);
    let mut out = vec![0u32; m.div_ceil(MR) * pairs * MR];
    out.par_chunks_mut((pairs * MR).max(1)).enumerate().for_each(|(t, tile)| {
        let mut row = vec![0u16; 2 * pairs];
        for r in 0..MR.min(m - t * MR) {
            let i = t * MR + r;
            round_row(&a[i * lda..i * lda + k], &mut row[..k]);
            for p in 0..pairs {
                tile[p * MR + r] = row[2 * p] as u32 | (row[2 * p + 1] as u32) << 16;
            }
        }
    });
    out
}

/// Two rows of B scaled, rounded and interleaved into one k-pair of a panel:
/// `out[2c] = bf16(scale · r0[c])`, `out[2c + 1] = bf16(scale · r1[c])`.
fn round_pairs(r0: &[f32], r1: &[f32], scale: f32, out: &mut [u16]) {
    debug_assert!(r0.len() == r1.len() && out.len() == 2 * r0.len());
    #[cfg(target_arch = "x86_64")]
    if kernel() != Kernel::Portable {
        // SAFETY: the instructions were detected just above.
        unsafe { avx512::round_pairs(r0, r1, scale, out) };
        return;
    }
    for ((pair, &a), &b) in out.chunks_exact_mut(2).zip(r0).zip(r1) {
        pair.copy_from_slice(&[to_bf16(a * scale), to_bf16(b * scale)]);
    }
}

fn round_row(x: &[f32], out: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if kernel() != Kernel::Portable {
        // SAFETY: the instructions were detected just above.
        unsafe { avx512::round_row(x, out) };
        return;
    }
    for (o, &v) in out.iter_mut().zip(x) {
        *o = to_bf16(v);
    }
}

/// C's pointer, shared by tasks that write disjoint blocks of it.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: each task writes its own rows × columns block (see `matmul`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// (A method, so that closures capture the whole `Out`, not its raw pointer field.)
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `C = A·B` (or `C += A·B` with `accumulate`): A `m × k` row-major with row stride `lda` (rows
/// may overlap: a convolution's receptive fields read in place), C `m × n` row-major. Runs on
/// rayon's pool, in blocks of rows × panels.
pub fn matmul(a: &[f32], m: usize, lda: usize, b: &PackedB, c: &mut [f32], accumulate: bool) {
    assert!(c.len() >= m * b.n, "C has {} values, needs {m} × {}", c.len(), b.n);
    product(a, m, lda, b, Out(c.as_mut_ptr()), accumulate);
}

/// `C = A·B` as a new `m × n` vector: written once by the kernels, never zeroed first.
pub fn matmul_new(a: &[f32], m: usize, lda: usize, b: &PackedB) -> Vec<f32> {
    let mut c = Vec::with_capacity(m * b.n);
    product(a, m, lda, b, Out(c.as_mut_ptr()), false);
    // SAFETY: `product` wrote all m × n values (without `accumulate` it reads none).
    unsafe { c.set_len(m * b.n) };
    c
}

/// Rows of A rounded and packed at a time: a bound on the packed copy's size (a convolution's
/// 16,000 overlapping receptive fields would otherwise be copied whole, 49 MB in bf16; a chunk
/// of 2,688 rows is 8 MB).
const CHUNK_ROWS: usize = MR * 192;

/// [`matmul`] on C's pointer, valid for writes of `m × n` values (reads too with `accumulate`).
fn product(a: &[f32], m: usize, lda: usize, b: &PackedB, c: Out, accumulate: bool) {
    product_on(kernel(), a, m, lda, b, c, accumulate)
}

/// [`product`] on a given kernel (one of [`Kernel::available`]).
fn product_on(kernel: Kernel, a: &[f32], m: usize, lda: usize, b: &PackedB, c: Out, accumulate: bool) {
    let (k, n) = (b.k, b.n);
    assert!(m == 0 || a.len() >= (m - 1) * lda + k, "A has {} values, not {m} rows of stride {lda}", a.len());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            // SAFETY: C is valid for m × n writes (caller).
            unsafe { std::ptr::write_bytes(c.0, 0, m * n) };
        }
        return;
    }
    for r0 in (0..m).step_by(CHUNK_ROWS) {
        let rows = CHUNK_ROWS.min(m - r0);
        let (a, c) = (&a[r0 * lda..], Out(c.at(r0 * n)));
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx => amx::chunk(a, rows, lda, b, c, accumulate),
            _ => chunk(kernel == Kernel::Avx512, a, rows, lda, b, c, accumulate),
        }
    }
}

/// One chunk of [`product`]'s rows on the `vdpbf16ps` kernel (`native`) or the portable one: A
/// packed, then blocks of tiles × panels in parallel.
fn chunk(native: bool, a: &[f32], m: usize, lda: usize, b: &PackedB, out: Out, accumulate: bool) {
    let (k, n) = (b.k, b.n);
    let packed_a = pack_a(a, m, k, lda);
    let (pairs, stride) = (b.pairs, b.stride);
    let (tiles, panels) = (m.div_ceil(MR), n.div_ceil(NR));
    // Blocks of up to 8 tiles × 4 panels, at least two per thread where the sizes allow.
    let tiles_per = tiles.div_ceil(rayon::current_num_threads() * 2).clamp(1, 8);
    let panels_per = panels.min(4);
    let (row_blocks, col_blocks) = (tiles.div_ceil(tiles_per), panels.div_ceil(panels_per));
    (0..row_blocks * col_blocks).into_par_iter().for_each(|task| {
        let (rb, cb) = (task % row_blocks, task / row_blocks);
        let mut p0 = 0;
        while p0 < pairs {
            let kc = KC.min(pairs - p0);
            for q in cb * panels_per..((cb + 1) * panels_per).min(panels) {
                let panel = &b.data[(q * stride + p0) * NR * 2..(q * stride + p0 + kc) * NR * 2];
                for t in rb * tiles_per..((rb + 1) * tiles_per).min(tiles) {
                    let tile = &packed_a[(t * pairs + p0) * MR..(t * pairs + p0 + kc) * MR];
                    let block = Block {
                        // Row t·MR, column q·NR: inside C (t < tiles, q < panels).
                        c: out.at(t * MR * n + q * NR),
                        ldc: n,
                        rows: MR.min(m - t * MR),
                        cols: NR.min(n - q * NR),
                        add: accumulate || p0 > 0,
                    };
                    #[cfg(target_arch = "x86_64")]
                    if native {
                        // SAFETY: instructions detected (`native` only when available); slices
                        // hold kc pairs; the block is this task's own part of C.
                        unsafe { avx512::kernel(kc, tile, panel, &block) };
                        continue;
                    }
                    let _ = native;
                    // SAFETY: as above.
                    unsafe { portable_kernel(kc, tile, panel, &block) };
                }
            }
            p0 += kc;
        }
    });
}

/// Where a kernel call writes: `rows × cols` of C from `c` with row stride `ldc`, added to what
/// is there when `add`.
struct Block {
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    add: bool,
}

/// The same products as the AVX512_BF16 kernel in plain f32 arithmetic.
///
/// # Safety
/// `block` must be valid for writes of its rows × cols.
unsafe fn portable_kernel(kc: usize, a: &[u32], b: &[u16], block: &Block) {
    let mut acc = [[0.0f32; NR]; MR];
    for p in 0..kc {
        let bp = &b[p * NR * 2..(p + 1) * NR * 2];
        for (r, acc) in acc.iter_mut().enumerate().take(block.rows) {
            let pair = a[p * MR + r];
            let (lo, hi) = (from_bf16(pair as u16), from_bf16((pair >> 16) as u16));
            for (j, s) in acc.iter_mut().enumerate() {
                *s += lo * from_bf16(bp[2 * j]) + hi * from_bf16(bp[2 * j + 1]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate().take(block.rows) {
        for (j, &s) in acc.iter().enumerate().take(block.cols) {
            // SAFETY: the caller's block covers row r, columns 0..cols; C is read only with
            // `add` (otherwise it may not have been written yet).
            unsafe {
                let o = block.c.add(r * block.ldc + j);
                o.write(if block.add { o.read() + s } else { s });
            }
        }
    }
}

/// The AMX kernel: `tdpbf16ps` on tiles of 16 rows × 64 bytes (16 × 32 bf16 of A, 16 pairs × 16
/// columns of B, 16 × 16 f32 of C). Tiles 0-3 hold a 32 × 32 block of C, 4-5 two 16-row tiles of
/// A, 6-7 the two 16-column halves of a panel.
#[cfg(target_arch = "x86_64")]
mod amx {
    use std::arch::asm;
    use std::sync::OnceLock;

    use rayon::prelude::*;

    use super::{NR, Out, PackedB, TILE, round_row};

    /// Rows of a block of C (two A tiles).
    const ROWS: usize = 2 * TILE;

    /// True when the CPU has AMX-BF16 tiles and Linux lets this process use them (asked once,
    /// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`; a kernel without AMX support
    /// refuses, and the products run on `vdpbf16ps`).
    pub(super) fn enabled() -> bool {
        static ENABLED: OnceLock<bool> = OnceLock::new();
        *ENABLED.get_or_init(|| {
            use std::arch::x86_64::{__cpuid_count, __get_cpuid_max};
            #[allow(unused_unsafe)]
            // SAFETY: cpuid exists on every x86_64 CPU; leaf 7 is read only where it exists.
            let (amx_bf16, amx_tile) = unsafe {
                if __get_cpuid_max(0).0 < 7 {
                    return false;
                }
                let leaf = __cpuid_count(7, 0);
                (leaf.edx >> 22 & 1 == 1, leaf.edx >> 24 & 1 == 1)
            };
            amx_bf16 && amx_tile && permitted()
        })
    }

    #[cfg(target_os = "linux")]
    fn permitted() -> bool {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a system call with integer arguments; it changes only this process's
        // permission to use the tile state.
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
    }

    #[cfg(not(target_os = "linux"))]
    fn permitted() -> bool {
        false
    }

    /// Palette 1, all eight tiles 16 rows × 64 bytes.
    static CONFIG: [u8; 64] = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = TILE as u8;
            t += 1;
        }
        c
    };

    /// A chunk of [`super::product`]'s rows: A rounded into tile order (zero-padded to whole
    /// tiles), then blocks of 32-row steps × panels in parallel, each over all of k.
    pub(super) fn chunk(a: &[f32], m: usize, lda: usize, b: &PackedB, out: Out, accumulate: bool) {
        let (k, n) = (b.k, b.n);
        // bf16 per row of the rounded A: k padded to whole tiles, as B's panels are.
        let width = b.stride * 2;
        let (steps, panels) = (m.div_ceil(ROWS), n.div_ceil(NR));
        // A in tile order, `[row step][k step][A tile 0/1][row of the tile][32 values]`, so that
        // each tile is 1 KiB in one piece (10-20 % faster products than loading a tile's rows
        // from A's rows in place, on wav2vec2-base's shapes). Every value is written once (rows
        // past m and values past k as zeros), none zeroed first.
        let step_len = ROWS * width;
        let mut rounded: Vec<u16> = Vec::with_capacity(steps * step_len);
        rounded.spare_capacity_mut().par_chunks_mut(step_len).enumerate().for_each(|(t, tiles)| {
            // SAFETY: u16 has no invalid bit patterns; every value is written below.
            let tiles = unsafe { &mut *(tiles as *mut [std::mem::MaybeUninit<u16>] as *mut [u16]) };
            let mut row = vec![0u16; width];
            for r in 0..ROWS {
                let i = t * ROWS + r;
                let k = if i < m { k } else { 0 };
                if k > 0 {
                    round_row(&a[i * lda..i * lda + k], &mut row[..k]);
                }
                row[k..].fill(0);
                for (s, values) in row.chunks_exact(2 * TILE).enumerate() {
                    let at = ((s * 2 + r / TILE) * TILE + r % TILE) * 2 * TILE;
                    tiles[at..at + 2 * TILE].copy_from_slice(values);
                }
            }
        });
        // SAFETY: all `steps · step_len` values were written just above.
        unsafe { rounded.set_len(steps * step_len) };
        // Blocks of up to 8 steps × 4 panels, at least two per thread where the sizes allow.
        // Within one, a step's A (32 rows × k) is read from L1/L2 by each panel, and the
        // panels (≤ 4 × 196 KiB for k = 3072) stay in L2 across the steps.
        let steps_per = steps.div_ceil(rayon::current_num_threads() * 2).clamp(1, 8);
        let panels_per = panels.min(4);
        let (row_blocks, col_blocks) = (steps.div_ceil(steps_per), panels.div_ceil(panels_per));
        (0..row_blocks * col_blocks).into_par_iter().for_each(|task| {
            let (rb, cb) = (task % row_blocks, task / row_blocks);
            // SAFETY: AMX is enabled (the only caller's kernel); CONFIG is a valid palette 1.
            unsafe { asm!("ldtilecfg [{}]", in(reg) CONFIG.as_ptr(), options(nostack, readonly)) };
            for t in rb * steps_per..((rb + 1) * steps_per).min(steps) {
                for q in cb * panels_per..((cb + 1) * panels_per).min(panels) {
                    let block = Block {
                        a: rounded[t * step_len..].as_ptr(),
                        b: b.data[q * b.stride * NR * 2..].as_ptr(),
                        steps: b.stride / TILE,
                        // Row t·32, column q·NR: inside C (t < steps, q < panels).
                        c: out.at(t * ROWS * n + q * NR),
                        ldc: n,
                        rows: ROWS.min(m - t * ROWS),
                        cols: NR.min(n - q * NR),
                        add: accumulate,
                    };
                    // SAFETY: tiles configured; A holds 32 rows of `width`, the panel `stride`
                    // pairs; the block of C is this task's own.
                    unsafe { block.run() };
                }
            }
            // SAFETY: releases this thread's tile state (configured above).
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        });
    }

    /// One 32 × 32 block of C over all of k.
    struct Block {
        /// 32 rows × `steps · 32` values of rounded A in tile order: `steps` pairs of tiles.
        a: *const u16,
        /// A panel: `steps · 16` pairs of `NR` columns.
        b: *const u16,
        steps: usize,
        /// `rows × cols` of C, row stride `ldc` values.
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        add: bool,
    }

    impl Block {
        /// # Safety
        /// Tiles configured with [`CONFIG`]; the pointers valid for the sizes above.
        unsafe fn run(&self) {
            let full = self.rows == ROWS && self.cols == NR;
            // A partial block goes through `spare` (32 × 32 values, row stride NR): only its rows ×
            // cols are read back, so the rest may stay unwritten (the tiles compute garbage
            // there, which nothing reads).
            let mut spare = std::mem::MaybeUninit::<[f32; ROWS * NR]>::uninit();
            let (c, ld) = if full { (self.c, self.ldc * 4) } else { (spare.as_mut_ptr().cast::<f32>(), NR * 4) };
            // SAFETY: (all blocks) the caller's sizes: rows × cols of C; steps × 32 values of
            // 32 rows of A; steps × 16 pairs of the panel; `spare` holds 32 rows of NR.
            unsafe {
                if self.add {
                    if !full {
                        for r in 0..self.rows {
                            std::ptr::copy_nonoverlapping(self.c.add(r * self.ldc), c.add(r * NR), self.cols);
                        }
                    }
                    asm!(
                        "tileloadd tmm0, [{c0} + {ld}*1]",
                        "tileloadd tmm1, [{c0} + {ld}*1 + 64]",
                        "tileloadd tmm2, [{c1} + {ld}*1]",
                        "tileloadd tmm3, [{c1} + {ld}*1 + 64]",
                        c0 = in(reg) c,
                        c1 = in(reg) c.byte_add(TILE * ld),
                        ld = in(reg) ld,
                        options(nostack, readonly, preserves_flags),
                    );
                } else {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack, nomem, preserves_flags)
                    );
                }
                for s in 0..self.steps {
                    let a0 = self.a.add(s * 2 * TILE * 2 * TILE);
                    asm!(
                        "tileloadd tmm4, [{a0} + {lda}*1]",
                        "tileloadd tmm5, [{a1} + {lda}*1]",
                        "tileloadd tmm6, [{b} + {ldb}*1]",
                        "tileloadd tmm7, [{b} + {ldb}*1 + 64]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        a0 = in(reg) a0,
                        a1 = in(reg) a0.add(TILE * 2 * TILE),
                        lda = in(reg) 2 * TILE * 2,
                        b = in(reg) self.b.add(s * TILE * NR * 2),
                        ldb = in(reg) NR * 4,
                        options(nostack, readonly, preserves_flags),
                    );
                }
                asm!(
                    "tilestored [{c0} + {ld}*1], tmm0",
                    "tilestored [{c0} + {ld}*1 + 64], tmm1",
                    "tilestored [{c1} + {ld}*1], tmm2",
                    "tilestored [{c1} + {ld}*1 + 64], tmm3",
                    c0 = in(reg) c,
                    c1 = in(reg) c.byte_add(TILE * ld),
                    ld = in(reg) ld,
                    options(nostack, preserves_flags),
                );
                if !full {
                    for r in 0..self.rows {
                        std::ptr::copy_nonoverlapping(c.add(r * NR), self.c.add(r * self.ldc), self.cols);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Block, MR, NR};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    pub(super) unsafe fn round_pairs(r0: &[f32], r1: &[f32], scale: f32, out: &mut [u16]) {
        let n = r0.len().min(r1.len()).min(out.len() / 2);
        let mut i = 0;
        // SAFETY: i + 16 ≤ n values of r0 and r1, 2·(i + 16) ≤ out.len().
        unsafe {
            let s = _mm512_set1_ps(scale);
            while i + 16 <= n {
                let a = _mm512_mul_ps(_mm512_loadu_ps(r0.as_ptr().add(i)), s);
                let b = _mm512_mul_ps(_mm512_loadu_ps(r1.as_ptr().add(i)), s);
                // Each value's 16 bits widened to 32, the second row's shifted up: one u32 per
                // pair, little-endian, so r0's half comes first.
                let lo = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(a)));
                let hi = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(b)));
                let pairs = _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi));
                _mm512_storeu_si512(out.as_mut_ptr().add(2 * i).cast(), pairs);
                i += 16;
            }
        }
        for j in i..n {
            out[2 * j] = super::to_bf16(r0[j] * scale);
            out[2 * j + 1] = super::to_bf16(r1[j] * scale);
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    pub(super) unsafe fn round_row(x: &[f32], out: &mut [u16]) {
        let n = x.len().min(out.len());
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: i + 32 ≤ n values on both sides.
            unsafe {
                let lo = _mm512_loadu_ps(x.as_ptr().add(i));
                let hi = _mm512_loadu_ps(x.as_ptr().add(i + 16));
                let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(out.as_mut_ptr().add(i).cast(), v);
            }
            i += 32;
        }
        for j in i..n {
            out[j] = super::to_bf16(x[j]);
        }
    }

    /// The kernel with as few row registers as the block needs (1, 2, 4, 8 or 14).
    ///
    /// # Safety
    /// AVX512_BF16 present; `a` holds `kc · MR` words, `b` `kc · NR · 2` halves; `block` valid.
    pub(super) unsafe fn kernel(kc: usize, a: &[u32], b: &[u16], block: &Block) {
        debug_assert!(a.len() >= kc * MR && b.len() >= kc * NR * 2);
        // SAFETY: forwarded.
        unsafe {
            match block.rows {
                1 => rows::<1>(kc, a.as_ptr(), b.as_ptr(), block),
                2 => rows::<2>(kc, a.as_ptr(), b.as_ptr(), block),
                3 | 4 => rows::<4>(kc, a.as_ptr(), b.as_ptr(), block),
                5..=8 => rows::<8>(kc, a.as_ptr(), b.as_ptr(), block),
                _ => rows::<MR>(kc, a.as_ptr(), b.as_ptr(), block),
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    unsafe fn rows<const R: usize>(kc: usize, a: *const u32, b: *const u16, block: &Block) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for p in 0..kc {
            // SAFETY: pair p < kc of the panel and the tile (caller's sizes).
            unsafe {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR * 2).cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR * 2 + 32).cast()));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let pair: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(p * MR + r) as i32));
                    acc[0] = _mm512_dpbf16_ps(acc[0], pair, b0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], pair, b1);
                }
            }
        }
        let lanes = |n: usize| -> __mmask16 { if n >= 16 { 0xffff } else { ((1u32 << n) - 1) as u16 } };
        let (m0, m1) = (lanes(block.cols), lanes(block.cols.saturating_sub(16)));
        for (r, acc) in acc.iter().enumerate().take(block.rows) {
            // SAFETY: row r < rows of the block; masked lanes are neither read nor written.
            unsafe {
                let row = block.c.add(r * block.ldc);
                let (mut v0, mut v1) = (acc[0], acc[1]);
                if block.add {
                    v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, row));
                    v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, row.add(16)));
                }
                _mm512_mask_storeu_ps(row, m0, v0);
                _mm512_mask_storeu_ps(row.add(16), m1, v1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                (*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// The exact products of the bf16-rounded inputs, summed in f64.
    fn reference(a: &[f32], m: usize, k: usize, b: impl Fn(usize, usize) -> f32, n: usize) -> Vec<f64> {
        let r = |x: f32| from_bf16(to_bf16(x)) as f64;
        (0..m * n).map(|o| (0..k).map(|l| r(a[o / n * k + l]) * r(b(l, o % n))).sum()).collect()
    }

    fn max_diff(x: &[f32], y: &[f64]) -> f64 {
        x.iter().zip(y).map(|(&x, &y)| (x as f64 - y).abs()).fold(0.0, f64::max)
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even 1.
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: to the even 1 + 2^-6.
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0 + 1.0 / 65536.0), 0x3f81);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    /// `C = A·B` (or `+=`) on one kernel.
    fn product_with(kernel: Kernel, a: &[f32], m: usize, lda: usize, b: &PackedB, c: &mut [f32], add: bool) {
        assert!(c.len() >= m * b.n());
        product_on(kernel, a, m, lda, b, Out(c.as_mut_ptr()), add);
    }

    /// Every shape class: one row, rows not a multiple of a tile (14, 32), odd k (a half-filled
    /// pair), k not a multiple of a tile's 32, columns not a multiple of the panel, k longer
    /// than one block; both packings; every kernel this machine runs gives the exact products
    /// of the rounded inputs to f32 summation error, with and without accumulation.
    #[test]
    fn products_equal_the_rounded_inputs_products() {
        let mut seed = 0x9e3779b97f4a7c15;
        let kernels = Kernel::available();
        assert_eq!(kernels.last(), Some(&Kernel::Portable));
        for (m, k, n) in
            [(1, 1, 1), (3, 7, 17), (15, 33, 47), (29, 64, 70), (100, 385, 33), (14, 801, 33), (64, 96, 64)]
        {
            let a = values(m * k, &mut seed);
            let w = values(k * n, &mut seed);
            let want = reference(&a, m, k, |i, j| w[i * n + j], n);
            let by_rows = PackedB::from_rows(&w, k, n);
            // The same B given as its transpose packs to the same bits.
            let wt: Vec<f32> = (0..k * n).map(|o| w[(o % k) * n + o / k]).collect();
            assert_eq!(PackedB::from_transposed(&wt, k, n).data, by_rows.data);
            for &kernel in &kernels {
                let mut c = vec![f32::NAN; m * n];
                product_with(kernel, &a, m, k, &by_rows, &mut c, false);
                let diff = max_diff(&c, &want);
                assert!(diff < 1e-5 * (k as f64).sqrt(), "{kernel:?} {m}×{k}×{n}: {diff}");
                // Accumulating adds onto C.
                let mut twice = c.clone();
                product_with(kernel, &a, m, k, &by_rows, &mut twice, true);
                assert!(
                    twice.iter().zip(&c).all(|(t, c)| (t - 2.0 * c).abs() <= 1e-6 * c.abs().max(1.0)),
                    "{kernel:?} {m}×{k}×{n} accumulated"
                );
            }
        }
    }

    /// The kernel that runs is the fastest this machine has, and says so.
    #[test]
    fn the_fastest_kernel_runs() {
        let kernels = Kernel::available();
        if std::env::var_os("SPEECHTUNE_BF16_KERNEL").is_none() {
            assert_eq!(kernel(), kernels[0]);
        }
        assert_eq!(native(), kernel() != Kernel::Portable);
        assert!(["amx_bf16", "avx512_bf16", "portable"].contains(&kernel_name()));
        // AMX only alongside AVX512_BF16 (its A is rounded with AVX-512).
        assert!(!kernels.contains(&Kernel::Amx) || kernels.contains(&Kernel::Avx512));
    }

    /// `SPEECHTUNE_BF16_KERNEL` picks an available kernel by name; an unknown or unavailable
    /// name, or none, leaves the fastest.
    #[test]
    fn a_kernel_is_chosen_by_name() {
        let both = [Kernel::Avx512, Kernel::Portable];
        assert_eq!(choose(&both, Some("portable")), Kernel::Portable);
        assert_eq!(choose(&both, Some("avx512_bf16")), Kernel::Avx512);
        assert_eq!(choose(&both, Some("amx_bf16")), Kernel::Avx512);
        assert_eq!(choose(&both, Some("bogus")), Kernel::Avx512);
        assert_eq!(choose(&both, Some("")), Kernel::Avx512);
        assert_eq!(choose(&[Kernel::Portable], None), Kernel::Portable);
    }

    #[test]
    fn transposed_packing_is_exact() {
        let mut seed = 7;
        let (k, n) = (37, 45);
        let w = values(k * n, &mut seed);
        let packed = PackedB::from_rows(&w, k, n);
        let t = packed.transposed();
        assert_eq!((t.k(), t.n()), (n, k));
        for i in 0..k {
            for j in 0..n {
                assert_eq!(t.get(j, i), to_bf16(w[i * n + j]));
            }
        }
    }

    /// The strided packings hold `scale · value` rounded, as `from_fn` packs it, zeros past `k`
    /// (odd here: a half-filled last pair) and `n` (not a whole panel); the rows and transposed
    /// ones agree with each other.
    #[test]
    fn strided_packings_equal_the_general_one() {
        let mut seed = 5;
        let (k, n, stride, scale) = (37, 45, 50, 0.3);
        let src = values(n.max(k) * stride + stride, &mut seed);
        let rows = PackedB::from_strided_rows(&src[3..], stride, k, n, scale);
        let want = PackedB::from_fn(k, n, |i, j| src[3 + i * stride + j] * scale);
        assert_eq!(rows.data, want.data);
        let cols = PackedB::from_strided_transposed(&src[3..], stride, k, n, scale);
        let want = PackedB::from_fn(k, n, |i, j| src[3 + j * stride + i] * scale);
        assert_eq!(cols.data, want.data);
        assert!(
            want.data.iter().any(|&h| h != 0)
                && want.get(k - 1, n - 1) == to_bf16(src[3 + (n - 1) * stride + k - 1] * scale)
        );
        // The dense ones are the strided ones with the row length as stride.
        let w = values(k * n, &mut seed);
        assert_eq!(PackedB::from_rows(&w, k, n).data, PackedB::from_fn(k, n, |i, j| w[i * n + j]).data);
        assert_eq!(PackedB::from_transposed(&w, k, n).data, PackedB::from_fn(k, n, |i, j| w[j * k + i]).data);
    }

    #[test]
    fn row_stride_and_empty_shapes() {
        let mut seed = 11;
        let (m, k, n, lda) = (5, 9, 6, 13);
        let a = values(m * lda, &mut seed);
        let w = values(k * n, &mut seed);
        let dense: Vec<f32> = (0..m * k).map(|o| a[o / k * lda + o % k]).collect();
        let want = reference(&dense, m, k, |i, j| w[i * n + j], n);
        let mut c = vec![0.0; m * n];
        matmul(&a, m, lda, &PackedB::from_rows(&w, k, n), &mut c, false);
        assert!(max_diff(&c, &want) < 1e-5);
        // Overlapping rows (stride 2, rows of 5), as a convolution reads its input.
        let x = values(2 * 6 + 5, &mut seed);
        let (m, k, lda) = (7, 5, 2);
        let w = values(k * n, &mut seed);
        let dense: Vec<f32> = (0..m * k).map(|o| x[o / k * lda + o % k]).collect();
        let want = reference(&dense, m, k, |i, j| w[i * n + j], n);
        for kernel in Kernel::available() {
            let mut c = vec![f32::NAN; m * n];
            product_with(kernel, &x, m, lda, &PackedB::from_rows(&w, k, n), &mut c, false);
            assert!(max_diff(&c, &want) < 1e-5, "{kernel:?}");
        }
        let mut c = vec![3.0; 4];
        matmul(&[], 2, 0, &PackedB::from_rows(&[], 0, 2), &mut c, false);
        assert_eq!(c, [0.0; 4]);
        assert_eq!(matmul_new(&[], 2, 0, &PackedB::from_rows(&[], 0, 2)), [0.0; 4]);
    }

    /// More rows than one chunk (A is packed a chunk at a time), overlapping rows, into memory
    /// never written: every value of C comes out, equal to the product, on every kernel.
    #[test]
    fn rows_beyond_one_chunk_into_fresh_memory() {
        let mut seed = 13;
        let (m, k, n, lda) = (2 * CHUNK_ROWS + 31, 12, 40, 4);
        let x = values((m - 1) * lda + k, &mut seed);
        let w = values(k * n, &mut seed);
        let dense: Vec<f32> = (0..m * k).map(|o| x[o / k * lda + o % k]).collect();
        let want = reference(&dense, m, k, |i, j| w[i * n + j], n);
        let b = PackedB::from_rows(&w, k, n);
        let c = matmul_new(&x, m, lda, &b);
        assert_eq!(c.len(), m * n);
        assert!(max_diff(&c, &want) < 1e-5, "{}", max_diff(&c, &want));
        for kernel in Kernel::available() {
            let mut c = vec![f32::NAN; m * n];
            product_with(kernel, &x, m, lda, &b, &mut c, false);
            assert!(max_diff(&c, &want) < 1e-5, "{kernel:?}: {}", max_diff(&c, &want));
        }
    }
}
