//! A float32 linear layer whose weight and bias do not train, `x · W + b`, as one operation on
//! burn's CPU backend (with and without autodiff); its backward pass is `dX = dY · Wᵀ`.
//!
//! burn-flex's matrix product zero-fills each fresh output and then copies it once more to
//! re-align the buffer, both on the calling thread, and the bias is one more single-threaded
//! pass: for a transformer layer's projections that is a few hundred MB moved by one core per
//! training step while the other waits. Here the output starts as the bias rows, written in
//! parallel, and `gemm` adds the product into it; the weight is read through its strides
//! (either storage order of `[d_in, d_out]`, see `Proj::relayout_for_backward`).

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;

pub use crate::dropout::Dropout;
use crate::graph::{
    GraphOp, GraphTensor, View, contiguous, dims, flex, from_flex, mm, on_graph, par_build, parallelism, tensor, values,
};
use crate::linear::Bf16Weight;
use crate::rowwise::{Act, Plain, WithSlope};

/// `x · W + b` over `x`'s last dimension (`[..., d_in]` → `[..., d_out]`), for a float32 `x` on
/// burn's CPU backend (see [`crate::supports`]) and a `W` (`[d_in, d_out]`) and `b` that get no
/// gradient. On the autodiff graph, `x` gets `dY · Wᵀ`.
///
/// # Panics
/// Where `x` is not on the CPU backend, `W` or `b` require a gradient, or the sizes disagree.
pub fn frozen_linear<const D: usize>(x: Tensor<D>, w: Tensor<2>, b: Option<Tensor<1>>) -> Tensor<D> {
    let op = Dense::new(&x, w, b);
    if x.device().is_autodiff() { on_graph(op, [x]) } else { from_flex(op.apply(&contiguous(&flex(x)), false)) }
}

#[derive(Debug, Clone)]
struct Dense {
    w: FlexTensor,
    b: Option<FlexTensor>,
}

/// A view of `W` (`transpose`: of `Wᵀ`) through its strides.
fn weight_view(w: &FlexTensor, transpose: bool) -> View {
    let (d_in, d_out) = (w.layout().shape()[0], w.layout().shape()[1]);
    let layout = w.layout();
    let strides = layout.strides();
    assert!(strides.iter().all(|&s| s >= 0), "a weight with positive strides");
    let storage: &[f32] = w.storage();
    let v = &storage[layout.start_offset()..];
    let (rs, cs) = (strides[0], strides[1]);
    let last = (d_in.max(1) - 1) as isize * rs + (d_out.max(1) - 1) as isize * cs;
    assert!((last as usize) < v.len().max(1), "the weight's strides stay inside its storage");
    if transpose { View { ptr: v.as_ptr(), rs: cs, cs: rs } } else { View { ptr: v.as_ptr(), rs, cs } }
}

/// `scale · A · B` (`m × k` by `k × n` views) into a new buffer, not zeroed first where the
/// product overwrites it (k > 0).
fn new_product(m: usize, n: usize, k: usize, a: View, b: View, scale: f32) -> Vec<f32> {
    if k == 0 {
        return crate::zeros(m * n);
    }
    // SAFETY: the callers' views cover m × k and k × n values; `mm` writes all m × n values.
    unsafe { crate::graph::written_by(m * n, |out| mm(m, n, k, out, n, a, b, scale, false, parallelism(m, n, k))) }
}

/// `a · B` (+ `bias` on every row) with `a` `m × k` row-major and `B` a `k × n` view.
fn product(a: &[f32], m: usize, k: usize, b: View, n: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let Some(bias) = bias else { return new_product(m, n, k, View::rows(a, 0, k), b, 1.0) };
    // The output starts as the bias rows and the product is added.
    let mut out = bias_rows(bias, m);
    // SAFETY: `a` holds m × k values, `b` views k × n values of the weight (checked by the
    // callers' shapes), `out` m × n.
    unsafe {
        mm(m, n, k, out.as_mut_ptr(), n, View::rows(a, 0, k), b, 1.0, true, parallelism(m, n, k));
    }
    out
}

