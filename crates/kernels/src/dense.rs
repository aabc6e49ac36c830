//! A float32 linear layer whose weight and bias do not train, `x · W + b`, as one operation on
//! burn's CPU backend (with and without autodiff); its backward pass is `dX = dY · Wᵀ`.
//!
//! burn-flex's matrix product zero-fills each fresh output and then copies it once more to
//! re-align the buffer, both on the calling thread, and the bias is one more single-threaded
//! pass: for a transformer layer's projections that is a few hundred MB moved by one core per
//! training step while the other waits. Here the output starts as the bias rows, written in
//! parallel, and `gemm` adds the product into it; the weight is read through its strides
//! (either storage order of `[d_in, d_out]`, see `Proj::relayout_for_backward`).

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;

use crate::graph::{
    GraphOp, GraphTensor, View, contiguous, dims, flex, from_flex, mm, on_graph, par_build, tensor, values,
};

/// Products smaller than this (`m · n · k`) run on one thread.
const PARALLEL_WORK: usize = 1 << 18;

/// `x · W + b` over `x`'s last dimension (`[..., d_in]` → `[..., d_out]`), for a float32 `x` on
/// burn's CPU backend (see [`crate::supports`]) and a `W` (`[d_in, d_out]`) and `b` that get no
/// gradient. On the autodiff graph, `x` gets `dY · Wᵀ`.
///
/// # Panics
/// Where `x` is not on the CPU backend, `W` or `b` require a gradient, or the sizes disagree.
pub fn frozen_linear<const D: usize>(x: Tensor<D>, w: Tensor<2>, b: Option<Tensor<1>>) -> Tensor<D> {
    assert!(crate::supports(&x), "a float32 tensor on the CPU backend");
    assert!(
        !w.is_require_grad() && !b.as_ref().is_some_and(Tensor::is_require_grad),
        "frozen_linear is for a weight and bias that do not train"
    );
    let [d_in, d_out] = w.dims();
    assert_eq!(x.dims()[D - 1], d_in, "the input's last dimension against the weight's [{d_in}, {d_out}]");
    let plain = |t: Tensor<2>| if t.device().is_autodiff() { t.inner() } else { t };
    let w = flex(plain(w));
    let b = b.map(|b| contiguous(&flex(plain(b.unsqueeze::<2>()))));
    let op = Dense { w, b };
    if x.device().is_autodiff() { on_graph(op, [x]) } else { from_flex(op.forward(&contiguous(&flex(x)))) }
}

#[derive(Debug, Clone)]
struct Dense {
    w: FlexTensor,
    b: Option<FlexTensor>,
}

/// `W`'s values and a view of `W` (`transpose`: of `Wᵀ`) through its strides.
fn weight_view(w: &FlexTensor, transpose: bool) -> (&[f32], View) {
    let layout = w.layout();
    let strides = layout.strides();
    assert!(strides.iter().all(|&s| s >= 0), "a weight with positive strides");
    let storage: &[f32] = w.storage();
    let v = &storage[layout.start_offset()..];
    let (rs, cs) = (strides[0], strides[1]);
    let view = if transpose { View { ptr: v.as_ptr(), rs: cs, cs: rs } } else { View { ptr: v.as_ptr(), rs, cs } };
    (v, view)
}

