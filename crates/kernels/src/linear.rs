//! A frozen linear layer's product `x · W` in bf16 ([`crate::bf16`]), on burn's CPU backend with
//! and without autodiff.
//!
//! Inference computes it on the tensor's values. On the autodiff graph it is one operation of
//! its own (burn-autodiff's `Backward`), whose backward pass is `dX = dY · Wᵀ`, also in bf16 with
//! f32 sums, as PyTorch's `autocast` runs a linear layer. `W` gets no gradient: this is for
//! weights that do not train.

use std::sync::{Arc, OnceLock};

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use burn::tensor::TensorData;

use crate::bf16::{PackedB, matmul_new};
use crate::graph::{GraphOp, GraphTensor, flex, from_flex, on_graph};

/// A weight `W` (`d_in × d_out`, burn's `Linear` layout) rounded to bf16 and packed for
/// `x · W`; the packing for the backward pass's `dY · Wᵀ` is made from it on first use.
#[derive(Debug)]
pub struct Bf16Weight {
    forward: PackedB,
    backward: OnceLock<PackedB>,
}

impl Bf16Weight {
    /// From `W`'s values in row-major `[d_in, d_out]` order.
    pub fn new(w: &[f32], d_in: usize, d_out: usize) -> Self {
        Self { forward: PackedB::from_rows(w, d_in, d_out), backward: OnceLock::new() }
    }

    /// From `Wᵀ`'s values in row-major `[d_out, d_in]` order (a PyTorch `Linear` weight, a tied
    /// embedding used as the output projection).
    pub fn from_transposed(wt: &[f32], d_in: usize, d_out: usize) -> Self {
        Self { forward: PackedB::from_transposed(wt, d_in, d_out), backward: OnceLock::new() }
    }

    /// From a burn `[d_in, d_out]` weight tensor (any storage layout).
    pub fn from_tensor(w: Tensor<2>) -> Self {
        let [d_in, d_out] = w.dims();
        let values = w.into_data().convert::<f32>().try_into_vec::<f32>().expect("a float tensor converts to f32");
        Self::new(&values, d_in, d_out)
    }

    pub fn d_in(&self) -> usize {
        self.forward.k()
    }

    pub fn d_out(&self) -> usize {
        self.forward.n()
    }

    /// `W`'s bf16 value at `[i, j]`, as f32.
    pub fn value(&self, i: usize, j: usize) -> f32 {
        crate::bf16::from_bf16(self.forward.get(i, j))
    }

    /// `W`'s bf16 values as f32, row-major `[d_in, d_out]`.
    pub fn values(&self) -> Vec<f32> {
        let (k, n) = (self.d_in(), self.d_out());
        (0..k * n).map(|o| self.value(o / n.max(1), o % n.max(1))).collect()
    }

    /// Bytes held (one packing, or two once a backward pass has run).
    pub fn bytes(&self) -> usize {
        self.forward.bytes() + self.backward.get().map_or(0, PackedB::bytes)
    }

    /// The packing of `W` for `x · W`.
    pub(crate) fn forward_packing(&self) -> &PackedB {
        &self.forward
    }

    /// The packing of `Wᵀ` for `dY · Wᵀ`, made on first use.
    pub(crate) fn backward_packing(&self) -> &PackedB {
        self.backward.get_or_init(|| self.forward.transposed())
    }
}

/// `x · W` over the last dimension of `x` (`[..., d_in]` → `[..., d_out]`), without bias.
///
/// # Panics
/// Where [`crate::supports`] is false, or where `x`'s last dimension is not `d_in`.
pub fn linear<const D: usize>(x: Tensor<D>, w: &Arc<Bf16Weight>) -> Tensor<D> {
    assert!(
        crate::supports(&x),
        "bf16 products run on the CPU backend's float32 tensors, not {:?} {:?}",
        x.device(),
        x.dtype()
    );
    if x.device().is_autodiff() {
        on_graph(Bf16Linear(w.clone()), [x])
    } else {
        from_flex(product(&flex(x), &w.forward))
    }
}

