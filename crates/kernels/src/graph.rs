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

/// `op` on autodiff tensors of the CPU backend; all inputs on the same device.
pub(crate) fn on_graph<const D: usize, const E: usize, const N: usize>(
    op: impl GraphOp<N>,
    inputs: [Tensor<D>; N],
) -> Tensor<E> {
    // One arm per strategy: burn's conversion to `Autodiff<Flex, C>` is bounded by a private
    // trait, so it cannot be generic over `C`.
    match inputs[0].device().gradient_checkpointing_strategy() {
        Some(GradientCheckpointingStrategy::Balanced) => {
            type B = Autodiff<Flex, BalancedCheckpointing>;
            let inputs = inputs.map(|t| t.try_into_primitive::<B>().expect("a CPU autodiff tensor"));
            Tensor::from_primitive::<B>(op.run::<BalancedCheckpointing>(inputs))
        }
        _ => {
            type B = Autodiff<Flex, NoCheckpointing>;
            let inputs = inputs.map(|t| t.try_into_primitive::<B>().expect("a CPU autodiff tensor"));
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

/// `n` floats for a result that is written in full before it is read. (Zeroed: the allocator
/// gives fresh large blocks zeroed by the kernel anyway, and this keeps the code safe.)
pub(crate) fn output(n: usize) -> Vec<f32> {
    vec![0.0; n]
}

/// A raw pointer that tasks on other threads write through, each to its own elements.
#[derive(Clone, Copy)]
pub(crate) struct Shared(pub *mut f32);
// SAFETY: every user writes disjoint elements from each task and joins before reading.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// A matrix view: element `(i, j)` at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub(crate) struct View {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

impl View {
    /// Rows of `row` values starting at `offset` of `v` (row stride `stride`).
    pub fn rows(v: &[f32], offset: usize, stride: usize) -> Self {
        debug_assert!(offset <= v.len());
        Self { ptr: v[offset..].as_ptr(), rs: stride as isize, cs: 1 }
    }

    /// The transpose of [`View::rows`].
    pub fn cols(v: &[f32], offset: usize, stride: usize) -> Self {
        Self { ptr: v[offset..].as_ptr(), rs: 1, cs: stride as isize }
    }
}

/// `dst ← scale · a · b` (`m × k` by `k × n`; `dst` rows `dst_rs` apart), or `dst += …` with
/// `accumulate`, on this thread.
///
/// # Safety
/// The views must cover `m × k` and `k × n` valid values, and `dst` `m` rows of `n` writable
/// values no other thread touches meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn mm(
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
    // SAFETY: the caller guarantees the extents above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            par,
        )
    }
}
