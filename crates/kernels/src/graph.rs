//! What the operations of this crate share to enter burn's autodiff graph on the CPU backend:
//! the dispatch on the device's checkpointing strategy, the tensors' values as slices, new
//! tensors from vectors (without burn-flex's zero-fill and re-alignment copy of a fresh buffer),
//! and `gemm` calls on strided views.

use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, CheckpointStrategy, NoCheckpointing};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::{DType, GradientCheckpointingStrategy, TensorData};

/// A tensor on burn's CPU autodiff graph (the same type for every checkpointing strategy).
pub(crate) type GraphTensor = <Autodiff<Flex> as burn::backend::BackendTypes>::FloatTensorPrimitive;

/// An operation with `N` inputs on the autodiff graph, generic over the checkpointing strategy.
pub(crate) trait GraphOp<const N: usize> {
    fn run<C: CheckpointStrategy>(self, inputs: [GraphTensor; N]) -> GraphTensor;
}

/// True for float32 tensors on burn's CPU backend, with or without autodiff.
pub fn supports<const D: usize>(x: &Tensor<D>) -> bool {
    x.dtype() == DType::F32 && x.device().inner() == Device::flex()
}

/// `op` on autodiff tensors of the CPU backend, with the first input's checkpointing strategy;
/// an input without autodiff (a parameter left on the plain device) enters as a constant.
pub(crate) fn on_graph<const D: usize, const E: usize, const N: usize>(
    op: impl GraphOp<N>,
    inputs: [Tensor<D>; N],
) -> Tensor<E> {
    let strategy = inputs[0].gradient_checkpointing_strategy();
    let inputs = inputs.map(|t| match strategy {
        Some(s) if !t.is_autodiff() => t.autodiff().with_gradient_checkpointing_strategy(s),
        _ => t,
    });
    // One arm per strategy: burn's conversion to `Autodiff<Flex, C>` is bounded by a private
    // trait, so it cannot be generic over `C`.
    match strategy {
        Some(GradientCheckpointingStrategy::Balanced) => {
            type B = Autodiff<Flex, BalancedCheckpointing>;
            let inputs =
                inputs.map(|t| t.try_into_primitive::<B>().expect("inputs on one autodiff device of the CPU backend"));
            Tensor::from_primitive::<B>(op.run::<BalancedCheckpointing>(inputs))
        }
        _ => {
            type B = Autodiff<Flex, NoCheckpointing>;
            let inputs =
                inputs.map(|t| t.try_into_primitive::<B>().expect("inputs on one autodiff device of the CPU backend"));
            Tensor::from_primitive::<B>(op.run::<NoCheckpointing>(inputs))
        }
    }
}

/// The CPU tensor of a tensor without autodiff.
pub(crate) fn flex<const D: usize>(x: Tensor<D>) -> FlexTensor {
    x.try_into_primitive::<Flex>().expect("a CPU tensor")
}

/// A tensor without autodiff from a CPU tensor.
pub(crate) fn from_flex<const D: usize>(x: FlexTensor) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(x)
}

/// `x` with its values in row-major order in one piece (a copy only where they are not).
pub(crate) fn contiguous(x: &FlexTensor) -> FlexTensor {
    if x.as_slice::<f32>().is_some() { x.clone() } else { x.to_contiguous() }
}

/// The values of a contiguous float32 tensor (see [`contiguous`]).
pub(crate) fn values(x: &FlexTensor) -> &[f32] {
    x.as_slice::<f32>().expect("a contiguous float32 tensor")
}

pub(crate) fn dims(x: &FlexTensor) -> Vec<usize> {
    x.layout().shape().as_slice().to_vec()
}

/// A tensor holding `v` (no copy).
pub(crate) fn tensor(v: Vec<f32>, dims: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, dims))
}

/// `n` zeros, written in parallel (a fresh buffer's zero-fill is otherwise one more pass on
/// one thread).
pub fn zeros(n: usize) -> Vec<f32> {
    par_build(n, BLOCK, None, |_, _| {})
}