/// `m` copies of `bias` as the rows of a new `m × bias.len()` buffer, written in parallel.
fn bias_rows(bias: &[f32], m: usize) -> Vec<f32> {
    let n = bias.len();
    let rows = (crate::graph::BLOCK / n.max(1)).max(1);
    par_build(m * n, rows * n, None, |_, c| c.chunks_exact_mut(n.max(1)).for_each(|r| r.copy_from_slice(bias)))
}

impl Dense {
    /// The frozen layer applied to `x`'s last dimension.
    fn new<const D: usize>(x: &Tensor<D>, w: Tensor<2>, b: Option<Tensor<1>>) -> Self {
        assert!(crate::supports(x), "a float32 tensor on the CPU backend");
        assert!(
            !w.is_require_grad() && !b.as_ref().is_some_and(Tensor::is_require_grad),
            "frozen_linear is for a weight and bias that do not train"
        );
        let [d_in, d_out] = w.dims();
        assert_eq!(x.dims()[D - 1], d_in, "the input's last dimension against the weight's [{d_in}, {d_out}]");
        assert!(b.as_ref().is_none_or(|b| b.dims() == [d_out]), "a bias of {d_out} values");
        let plain = |t: Tensor<2>| if t.device().is_autodiff() { t.inner() } else { t };
        let w = flex(plain(w));
        let b = b.map(|b| contiguous(&flex(plain(b.unsqueeze::<2>()))));
        Self { w, b }
    }

    /// `(d_in, d_out)`.
    fn sizes(&self) -> (usize, usize) {
        let shape = self.w.layout().shape();
        (shape[0], shape[1])
    }

    /// `x · W + b` for `m` rows of `x`.
    fn forward_values(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (d_in, d_out) = self.sizes();
        assert_eq!(x.len(), m * d_in);
        let view = weight_view(&self.w, false);
        product(x, m, d_in, view, d_out, self.b.as_ref().map(values))
    }

    /// `dY · Wᵀ` for `m` rows of `dY`.
    fn backward_values(&self, g: &[f32], m: usize) -> Vec<f32> {
        let (d_in, d_out) = self.sizes();
        assert_eq!(g.len(), m * d_out);
        let view = weight_view(&self.w, true);
        product(g, m, d_out, view, d_in, None)
    }

    /// `x · W + b` over `t`'s last dimension, or with `backward` `dY · Wᵀ` (`t` is `dY`).
    fn apply(&self, t: &FlexTensor, backward: bool) -> FlexTensor {
        let (d_in, d_out) = self.sizes();
        let (k, n) = if backward { (d_out, d_in) } else { (d_in, d_out) };
        let v = values(t);
        let m = v.len() / k.max(1);
        let out = if backward { self.backward_values(v, m) } else { self.forward_values(v, m) };
        let mut shape = dims(t);
        *shape.last_mut().expect("a tensor of rank ≥ 1") = n;
        tensor(out, shape)
    }
}

impl Backward<Flex, 1> for Dense {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = contiguous(&grads.consume::<Flex>(&ops.node));
        if let [Some(parent)] = ops.parents {
            grads.register::<Flex>(parent.id, self.apply(&g, true));
        }
    }
}

impl GraphOp<1> for Dense {
    fn run<C: CheckpointStrategy>(self, [x]: [GraphTensor; 1]) -> GraphTensor {
        let y = self.apply(&contiguous(x.primitive()), false);
        self.prepare::<C>([x.node()]).compute_bound().stateless(y)
    }
}