/// The autodiff operation: its state is the weight, its backward `dY · Wᵀ`.
#[derive(Debug)]
struct Bf16Linear(Arc<Bf16Weight>);

impl Backward<Flex, 1> for Bf16Linear {
    type State = Arc<Bf16Weight>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let w = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| product(&grad, w.backward_packing()));
    }
}

impl GraphOp<1> for Bf16Linear {
    fn run<C: CheckpointStrategy>(self, [x]: [GraphTensor; 1]) -> GraphTensor {
        let y = product(x.primitive(), &self.0.forward);
        let w = self.0.clone();
        match self.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(w, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}

/// `x · B` over `x`'s last dimension.
fn product(x: &FlexTensor, b: &PackedB) -> FlexTensor {
    let x = x.to_contiguous();
    let mut dims = x.layout().shape().as_slice().to_vec();
    let k = dims.last().copied().unwrap_or(1);
    assert_eq!(k, b.k(), "the input's last dimension is {k}, the weight's input size {}", b.k());
    let m = x.layout().shape().num_elements().checked_div(k).unwrap_or(0);
    let a = x.as_slice::<f32>().expect("a contiguous float32 tensor");
    let out = matmul_new(a, m, k, b);
    if let Some(last) = dims.last_mut() {
        *last = b.n();
    }
    FlexTensor::from_data(TensorData::new(out, dims))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
    }

    /// W with bf16 values, so that f32 products of bf16-rounded inputs compare exactly in kind.
    fn weight(d_in: usize, d_out: usize, device: &Device) -> (Tensor<2>, Arc<Bf16Weight>) {
        let w = Tensor::<2>::random([d_in, d_out], Distribution::Normal(0.0, 0.5), device);
        let packed = Arc::new(Bf16Weight::from_tensor(w.clone()));
        let rounded: Vec<f32> = (0..d_in * d_out).map(|o| packed.value(o / d_out, o % d_out)).collect();
        (Tensor::from_data(TensorData::new(rounded, [d_in, d_out]), device), packed)
    }

    fn round<const D: usize>(x: Tensor<D>) -> Tensor<D> {
        let shape = x.shape();
        let device = x.device();
        let v: Vec<f32> = values(x).into_iter().map(|v| crate::bf16::from_bf16(crate::bf16::to_bf16(v))).collect();
        Tensor::from_data(TensorData::new(v, shape), &device)
    }

    #[test]
    fn inference_equals_the_f32_product_of_rounded_inputs() {
        let device = Device::flex();
        let (w, packed) = weight(70, 45, &device);
        let x = Tensor::<3>::random([2, 9, 70], Distribution::Normal(0.0, 1.0), &device);
        let got = values(linear(x.clone(), &packed));
        let want = values(round(x).matmul(w.unsqueeze()));
        assert_eq!(got.len(), 2 * 9 * 45);
        let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-4, "{diff}");
    }

    /// On the graph: the same value, and the input's gradient is `dY · Wᵀ` of the rounded
    /// gradient and weight, for both checkpointing strategies; an untracked input stays
    /// untracked.
    #[test]
    fn graph_gradient_is_dy_times_w_transposed() {
        for device in [Device::flex().autodiff(), Device::flex().autodiff().gradient_checkpointing()] {
            let (w, packed) = weight(33, 64, &device);
            let x = Tensor::<3>::random([2, 5, 33], Distribution::Normal(0.0, 1.0), &device).require_grad();
            let dy = Tensor::<3>::random([2, 5, 64], Distribution::Normal(0.0, 1.0), &device);
            let y = linear(x.clone(), &packed);
            let want_y = round(x.clone().detach()).matmul(w.clone().unsqueeze());
            let diff =
                values(y.clone().detach()).iter().zip(values(want_y)).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(diff < 1e-4, "value {diff}");
            let grads = (y * dy.clone()).sum().backward();
            let got = values(x.grad(&grads).expect("x has a gradient"));
            let want = values(round(dy).matmul(w.transpose().unsqueeze()));
            let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(diff < 1e-4, "gradient {diff}");
            let frozen = Tensor::<2>::ones([3, 33], &device);
            assert!(!linear(frozen, &packed).is_require_grad());
        }
    }
}