/// `n` values that `fill` writes through the pointer it is given, without zeroing them first
/// (for results a product overwrites in full).
///
/// # Safety
/// `fill` must write all `n` values, and nothing past them, before it returns.
pub(crate) unsafe fn written_by(n: usize, fill: impl FnOnce(*mut f32)) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    fill(v.as_mut_ptr());
    // SAFETY: the caller guarantees that `fill` wrote all `n` values.
    unsafe { v.set_len(n) };
    v
}

/// Values per parallel task of the elementwise sweeps: 64 KiB, about what an L2 cache holds
/// comfortably next to a second operand.
pub(crate) const BLOCK: usize = 1 << 14;

/// `n` values made in parallel, in blocks of `block` (the last may be shorter): block `i` starts
/// as a copy of `init`'s block `i` (zeros without `init`), then `finish(i, block)` runs on it.
pub(crate) fn par_build(
    n: usize,
    block: usize,
    init: Option<&[f32]>,
    finish: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    use rayon::prelude::*;
    use std::mem::MaybeUninit;
    if let Some(init) = init {
        assert_eq!(init.len(), n, "a copy of {n} values");
    }
    let block = block.max(1);
    let mut v: Vec<f32> = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n].par_chunks_mut(block).enumerate().for_each(|(i, c)| {
        match init {
            Some(src) => c.iter_mut().zip(&src[i * block..]).for_each(|(d, s)| {
                d.write(*s);
            }),
            None => c.iter_mut().for_each(|d| {
                d.write(0.0);
            }),
        }
        // SAFETY: every element of `c` was written just above.
        let c = unsafe { &mut *(c as *mut [MaybeUninit<f32>] as *mut [f32]) };
        finish(i, c);
    });
    // SAFETY: the chunks above cover all `n` elements, each written.
    unsafe { v.set_len(n) };
    v
}

/// Two vectors of `init.len()` values made in parallel, in blocks of `block`: the first starts as
/// a copy of `init`, the second as zeros, then `finish` runs on both blocks.
pub(crate) fn par_build_pair(
    init: &[f32],
    block: usize,
    finish: impl Fn(&mut [f32], &mut [f32]) + Sync + Send,
) -> (Vec<f32>, Vec<f32>) {
    use rayon::prelude::*;
    use std::mem::MaybeUninit;
    let (n, block) = (init.len(), block.max(1));
    let (mut a, mut b): (Vec<f32>, Vec<f32>) = (Vec::with_capacity(n), Vec::with_capacity(n));
    a.spare_capacity_mut()[..n]
        .par_chunks_mut(block)
        .zip(b.spare_capacity_mut()[..n].par_chunks_mut(block))
        .zip(init.par_chunks(block))
        .for_each(|((x, y), src)| {
            x.iter_mut().zip(src).for_each(|(d, s)| {
                d.write(*s);
            });
            y.iter_mut().for_each(|d| {
                d.write(0.0);
            });
            // SAFETY: every element of both blocks was written just above.
            let (x, y) = unsafe {
                (&mut *(x as *mut [MaybeUninit<f32>] as *mut [f32]), &mut *(y as *mut [MaybeUninit<f32>] as *mut [f32]))
            };
            finish(x, y);
        });
    // SAFETY: the blocks above cover all `n` elements of both, each written.
    unsafe {
        a.set_len(n);
        b.set_len(n);
    }
    (a, b)
}

/// Element-wise sums of equally long vectors, added in their order: with partial sums computed
/// in parallel over fixed blocks and collected, the result does not depend on the pool's
/// scheduling (rayon's `reduce` combines in whatever order its tasks split), so training stays
/// bitwise reproducible.
pub fn add_in_order(parts: Vec<Vec<f64>>) -> Vec<f64> {
    let mut parts = parts.into_iter();
    let mut total = parts.next().unwrap_or_default();
    for p in parts {
        total.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
    }
    total
}