/// `x · W + b` over `x`'s last dimension on burn's CPU autodiff graph, with gradients for
/// whichever of `x`, `W` (`[d_in, d_out]`, either storage order) and `b` are tracked: `dY · Wᵀ`,
/// `xᵀ · dY` and `dY`'s column sums. burn's product zero-fills and re-aligns each fresh output
/// on the calling thread (forward and both backward products); here they are written once, the
/// bias rows in parallel.
///
/// # Panics
/// Off the CPU's autodiff graph, or where the sizes disagree.
pub fn linear<const D: usize>(x: Tensor<D>, w: Tensor<2>, b: Option<Tensor<1>>) -> Tensor<D> {
    linear_op(x, None, w, b)
}

/// [`linear`] of `f(z)`: `f(z) · W + b` as one operation that keeps only `z` for the backward
/// pass, where it makes `f(z)` again for `dW = f(z)ᵀ · dY`, and `f'(z)` block by block for
/// `dz = (dY · Wᵀ) ⊙ f'(z)`. Composed, the activation keeps its slope and the product its
/// input — two tensors of `z`'s size (a feed-forward block's 3,072-wide one) — where this keeps
/// one. `act`: `f` and `f` with its slope, as [`crate::rowwise::activation`] takes them.
///
/// # Panics
/// As [`linear`].
pub fn linear_after<const D: usize>(
    z: Tensor<D>,
    (f, with_slope): (Plain, WithSlope),
    w: Tensor<2>,
    b: Option<Tensor<1>>,
) -> Tensor<D> {
    linear_op(z, Some(Act(f, with_slope)), w, b)
}

fn linear_op<const D: usize>(x: Tensor<D>, act: Option<Act>, w: Tensor<2>, b: Option<Tensor<1>>) -> Tensor<D> {
    assert!(crate::supports(&x) && x.device().is_autodiff(), "a float32 tensor on the CPU's autodiff graph");
    let [d_in, d_out] = w.dims();
    assert_eq!(x.dims()[D - 1], d_in, "the input's last dimension against the weight's [{d_in}, {d_out}]");
    assert!(b.as_ref().is_none_or(|b| b.dims() == [d_out]), "a bias of {d_out} values");
    let dims = x.dims();
    let x: Tensor<2> = x.reshape([dims[..D - 1].iter().product::<usize>(), d_in]);
    let op = Linear { d_in, d_out, act };
    let y: Tensor<2> = match b {
        // Every input of one rank: the bias as `[1, d_out]`.
        Some(b) => on_graph(op, [x, w, b.reshape([1, d_out])]),
        None => on_graph(op, [x, w]),
    };
    let mut out = dims;
    out[D - 1] = d_out;
    y.reshape(out)
}

#[derive(Debug, Clone, Copy)]
struct Linear {
    d_in: usize,
    d_out: usize,
    act: Option<Act>,
}

/// What [`linear`]'s backward pass reads: the input (before the activation, with one) and the
/// weight.
#[derive(Debug, Clone)]
struct LinearSaved {
    x: FlexTensor,
    w: FlexTensor,
}