fn parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    if m.saturating_mul(n).saturating_mul(k) >= PARALLEL_WORK {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

/// `a · B` (+ `bias` on every row) with `a` `m × k` row-major and `B` a `k × n` view.
fn product(a: &[f32], m: usize, k: usize, b: View, n: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let rows = (crate::graph::BLOCK / n.max(1)).max(1);
    let mut out = par_build(m * n, rows * n, None, |_, c| {
        if let Some(bias) = bias {
            c.chunks_exact_mut(n).for_each(|r| r.copy_from_slice(bias));
        }
    });
    // SAFETY: `a` holds m × k values, `b` views k × n values of the weight (checked by the
    // callers' shapes), `out` m × n.
    unsafe {
        mm(m, n, k, out.as_mut_ptr(), n, View::rows(a, 0, k), b, 1.0, bias.is_some(), parallelism(m, n, k));
    }
    out
}

impl Dense {
    fn forward(&self, x: &FlexTensor) -> FlexTensor {
        let [d_in, d_out] = [self.w.layout().shape()[0], self.w.layout().shape()[1]];
        let xv = values(x);
        let m = xv.len() / d_in.max(1);
        let (wv, view) = weight_view(&self.w, false);
        assert!(wv.len() >= d_in * d_out);
        let bias = self.b.as_ref().map(values);
        let out = product(xv, m, d_in, view, d_out, bias);
        let mut shape = dims(x);
        *shape.last_mut().expect("a tensor of rank ≥ 1") = d_out;
        tensor(out, shape)
    }

    fn backward_input(&self, g: &FlexTensor) -> FlexTensor {
        let [d_in, d_out] = [self.w.layout().shape()[0], self.w.layout().shape()[1]];
        let gv = values(g);
        let m = gv.len() / d_out.max(1);
        let (_, view) = weight_view(&self.w, true);
        let out = product(gv, m, d_out, view, d_in, None);
        let mut shape = dims(g);
        *shape.last_mut().expect("a tensor of rank ≥ 1") = d_in;
        tensor(out, shape)
    }
}

impl Backward<Flex, 1> for Dense {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = contiguous(&grads.consume::<Flex>(&ops.node));
        if let [Some(parent)] = ops.parents {
            grads.register::<Flex>(parent.id, self.backward_input(&g));
        }
    }
}

impl GraphOp<1> for Dense {
    fn run<C: CheckpointStrategy>(self, [x]: [GraphTensor; 1]) -> GraphTensor {
        let y = self.forward(&contiguous(x.primitive()));
        self.prepare::<C>([x.node()]).compute_bound().stateless(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// Value and input gradient equal burn's `matmul + bias` for both storage orders of the
    /// weight, with and without bias, on and off the graph (both checkpointing strategies).
    #[test]
    fn equals_burns_linear() {
        for device in [Device::flex(), Device::flex().autodiff(), Device::flex().autodiff().gradient_checkpointing()] {
            let w = Tensor::<2>::random([70, 130], Distribution::Normal(0.0, 0.3), &device);
            // The same values stored as [out, in] rows, seen as [in, out].
            let wt = Tensor::<2>::from_data(w.clone().transpose().into_data(), &device).transpose();
            let b = Tensor::<1>::random([130], Distribution::Normal(0.0, 1.0), &device);
            let x = Tensor::<3>::random([2, 45, 70], Distribution::Normal(0.0, 1.0), &device);
            let r = Tensor::<3>::random([2, 45, 130], Distribution::Normal(0.0, 1.0), &device);
            for weight in [w.clone(), wt] {
                for bias in [None, Some(b.clone())] {
                    let want = {
                        let y = x.clone().matmul(w.clone().unsqueeze());
                        match &bias {
                            Some(b) => y + b.clone().unsqueeze(),
                            None => y,
                        }
                    };
                    let xg = if device.is_autodiff() { x.clone().require_grad() } else { x.clone() };
                    let y = frozen_linear(xg.clone(), weight.clone(), bias.clone());
                    assert!(max_diff(&vals(y.clone()), &vals(want)) < 1e-5);
                    if device.is_autodiff() {
                        let grads = (y * r.clone()).sum().backward();
                        let got = vals(xg.grad(&grads).expect("x has a gradient"));
                        let want = vals(r.clone().matmul(w.clone().transpose().unsqueeze()));
                        assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
                    }
                }
            }
            let frozen = frozen_linear(x.clone(), w.clone(), None);
            assert!(!frozen.is_require_grad());
        }
    }
}