/// Column sums of `v` read as rows of `n` values: f64 per block of rows in parallel, the blocks
/// added in order ([`add_in_order`]).
pub fn column_sums(v: &[f32], n: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let n = n.max(1);
    let rows = (BLOCK / n).max(1);
    let parts = v
        .par_chunks(rows * n)
        .map(|c| {
            let mut s = vec![0.0f64; n];
            c.chunks_exact(n).for_each(|r| s.iter_mut().zip(r).for_each(|(s, v)| *s += *v as f64));
            s
        })
        .collect();
    let mut total = add_in_order(parts);
    total.resize(n, 0.0);
    total.into_iter().map(|s| s as f32).collect()
}

/// `Σ f(a[i], b[i])` in 16 lanes, so that it vectorises.
#[inline(always)]
pub(crate) fn sum_by(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| f(*x, *y)).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += f(x[l], y[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// A raw pointer that tasks on other threads write through, each to its own elements.
#[derive(Clone, Copy)]
pub(crate) struct Shared(pub *mut f32);
// SAFETY: every user writes disjoint elements from each task and joins before reading.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer `offset` values further (a method, so that closures capture the whole
    /// `Shared`, which is `Sync`, rather than its raw pointer).
    pub fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Products smaller than this (`m · n · k`) run on one thread.
pub(crate) const PARALLEL_WORK: usize = 1 << 18;

/// `gemm`'s threading for an `m × k` by `k × n` product: the pool from [`PARALLEL_WORK`] on.
pub(crate) fn parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    if m.saturating_mul(n).saturating_mul(k) >= PARALLEL_WORK {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

/// A matrix view: element `(i, j)` at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub struct View {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

// SAFETY: a view is only read, by `mm`, whose callers guarantee that its values stay alive and
// unchanged until it returns (including on the pool's threads, which it joins).
unsafe impl Send for View {}
unsafe impl Sync for View {}

impl View {
    /// Rows of `row` values starting at `offset` of `v` (row stride `stride`).
    pub fn rows(v: &[f32], offset: usize, stride: usize) -> Self {
        debug_assert!(offset <= v.len());
        Self { ptr: v[offset..].as_ptr(), rs: stride as isize, cs: 1 }
    }

    /// The view without its first `j` columns (a method, so that closures capture the whole
    /// view, which is `Sync`, rather than its raw pointer).
    pub fn from_column(self, j: usize) -> Self {
        Self { ptr: self.ptr.wrapping_offset(j as isize * self.cs), ..self }
    }

    /// Pointer, column stride and row stride, as `gemm` takes them (a method, so that closures
    /// capture the whole view).
    fn parts(self) -> (*const f32, isize, isize) {
        (self.ptr, self.cs, self.rs)
    }

    /// The transpose of [`View::rows`].
    pub fn cols(v: &[f32], offset: usize, stride: usize) -> Self {
        Self { ptr: v[offset..].as_ptr(), rs: 1, cs: stride as isize }
    }
}

/// `dst ← scale · a · b` (`m × k` by `k × n`; `dst` rows `dst_rs` apart), or `dst += …` with
/// `accumulate`: on this thread with `Parallelism::None`, else on the pool, each thread computing
/// its own block of output columns (see [`column_blocks`]).
///
/// # Safety
/// The views must cover `m × k` and `k × n` valid values, and `dst` `m` rows of `n` writable
/// values no other thread touches meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    a: View,
    b: View,
    scale: f32,
    accumulate: bool,
    par: gemm::Parallelism,
) {
    use rayon::prelude::*;
    let dst = Shared(dst);
    // Columns j0..j0 + width of the product as one `gemm` call with its own threading `par`.
    let columns = |j0: usize, width: usize, par: gemm::Parallelism| {
        let (a, b) = (a.parts(), b.from_column(j0).parts());
        // SAFETY: the caller guarantees the extents; columns j0..j0 + width lie inside them.
        unsafe {
            gemm::gemm(
                m,
                width,
                k,
                dst.at(j0),
                1,
                dst_rs as isize,
                accumulate,
                a.0,
                a.1,
                a.2,
                b.0,
                b.1,
                b.2,
                if accumulate { 1.0 } else { 0.0 },
                scale,
                false,
                false,
                false,
                par,
            )
        }
    };
    let blocks = match par {
        gemm::Parallelism::None => 1,
        _ => column_blocks(n, rayon::current_num_threads()),
    };
    if blocks <= 1 {
        columns(0, n, par);
        return;
    }
    let width = n.div_ceil(blocks).next_multiple_of(COLUMN_ALIGN);
    // Each task alone writes its columns of `dst`'s m rows.
    (0..blocks).into_par_iter().for_each(|i| {
        let (j0, j1) = ((i * width).min(n), ((i + 1) * width).min(n));
        if j0 < j1 {
            columns(j0, j1 - j0, gemm::Parallelism::None);
        }
    });
}

/// Output columns per block are a multiple of this (one 512-bit register of f32).
const COLUMN_ALIGN: usize = 16;

/// How many column blocks a product with `n` output columns is split into over `threads`
/// threads: one per thread while each keeps at least 64 columns, else 1 (`gemm`'s own threading).
///
/// `gemm` 0.19, threaded by itself, packs a transposed or row-major left operand (here: a
/// weight read as `Wᵀ`) on the calling thread before the others start; a block of columns per
/// thread packs only its own part of `b`, in parallel, and then runs without synchronisation.
/// Measured on a 2-core Xeon (bench/README round 7): 498 × 768 by 768 × 768 products 260 → 328
/// GFLOP/s with `Wᵀ`, 299 → 331 with `W`; the CNN's products 338 → 363.
fn column_blocks(n: usize, threads: usize) -> usize {
    if threads > 1 && n >= 64 * threads { threads } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::{View, mm};
    use crate::testing::max_diff;

    /// `mm` split into column blocks over a pool (3 threads, so that the blocks' widths are not
    /// all equal and the last one is not a multiple of 16) gives the plain sum of products, for
    /// strided and transposed views, with and without accumulation.
    #[test]
    fn column_blocks_compute_the_product() {
        let (m, n, k) = (37, 300, 50);
        let a: Vec<f32> = (0..m * k + 7).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let b: Vec<f32> = (0..k * n + 3).map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0).collect();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        // a read row-major, then as the transpose of a k × m matrix; b row-major, then transposed.
        // (view, offset, row stride, column stride)
        let a_views = [(View::rows(&a, 7, k), 7, k, 1), (View::cols(&a, 0, m), 0, 1, m)];
        let b_views = [(View::rows(&b, 3, n), 3, n, 1), (View::cols(&b, 0, k), 0, 1, k)];
        for (av, ao, ar, ac) in a_views {
            for (bv, bo, br, bc) in b_views {
                for accumulate in [false, true] {
                    let start: Vec<f32> = (0..m * (n + 5)).map(|i| (i % 13) as f32).collect();
                    let mut got = start.clone();
                    // SAFETY: the views cover m × k and k × n values; `got` has m rows of n + 5.
                    pool.install(|| unsafe {
                        mm(m, n, k, got.as_mut_ptr(), n + 5, av, bv, 0.5, accumulate, gemm::Parallelism::Rayon(0))
                    });
                    let mut want = start.clone();
                    for i in 0..m {
                        for j in 0..n {
                            let s: f64 =
                                (0..k).map(|p| a[ao + i * ar + p * ac] as f64 * b[bo + p * br + j * bc] as f64).sum();
                            let base = if accumulate { want[i * (n + 5) + j] } else { 0.0 };
                            want[i * (n + 5) + j] = base + 0.5 * s as f32;
                        }
                    }
                    assert!(max_diff(&got, &want) < 1e-3, "accumulate {accumulate}: {}", max_diff(&got, &want));
                }
            }
        }
    }
}