impl<const N: usize> GraphOp<N> for Linear {
    fn run<C: CheckpointStrategy>(self, inputs: [GraphTensor; N]) -> GraphTensor {
        let x = contiguous(inputs[0].primitive());
        let w = inputs[1].primitive().clone();
        let b = (N == 3).then(|| contiguous(inputs[2].primitive()));
        let xv = values(&x);
        let m = xv.len() / self.d_in.max(1);
        // With an activation, its values exist only for this product.
        let activated = self.act.map(|act| act.apply(xv));
        let a = activated.as_deref().unwrap_or(xv);
        let y = product(a, m, self.d_in, weight_view(&w, false), self.d_out, b.as_ref().map(values));
        drop(activated);
        let y = tensor(y, vec![m, self.d_out]);
        match self.prepare::<C>(inputs.each_ref().map(|t| t.node())).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(LinearSaved { x, w }, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}

impl<const N: usize> Backward<Flex, N> for Linear {
    type State = LinearSaved;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = contiguous(&grads.consume::<Flex>(&ops.node));
        let LinearSaved { x, w } = ops.state;
        let (gv, xv) = (values(&g), values(&x));
        let (k, n) = (self.d_in, self.d_out);
        let m = gv.len() / n.max(1);
        if let Some(Some(node)) = ops.parents.get(2) {
            grads.register::<Flex>(node.id, tensor(crate::column_sums(gv, n), vec![1, n]));
        }
        if let Some(node) = &ops.parents[1] {
            // With an activation, its values again, only for this product.
            let activated = self.act.map(|act| act.apply(xv));
            let a = activated.as_deref().unwrap_or(xv);
            let dw = new_product(k, n, m, View::cols(a, 0, k), View::rows(gv, 0, n), 1.0);
            grads.register::<Flex>(node.id, tensor(dw, vec![k, n]));
        }
        if let Some(node) = &ops.parents[0] {
            let mut dx = product(gv, m, n, weight_view(&w, true), k, None);
            if let Some(act) = self.act {
                act.chain(&mut dx, xv);
            }
            grads.register::<Flex>(node.id, tensor(dx, vec![m, k]));
        }
    }
}

/// [`frozen_linear`] plus a LoRA update, `x · W + b + scale · (D(x) · A) · B`, as one operation
/// on burn's CPU autodiff graph, with `A` (`[d_in, r]`) and `B` (`[r, d_out]`) trainable and
/// `D` the update's dropout (peft's `lora_dropout`; the identity without one). The backward
/// pass gives `x` `dY · Wᵀ + scale · D'((dY · Bᵀ) · Aᵀ)` in one buffer, `A`
/// `scale · D(x)ᵀ · (dY · Bᵀ)` and `B` `scale · (D(x) · A)ᵀ · dY`. The dropout's mask is a
/// function of its seed ([`Dropout`]): made again in the backward pass, not kept.
///
/// # Panics
/// As [`frozen_linear`], off the autodiff graph, and where `A` and `B` do not fit `W`.
pub fn frozen_linear_lora<const D: usize>(
    x: Tensor<D>,
    w: Tensor<2>,
    b: Option<Tensor<1>>,
    update: LoraUpdate,
) -> Tensor<D> {
    let dense = Dense::new(&x, w, b);
    lora_op(x, Frozen::F32(dense), update)
}

/// A LoRA update `scale · (D(x) · A) · B` for [`frozen_linear_lora`] and [`bf16_linear_lora`]:
/// `a` (`[d_in, r]`) and `b` (`[r, d_out]`) trainable, `dropout` its dropout (none: the
/// identity).
#[derive(Debug, Clone)]
pub struct LoraUpdate {
    pub a: Tensor<2>,
    pub b: Tensor<2>,
    pub scale: f32,
    pub dropout: Option<Dropout>,
}

fn lora_op<const D: usize>(x: Tensor<D>, base: Frozen, update: LoraUpdate) -> Tensor<D> {
    assert!(x.device().is_autodiff(), "a LoRA operation is for the autodiff graph");
    let LoraUpdate { a: lora_a, b: lora_b, scale, dropout } = update;
    let (d_in, d_out) = base.sizes();
    let r = lora_a.dims()[1];
    assert!(
        lora_a.dims() == [d_in, r] && lora_b.dims() == [r, d_out],
        "LoRA A {:?} and B {:?} against W [{d_in}, {d_out}]",
        lora_a.dims(),
        lora_b.dims()
    );
    let dims = x.dims();
    let x: Tensor<2> = x.reshape([dims[..D - 1].iter().product::<usize>(), d_in]);
    let dropout = dropout.filter(|d| d.p > 0.0);
    let y: Tensor<2> = on_graph(DenseLora { base, scale, dropout }, [x, lora_a, lora_b]);
    let mut out = dims;
    out[D - 1] = d_out;
    y.reshape(out)
}

/// [`frozen_linear_lora`] with the frozen product in bf16 ([`crate::linear`]'s packed weight,
/// forward and backward, as mixed precision runs a frozen projection), the update and its
/// dropout as there in f32.
///
/// # Panics
/// As [`frozen_linear_lora`], and where `b` requires a gradient.
pub fn bf16_linear_lora<const D: usize>(
    x: Tensor<D>,
    w: &Arc<Bf16Weight>,
    b: Option<Tensor<1>>,
    update: LoraUpdate,
) -> Tensor<D> {
    assert!(crate::supports(&x), "a float32 tensor on the CPU backend");
    assert!(!b.as_ref().is_some_and(Tensor::is_require_grad), "a bias that does not train");
    let plain = |t: Tensor<2>| if t.device().is_autodiff() { t.inner() } else { t };
    let b = b.map(|b| contiguous(&flex(plain(b.unsqueeze::<2>()))));
    lora_op(x, Frozen::Bf16(w.clone(), b), update)
}

/// The frozen product under a LoRA update: f32 ([`Dense`]) or a bf16 packing with its bias.
#[derive(Debug, Clone)]
enum Frozen {
    F32(Dense),
    Bf16(Arc<Bf16Weight>, Option<FlexTensor>),
}

impl Frozen {
    /// `(d_in, d_out)`.
    fn sizes(&self) -> (usize, usize) {
        match self {
            Frozen::F32(d) => d.sizes(),
            Frozen::Bf16(w, _) => (w.d_in(), w.d_out()),
        }
    }

    /// `x · W + b` for `m` rows of `x`.
    fn forward_values(&self, x: &[f32], m: usize) -> Vec<f32> {
        match self {
            Frozen::F32(d) => d.forward_values(x, m),
            Frozen::Bf16(w, b) => {
                let k = w.d_in();
                let Some(b) = b else { return crate::bf16::matmul_new(x, m, k, w.forward_packing()) };
                // As the f32 product: the bias rows first, the product added.
                let mut out = bias_rows(values(b), m);
                crate::bf16::matmul(x, m, k, w.forward_packing(), &mut out, true);
                out
            }
        }
    }

    /// `dY · Wᵀ` for `m` rows of `dY`.
    fn backward_values(&self, g: &[f32], m: usize) -> Vec<f32> {
        match self {
            Frozen::F32(d) => d.backward_values(g, m),
            Frozen::Bf16(w, _) => crate::bf16::matmul_new(g, m, w.d_out(), w.backward_packing()),
        }
    }
}

#[derive(Debug, Clone)]
struct DenseLora {
    base: Frozen,
    scale: f32,
    dropout: Option<Dropout>,
}

/// What the LoRA operation's backward pass reads: `x`, `A`, `B` and `D(x) · A`.
#[derive(Debug, Clone)]
struct LoraSaved {
    x: FlexTensor,
    a: FlexTensor,
    b: FlexTensor,
    h: Arc<Vec<f32>>,
}

impl GraphOp<3> for DenseLora {
    fn run<C: CheckpointStrategy>(self, inputs: [GraphTensor; 3]) -> GraphTensor {
        let [x, a, b] = inputs.each_ref().map(|t| contiguous(t.primitive()));
        let (k, n) = self.base.sizes();
        let r = dims(&a)[1];
        let (xv, av, bv) = (values(&x), values(&a), values(&b));
        let m = xv.len() / k.max(1);
        let h = {
            // The dropped-out input exists only for this product.
            let dropped = self.dropout.map(|d| d.apply(xv));
            product(dropped.as_deref().unwrap_or(xv), m, k, View::rows(av, 0, r), r, None)
        };
        let mut out = self.base.forward_values(xv, m);
        // SAFETY: h is m × r, B r × n, out m × n.
        unsafe {
            mm(
                m,
                n,
                r,
                out.as_mut_ptr(),
                n,
                View::rows(&h, 0, r),
                View::rows(bv, 0, n),
                self.scale,
                true,
                parallelism(m, n, r),
            );
        }
        let y = tensor(out, vec![m, n]);
        match self.prepare::<C>(inputs.each_ref().map(|t| t.node())).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(LoraSaved { x, a, b, h: Arc::new(h) }, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}

impl Backward<Flex, 3> for DenseLora {
    type State = LoraSaved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = contiguous(&grads.consume::<Flex>(&ops.node));
        let LoraSaved { x, a, b, h } = ops.state;
        let (k, n) = self.base.sizes();
        let r = dims(&a)[1];
        let (gv, xv, av, bv) = (values(&g), values(&x), values(&a), values(&b));
        let m = gv.len() / n.max(1);
        let s = self.scale;
        let [px, pa, pb] = ops.parents;
        // dY · Bᵀ (m × r), for x's and A's gradients.
        let gb = (px.is_some() || pa.is_some()).then(|| product(gv, m, n, View::cols(bv, 0, n), r, None));
        // SAFETY (all products below): each view covers the sizes given, as laid out above.
        if let (Some(node), Some(gb)) = (&px, &gb) {
            let mut dx = self.base.backward_values(gv, m);
            let (gb, at) = (View::rows(gb, 0, r), View::cols(av, 0, r));
            match self.dropout {
                // The update's share through the mask, added to the frozen product's.
                Some(d) => d.add_masked(&mut dx, &new_product(m, k, r, gb, at, s)),
                None => unsafe { mm(m, k, r, dx.as_mut_ptr(), k, gb, at, s, true, parallelism(m, k, r)) },
            }
            grads.register::<Flex>(node.id, tensor(dx, vec![m, k]));
        }
        if let (Some(node), Some(gb)) = (&pa, &gb) {
            let dropped = self.dropout.map(|d| d.apply(xv));
            let input = dropped.as_deref().unwrap_or(xv);
            let da = new_product(k, r, m, View::cols(input, 0, k), View::rows(gb, 0, r), s);
            grads.register::<Flex>(node.id, tensor(da, vec![k, r]));
        }
        if let Some(node) = &pb {
            let db = new_product(r, n, m, View::cols(&h, 0, r), View::rows(gv, 0, n), s);
            grads.register::<Flex>(node.id, tensor(db, vec![r, n]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, assert_outputs_close, max_diff, vals, with_input_grad};
    use burn::tensor::Distribution;

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

    /// The trainable layer against burn's `matmul + bias`: value and the gradients of x, W and b
    /// (W in both storage orders; with and without bias; x untracked), both checkpointing
    /// strategies.
    #[test]
    fn trainable_linear_equals_burns() {
        for device in [Device::flex().autodiff(), Device::flex().autodiff().gradient_checkpointing()] {
            let w0 = Tensor::<2>::random([70, 130], Distribution::Normal(0.0, 0.3), &device);
            let wt0 = Tensor::<2>::from_data(w0.clone().transpose().into_data(), &device).transpose();
            let b0 = Tensor::<1>::random([130], Distribution::Normal(0.0, 1.0), &device);
            let x0 = Tensor::<3>::random([2, 45, 70], Distribution::Normal(0.0, 1.0), &device);
            let r = Tensor::<3>::random([2, 45, 130], Distribution::Normal(0.0, 1.0), &device);
            for (weight, with_bias, track_x) in
                [(&w0, true, true), (&wt0, true, true), (&w0, false, true), (&w0, true, false)]
            {
                let run = |ours: bool| {
                    let x = if track_x { x0.clone().require_grad() } else { x0.clone() };
                    let w = weight.clone().require_grad();
                    let b = with_bias.then(|| b0.clone().require_grad());
                    let y = if ours {
                        linear(x.clone(), w.clone(), b.clone())
                    } else {
                        let y = x.clone().matmul(w.clone().unsqueeze());
                        match &b {
                            Some(b) => y + b.clone().unsqueeze(),
                            None => y,
                        }
                    };
                    let grads = (y.clone() * r.clone()).sum().backward();
                    let mut out = vec![vals(y), vals(w.grad(&grads).unwrap())];
                    if let Some(b) = b {
                        out.push(vals(b.grad(&grads).unwrap()));
                    }
                    with_input_grad(out, x.grad(&grads), track_x)
                };
                assert_outputs_close("linear", &[], &run(true), &run(false), 2e-6);
            }
        }
    }

    /// `f(z) W + b` as one operation against the activation and the product composed
    /// (`rowwise::activation`, then burn's product): value and the gradients of z, W and b,
    /// with z tracked or not, for both checkpointing strategies.
    #[test]
    fn linear_after_an_activation_equals_the_composition() {
        use crate::fastmath::{gelu, gelu_with_slope};
        for device in [Device::flex().autodiff(), Device::flex().autodiff().gradient_checkpointing()] {
            let w0 = Tensor::<2>::random([70, 130], Distribution::Normal(0.0, 0.3), &device);
            let b0 = Tensor::<1>::random([130], Distribution::Normal(0.0, 1.0), &device);
            let z0 = Tensor::<3>::random([2, 45, 70], Distribution::Normal(0.0, 1.5), &device);
            let r = Tensor::<3>::random([2, 45, 130], Distribution::Normal(0.0, 1.0), &device);
            for track_z in [true, false] {
                let run = |ours: bool| {
                    let z = if track_z { z0.clone().require_grad() } else { z0.clone() };
                    let (w, b) = (w0.clone().require_grad(), b0.clone().require_grad());
                    let y = if ours {
                        linear_after(z.clone(), (gelu, gelu_with_slope), w.clone(), Some(b.clone()))
                    } else {
                        let a = crate::rowwise::activation(z.clone(), gelu, gelu_with_slope);
                        a.matmul(w.clone().unsqueeze()) + b.clone().unsqueeze()
                    };
                    let grads = (y.clone() * r.clone()).sum().backward();
                    let out = vec![vals(y), vals(w.grad(&grads).unwrap()), vals(b.grad(&grads).unwrap())];
                    with_input_grad(out, z.grad(&grads), track_z)
                };
                assert_outputs_close("linear_after", &["value", "dW", "db", "dz"], &run(true), &run(false), 2e-6);
            }
        }
    }

    /// The fused LoRA operation against burn's composition `x W + b + s (D(x) A) B`, without
    /// dropout and with it (the composition multiplies by the same mask): value and the
    /// gradients of x, A and B, for both checkpointing strategies.
    #[test]
    fn lora_equals_burns_composition() {
        for device in [Device::flex().autodiff(), Device::flex().autodiff().gradient_checkpointing()] {
            let rand = |dims: [usize; 2], sd: f64| Tensor::<2>::random(dims, Distribution::Normal(0.0, sd), &device);
            let w = rand([70, 130], 0.3);
            let b = Tensor::<1>::random([130], Distribution::Normal(0.0, 1.0), &device);
            let (a0, b0) = (rand([70, 8], 0.3), rand([8, 130], 0.3));
            let x = Tensor::<3>::random([2, 45, 70], Distribution::Normal(0.0, 1.0), &device);
            let r = Tensor::<3>::random([2, 45, 130], Distribution::Normal(0.0, 1.0), &device);
            for dropout in [None, Some(Dropout::new(0.3, 42))] {
                let run = |fused: bool| {
                    let (x, la, lb) = (x.clone().require_grad(), a0.clone().require_grad(), b0.clone().require_grad());
                    let y = if fused {
                        frozen_linear_lora(
                            x.clone(),
                            w.clone(),
                            Some(b.clone()),
                            LoraUpdate { a: la.clone(), b: lb.clone(), scale: 2.0, dropout },
                        )
                    } else {
                        let dropped = match dropout {
                            Some(d) => {
                                let mask = Tensor::<1>::from_floats(d.mask(2 * 45 * 70).as_slice(), &device);
                                x.clone() * mask.reshape([2, 45, 70])
                            }
                            None => x.clone(),
                        };
                        x.clone().matmul(w.clone().unsqueeze())
                            + b.clone().unsqueeze()
                            + dropped.matmul(la.clone().unsqueeze()).matmul(lb.clone().unsqueeze()) * 2.0
                    };
                    let grads = (y.clone() * r.clone()).sum().backward();
                    [
                        vals(y),
                        vals(x.grad(&grads).unwrap()),
                        vals(la.grad(&grads).unwrap()),
                        vals(lb.grad(&grads).unwrap()),
                    ]
                };
                let (got, want) = (run(true), run(false));
                for (what, (g, w)) in ["value", "dx", "dA", "dB"].iter().zip(got.iter().zip(&want)) {
                    assert_close(&format!("{what} with {dropout:?}"), g, w, 2e-6);
                }
                if dropout.is_some() {
                    // The mask matters: without it the update (and so dA) differs.
                    let update = LoraUpdate { a: a0.clone(), b: b0.clone(), scale: 2.0, dropout: None };
                    let plain = frozen_linear_lora(x.clone(), w.clone(), Some(b.clone()), update);
                    assert!(max_diff(&vals(plain), &got[0]) > 0.1, "the dropout changes the output");
                }
            }
        }
    }

    /// The bf16 variant against the bf16 linear operation plus bias plus burn's composition of
    /// the update (with and without dropout, the same mask): value and the gradients of x, A
    /// and B.
    #[test]
    fn bf16_lora_equals_the_bf16_product_plus_the_composed_update() {
        let device = Device::flex().autodiff();
        let rand = |dims: [usize; 2], sd: f64| Tensor::<2>::random(dims, Distribution::Normal(0.0, sd), &device);
        let w = Arc::new(Bf16Weight::from_tensor(rand([70, 130], 0.3)));
        let b = Tensor::<1>::random([130], Distribution::Normal(0.0, 1.0), &device);
        let (a0, b0) = (rand([70, 8], 0.3), rand([8, 130], 0.3));
        let x = Tensor::<3>::random([2, 45, 70], Distribution::Normal(0.0, 1.0), &device);
        let r = Tensor::<3>::random([2, 45, 130], Distribution::Normal(0.0, 1.0), &device);
        for dropout in [None, Some(Dropout::new(0.2, 9))] {
            let run = |fused: bool| {
                let (x, la, lb) = (x.clone().require_grad(), a0.clone().require_grad(), b0.clone().require_grad());
                let y = if fused {
                    bf16_linear_lora(
                        x.clone(),
                        &w,
                        Some(b.clone()),
                        LoraUpdate { a: la.clone(), b: lb.clone(), scale: 2.0, dropout },
                    )
                } else {
                    let dropped = match dropout {
                        Some(d) => {
                            x.clone()
                                * Tensor::<1>::from_floats(d.mask(2 * 45 * 70).as_slice(), &device).reshape([2, 45, 70])
                        }
                        None => x.clone(),
                    };
                    crate::linear(x.clone(), &w)
                        + b.clone().unsqueeze()
                        + dropped.matmul(la.clone().unsqueeze()).matmul(lb.clone().unsqueeze()) * 2.0
                };
                let grads = (y.clone() * r.clone()).sum().backward();
                [vals(y), vals(x.grad(&grads).unwrap()), vals(la.grad(&grads).unwrap()), vals(lb.grad(&grads).unwrap())]
            };
            let (got, want) = (run(true), run(false));
            for (what, (g, w)) in ["value", "dx", "dA", "dB"].iter().zip(got.iter().zip(&want)) {
                assert_close(&format!("{what} with {dropout:?}"), g, w, 2e-6);
            }
        }
    }
}
