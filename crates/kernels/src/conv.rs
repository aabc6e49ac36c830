//! A 1-D convolution on channels-last tensors (`[batch, time, channels]`), grouped and zero-padded
//! as torch's `conv1d`, as one operation on burn's CPU backend with its own backward pass (the
//! weight's, the bias's and the input's gradients, each only where it is tracked).
//!
//! Why: burn's convolution works channels-first; it relays the input out channel-last on one
//! thread, builds im2col tiles, and computes the weight's gradient as a convolution whose output
//! is the kernel (3 taps): `gemm` products 3 columns wide, at a fraction of the cores' rate. When
//! wav2vec2 pre-trains, its CNN trains, and on a 2-core Xeon those products were a third of the
//! step. Channels-last, the receptive field of output frame `t` is `kernel` consecutive input rows,
//! one contiguous run starting at row `t × stride`, so
//! - the forward pass is one product whose left operand is the input read with a row stride of
//!   `stride` rows (no im2col buffer);
//! - the weight's gradient is that operand's transpose times `dY`, a `kernel·c_in × c_out` result
//!   summed over `frames` (products of the model's own sizes);
//! - the input's gradient is `kernel` products `dY · W_jᵀ`, each written into the rows `t × stride
//!   + j` of `dX` (a row stride again), the first `stride` of them overwriting, the rest adding.
//!
//! A grouped or padded convolution (wav2vec2's positional convolution: 16 groups, 128 taps) first
//! copies each group's channels, with the padding as zero rows, into a buffer of its own.

use std::borrow::Cow;
use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use rayon::prelude::*;

use crate::graph::{
    GraphOp, GraphTensor, Shared, View, contiguous, flex, from_flex, mm, on_graph, par_build, parallelism, tensor,
    values,
};
use crate::rowwise::{Act, Plain, WithSlope};

/// `conv1d` of `x` (`[batch, time, c_in]`, channels-last) with `weight` (`[c_out, c_in / groups,
/// kernel]`, torch's layout) and `bias` (`[c_out]`): `[batch, frames, c_out]` with `frames =
/// (time + 2·padding − kernel) / stride + 1`. For float32 tensors on burn's CPU backend (see
/// [`crate::supports`]), on the autodiff graph or off it.
///
/// # Panics
/// Where the tensors are not on the CPU backend, the sizes disagree, or the input is shorter than
/// the kernel.
pub fn conv1d(
    x: Tensor<3>,
    weight: Tensor<3>,
    bias: Option<Tensor<1>>,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Tensor<3> {
    conv_op(x, None, weight, bias, [stride, padding, groups])
}

/// [`conv1d`] of `f(z)` as one operation that keeps only `z` for the backward pass, where it
/// makes `f(z)` and `f'(z)` again for the weight's gradient and `dz = dX ⊙ f'(z)` (as
/// [`crate::dense::linear_after`]): a CNN layer's activation fused into the next layer's
/// convolution keeps one tensor of the activation's size where the composition keeps two (the
/// activation's slope and the convolution's input). `act`: `f` and `f` with its slope.
///
/// # Panics
/// As [`conv1d`].
pub fn conv1d_after(
    z: Tensor<3>,
    (f, with_slope): (Plain, WithSlope),
    weight: Tensor<3>,
    bias: Option<Tensor<1>>,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Tensor<3> {
    conv_op(z, Some(Act(f, with_slope)), weight, bias, [stride, padding, groups])
}

fn conv_op(
    x: Tensor<3>,
    act: Option<Act>,
    weight: Tensor<3>,
    bias: Option<Tensor<1>>,
    [stride, padding, groups]: [usize; 3],
) -> Tensor<3> {
    assert!(crate::supports(&x) && crate::supports(&weight), "float32 tensors on the CPU backend");
    let [batch, t_in, c_in] = x.dims();
    let [c_out, cg_in, kernel] = weight.dims();
    assert!(stride > 0 && groups > 0 && kernel > 0, "stride, groups and kernel of at least 1");
    assert!(
        c_in == cg_in * groups && c_out.is_multiple_of(groups),
        "input channels {c_in} and weight [{c_out}, {cg_in}, {kernel}] in {groups} groups"
    );
    assert!(bias.as_ref().is_none_or(|b| b.dims() == [c_out]), "a bias of {c_out} values");
    assert!(t_in + 2 * padding >= kernel, "{t_in} frames (padded by {padding} each side) against a kernel of {kernel}");
    let op = Conv { batch, t_in, c_in, c_out, kernel, stride, padding, groups, act };
    if x.device().is_autodiff() {
        match bias {
            // Every input of one rank: the bias as `[1, 1, c_out]`.
            Some(b) => on_graph(op, [x, weight, b.reshape([1, 1, c_out])]),
            None => on_graph(op, [x, weight]),
        }
    } else {
        let (x, w) = (contiguous(&flex(x)), contiguous(&flex(weight)));
        let b = bias.map(|b| contiguous(&flex(b)));
        let wg = op.weight_matrices(values(&w));
        let activated = act.map(|act| act.apply(values(&x)));
        let input = activated.as_deref().unwrap_or(values(&x));
        from_flex(tensor(op.forward(input, &wg, b.as_ref().map(values)), op.output_dims()))
    }
}

#[derive(Debug, Clone, Copy)]
struct Conv {
    batch: usize,
    t_in: usize,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    groups: usize,
    /// An activation applied to the input first ([`conv1d_after`]).
    act: Option<Act>,
}

impl Conv {
    fn t_out(&self) -> usize {
        (self.t_in + 2 * self.padding - self.kernel) / self.stride + 1
    }

    fn output_dims(&self) -> Vec<usize> {
        vec![self.batch, self.t_out(), self.c_out]
    }

    /// Input and output channels per group.
    fn group_sizes(&self) -> (usize, usize) {
        (self.c_in / self.groups, self.c_out / self.groups)
    }

    /// Values of one group's weight matrix, `kernel · cg_in × cg_out`.
    fn group_len(&self) -> usize {
        let (ci, co) = self.group_sizes();
        self.kernel * ci * co
    }

    /// True where each item's input is its own source (one group, no padding): no copy.
    fn direct(&self) -> bool {
        self.groups == 1 && self.padding == 0
    }

    /// Rows of a source: the input's frames and the padding.
    fn source_rows(&self) -> usize {
        self.t_in + 2 * self.padding
    }

    /// The weight `[c_out, cg_in, kernel]` as one matrix per group, `[kernel · cg_in, cg_out]`,
    /// row `j · cg_in + c` holding `W[g·cg_out + o, c, j]` (group after group).
    fn weight_matrices(&self, w: &[f32]) -> Vec<f32> {
        let (ci, co, k) = (self.group_sizes().0, self.group_sizes().1, self.kernel);
        assert_eq!(w.len(), self.c_out * ci * k);
        // One task per (group, tap): a `cg_in × cg_out` block.
        par_build(self.groups * self.group_len(), ci * co, None, |gj, block| {
            let (g, j) = (gj / k, gj % k);
            for (c, row) in block.chunks_exact_mut(co).enumerate() {
                for (o, v) in row.iter_mut().enumerate() {
                    *v = w[((g * co + o) * ci + c) * k + j];
                }
            }
        })
    }

    /// The inverse of [`Conv::weight_matrices`]: `[c_out, cg_in, kernel]` from the group matrices.
    fn weight_from_matrices(&self, wg: &[f32]) -> Vec<f32> {
        let (ci, co, k) = (self.group_sizes().0, self.group_sizes().1, self.kernel);
        par_build(self.c_out * ci * k, ci * k, None, |og, row| {
            let (g, o) = (og / co, og % co);
            let m = &wg[g * self.group_len()..];
            for c in 0..ci {
                for j in 0..k {
                    row[c * k + j] = m[(j * ci + c) * co + o];
                }
            }
        })
    }

    /// Item `b`'s group `g` as `[source_rows, cg_in]`: the input itself where [`Conv::direct`],
    /// else a copy of the group's channels between `padding` zero rows.
    fn source<'a>(&self, x: &'a [f32], b: usize, g: usize) -> Cow<'a, [f32]> {
        let item = &x[b * self.t_in * self.c_in..][..self.t_in * self.c_in];
        if self.direct() {
            return Cow::Borrowed(item);
        }
        let ci = self.group_sizes().0;
        let mut s = vec![0.0f32; self.source_rows() * ci];
        for (t, row) in item.chunks_exact(self.c_in).enumerate() {
            s[(t + self.padding) * ci..][..ci].copy_from_slice(&row[g * ci..][..ci]);
        }
        Cow::Owned(s)
    }

    /// Run `task(b, g, par)` for every item and group: one after another with threaded products
    /// when there is one group, else in parallel with single-threaded ones.
    fn for_each_source(&self, task: impl Fn(usize, usize, bool) + Sync + Send) {
        if self.groups == 1 {
            (0..self.batch).for_each(|b| task(b, 0, true));
        } else {
            (0..self.batch * self.groups)
                .into_par_iter()
                .for_each(|bg| task(bg / self.groups, bg % self.groups, false));
        }
    }

    fn par(&self, threaded: bool, m: usize, n: usize, k: usize) -> gemm::Parallelism {
        if threaded { parallelism(m, n, k) } else { gemm::Parallelism::None }
    }

    /// `[batch, frames, c_out]`.
    fn forward(&self, x: &[f32], wg: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        let (ci, co) = self.group_sizes();
        let (t_out, n) = (self.t_out(), self.c_out);
        let len = self.batch * t_out * n;
        let fill = |y: *mut f32| {
            let y = Shared(y);
            self.for_each_source(|b, g, threaded| {
                let src = self.source(x, b, g);
                let a = View { ptr: src.as_ptr(), rs: (self.stride * ci) as isize, cs: 1 };
                let w = View::rows(wg, g * self.group_len(), co);
                let k = self.kernel * ci;
                // SAFETY: row t of `a` reads source rows t·stride .. t·stride + kernel, inside the
                // source (t < frames); `w` is the group's k × cg_out matrix; the task writes its
                // own columns g·cg_out.. of item b's frames × c_out rows, which nothing else
                // touches meanwhile.
                unsafe {
                    mm(
                        t_out,
                        co,
                        k,
                        y.at(b * t_out * n + g * co),
                        n,
                        a,
                        w,
                        1.0,
                        bias.is_some(),
                        self.par(threaded, t_out, co, k),
                    )
                };
            });
        };
        match bias {
            Some(bias) => {
                let rows = (crate::graph::BLOCK / n.max(1)).max(1);
                let mut y = par_build(len, rows * n, None, |_, c| {
                    c.chunks_exact_mut(n).for_each(|r| r.copy_from_slice(bias));
                });
                fill(y.as_mut_ptr());
                y
            }
            // SAFETY: the tasks cover every item and group, each writing all frames × cg_out
            // values of its columns (k = kernel · cg_in > 0).
            None => unsafe { crate::graph::written_by(len, fill) },
        }
    }

    /// The weight's gradient as group matrices ([`Conv::weight_matrices`]'s layout): per group,
    /// `Σ_items fieldsᵀ · dY`.
    fn weight_grad(&self, x: &[f32], gy: &[f32]) -> Vec<f32> {
        let (ci, co) = self.group_sizes();
        let (t_out, q) = (self.t_out(), self.kernel * ci);
        // SAFETY: each group's matrix is written in full by its first item's product (k =
        // frames > 0: `conv1d` checks that the input covers the kernel), then added to.
        unsafe {
            crate::graph::written_by(self.groups * self.group_len(), |dw| {
                let dw = Shared(dw);
                let group = |g: usize, threaded: bool| {
                    for b in 0..self.batch {
                        let src = self.source(x, b, g);
                        // fieldsᵀ: element (q, t) at source value t·stride·cg_in + q.
                        let a = View { ptr: src.as_ptr(), rs: 1, cs: (self.stride * ci) as isize };
                        let d = View::rows(gy, b * t_out * self.c_out + g * co, self.c_out);
                        // SAFETY: `a` covers the same fields as the forward pass, `d` item b's
                        // frames × cg_out gradient of the group; the group's matrix is this
                        // task's alone.
                        mm(
                            q,
                            co,
                            t_out,
                            dw.at(g * self.group_len()),
                            co,
                            a,
                            d,
                            1.0,
                            b > 0,
                            self.par(threaded, q, co, t_out),
                        );
                    }
                };
                if self.groups == 1 {
                    group(0, true);
                } else {
                    (0..self.groups).into_par_iter().for_each(|g| group(g, false));
                }
            })
        }
    }

    /// The input's gradient, `[batch, time, c_in]`.
    fn input_grad(&self, wg: &[f32], gy: &[f32]) -> Vec<f32> {
        let (ci, co) = self.group_sizes();
        let (t_out, rows) = (self.t_out(), self.source_rows());
        let len = self.batch * self.t_in * self.c_in;
        // The source's gradient (`rows × cg_in`, rows `row_stride` apart) of item b's group g.
        let source_grad = |ds: Shared, row_stride: usize, b: usize, g: usize, threaded: bool| {
            let d = View::rows(gy, b * t_out * self.c_out + g * co, self.c_out);
            let overwrite = self.kernel >= self.stride;
            let zero_rows = |from: usize| {
                for r in from..rows {
                    // SAFETY: row r of the source's gradient, `cg_in` values.
                    unsafe { std::ptr::write_bytes(ds.at(r * row_stride), 0, ci) };
                }
            };
            if !overwrite {
                zero_rows(0);
            }
            for j in 0..self.kernel {
                if overwrite && j == self.stride {
                    // Rows past the last tap j < stride wrote, before the taps that add.
                    zero_rows(t_out * self.stride);
                }
                // W_jᵀ: element (o, c) at the group matrix's row j·cg_in + c, column o.
                let w = View { ptr: wg[g * self.group_len() + j * ci * co..].as_ptr(), rs: 1, cs: co as isize };
                // SAFETY: rows t·stride + j (t < frames) of the source, inside it; with `kernel ≥
                // stride` the taps j < stride write every row below frames·stride once.
                unsafe {
                    mm(
                        t_out,
                        ci,
                        co,
                        ds.at(j * row_stride),
                        self.stride * row_stride,
                        d,
                        w,
                        1.0,
                        !overwrite || j >= self.stride,
                        self.par(threaded, t_out, ci, co),
                    )
                };
            }
            if overwrite && self.kernel == self.stride {
                zero_rows(t_out * self.stride);
            }
        };
        // SAFETY: every item's rows are written: directly (one group, no padding: the source is
        // the item), or each group's columns copied from a source gradient written in full.
        unsafe {
            crate::graph::written_by(len, |dx| {
                let dx = Shared(dx);
                self.for_each_source(|b, g, threaded| {
                    let item = b * self.t_in * self.c_in;
                    if self.direct() {
                        source_grad(Shared(dx.at(item)), self.c_in, b, g, threaded);
                        return;
                    }
                    let mut ds = vec![0.0f32; rows * ci];
                    source_grad(Shared(ds.as_mut_ptr()), ci, b, g, threaded);
                    for t in 0..self.t_in {
                        let src = &ds[(t + self.padding) * ci..][..ci];
                        // SAFETY: item b's frame t, the group's own columns.
                        std::ptr::copy_nonoverlapping(src.as_ptr(), dx.at(item + t * self.c_in + g * ci), ci);
                    }
                });
            })
        }
    }
}

/// What the backward pass reads: the input (before the activation, with one) and the weight's
/// group matrices.
#[derive(Debug, Clone)]
struct Saved {
    x: FlexTensor,
    wg: Arc<Vec<f32>>,
}

impl<const N: usize> GraphOp<N> for Conv {
    fn run<C: CheckpointStrategy>(self, inputs: [GraphTensor; N]) -> GraphTensor {
        let x = contiguous(inputs[0].primitive());
        let w = contiguous(inputs[1].primitive());
        let b = (N == 3).then(|| contiguous(inputs[2].primitive()));
        let wg = self.weight_matrices(values(&w));
        // With an activation, its values exist only for this product.
        let activated = self.act.map(|act| act.apply(values(&x)));
        let input = activated.as_deref().unwrap_or(values(&x));
        let y = tensor(self.forward(input, &wg, b.as_ref().map(values)), self.output_dims());
        drop(activated);
        match self.prepare::<C>(inputs.each_ref().map(|t| t.node())).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(Saved { x, wg: Arc::new(wg) }, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}

impl<const N: usize> Backward<Flex, N> for Conv {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = contiguous(&grads.consume::<Flex>(&ops.node));
        let gy = values(&g);
        let Saved { x, wg } = ops.state;
        let xv = values(&x);
        if let Some(Some(node)) = ops.parents.get(2) {
            let n = self.c_out;
            grads.register::<Flex>(node.id, tensor(crate::column_sums(gy, n), vec![1, 1, n]));
        }
        if let Some(node) = &ops.parents[1] {
            // With an activation, its values again, only for this product.
            let activated = self.act.map(|act| act.apply(xv));
            let input = activated.as_deref().unwrap_or(xv);
            let dw = self.weight_from_matrices(&self.weight_grad(input, gy));
            let (ci, _) = self.group_sizes();
            grads.register::<Flex>(node.id, tensor(dw, vec![self.c_out, ci, self.kernel]));
        }
        if let Some(node) = &ops.parents[0] {
            let mut dx = self.input_grad(&wg, gy);
            if let Some(act) = self.act {
                act.chain(&mut dx, xv);
            }
            grads.register::<Flex>(node.id, tensor(dx, vec![self.batch, self.t_in, self.c_in]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_outputs_close, vals};
    use burn::tensor::Distribution;
    use burn::tensor::module::conv1d as burn_conv1d;
    use burn::tensor::ops::ConvOptions;

    /// Value and the gradients of x and bias against burn's channels-first `conv1d`, the
    /// weight's against its definition summed in f64 (burn 0.22.1's grouped weight gradient is
    /// wrong where the stride exceeds the kernel: it keeps the first taps of a longer result),
    /// for the strides, kernels, paddings and groups wav2vec2 uses (its CNN: kernel ≥ stride and
    /// the first layer's single channel; its positional convolution: grouped, padded, an even
    /// kernel) and a stride above the kernel; both checkpointing strategies and off the graph.
    #[test]
    fn equals_burns_conv1d() {
        // (batch, time, c_in, c_out, kernel, stride, padding, groups, bias)
        let cases = [
            (2, 57, 1, 24, 10, 5, 0, 1, true),
            (2, 40, 20, 24, 3, 2, 0, 1, false),
            (1, 33, 20, 18, 2, 2, 0, 1, true),
            (2, 30, 24, 24, 8, 1, 4, 4, true),
            (2, 29, 6, 10, 2, 3, 1, 2, false),
            // Large enough for threaded products (split into column blocks).
            (2, 400, 64, 160, 3, 2, 0, 1, true),
        ];
        let devices = [Device::flex(), Device::flex().autodiff(), Device::flex().autodiff().gradient_checkpointing()];
        for (batch, time, c_in, c_out, kernel, stride, padding, groups, with_bias) in cases {
            for device in &devices {
                let w0 = Tensor::<3>::random([c_out, c_in / groups, kernel], Distribution::Normal(0.0, 0.3), device);
                let b0 = Tensor::<1>::random([c_out], Distribution::Normal(0.0, 1.0), device);
                let x0 = Tensor::<3>::random([batch, time, c_in], Distribution::Normal(0.0, 1.0), device);
                let frames = (time + 2 * padding - kernel) / stride + 1;
                let r = Tensor::<3>::random([batch, frames, c_out], Distribution::Normal(0.0, 1.0), device);
                let case = format!("{:?}", (batch, time, c_in, c_out, kernel, stride, padding, groups, with_bias));
                let run = |ours: bool| {
                    let track = |t: Tensor<3>| if device.is_autodiff() { t.require_grad() } else { t };
                    let (x, w) = (track(x0.clone()), track(w0.clone()));
                    let b =
                        with_bias.then(|| if device.is_autodiff() { b0.clone().require_grad() } else { b0.clone() });
                    let y = if ours {
                        conv1d(x.clone(), w.clone(), b.clone(), stride, padding, groups)
                    } else {
                        let options = ConvOptions::new([stride], [padding], [1], groups);
                        burn_conv1d(x.clone().swap_dims(1, 2), w.clone(), b.clone(), options).swap_dims(1, 2)
                    };
                    let mut out = vec![vals(y.clone())];
                    if device.is_autodiff() {
                        let grads = (y * r.clone()).sum().backward();
                        out.push(vals(x.grad(&grads).unwrap()));
                        out.push(if ours {
                            vals(w.grad(&grads).unwrap())
                        } else {
                            let (xv, rv) = (vals(x0.clone()), vals(r.clone()));
                            weight_grad_by_definition(
                                &xv,
                                &rv,
                                [batch, time, c_in, c_out, kernel, stride, padding, groups],
                            )
                        });
                        if let Some(b) = b {
                            out.push(vals(b.grad(&grads).unwrap()));
                        }
                    }
                    out
                };
                assert_outputs_close(&case, &["value", "dx", "dw", "db"], &run(true), &run(false), 2e-5);
            }
        }
    }

    /// `conv1d(f(z))` as one operation against the activation and the convolution composed
    /// (`rowwise::activation`, then [`conv1d`]): value and the gradients of z, the weight and the
    /// bias, for a CNN layer's shape and a grouped padded one, both checkpointing strategies, and
    /// off the graph.
    #[test]
    fn conv_after_an_activation_equals_the_composition() {
        use crate::fastmath::{gelu, gelu_with_slope};
        // (batch, time, c_in, c_out, kernel, stride, padding, groups)
        for (batch, time, c_in, c_out, kernel, stride, padding, groups) in
            [(2, 40, 20, 24, 3, 2, 0, 1), (2, 30, 24, 24, 8, 1, 4, 4)]
        {
            for device in
                [Device::flex(), Device::flex().autodiff(), Device::flex().autodiff().gradient_checkpointing()]
            {
                let w0 = Tensor::<3>::random([c_out, c_in / groups, kernel], Distribution::Normal(0.0, 0.3), &device);
                let b0 = Tensor::<1>::random([c_out], Distribution::Normal(0.0, 1.0), &device);
                let z0 = Tensor::<3>::random([batch, time, c_in], Distribution::Normal(0.0, 1.5), &device);
                let frames = (time + 2 * padding - kernel) / stride + 1;
                let r = Tensor::<3>::random([batch, frames, c_out], Distribution::Normal(0.0, 1.0), &device);
                let run = |ours: bool| {
                    let track = |t: Tensor<3>| if device.is_autodiff() { t.require_grad() } else { t };
                    let (z, w) = (track(z0.clone()), track(w0.clone()));
                    let b = if device.is_autodiff() { b0.clone().require_grad() } else { b0.clone() };
                    let y = if ours {
                        conv1d_after(
                            z.clone(),
                            (gelu, gelu_with_slope),
                            w.clone(),
                            Some(b.clone()),
                            stride,
                            padding,
                            groups,
                        )
                    } else {
                        let a = if device.is_autodiff() {
                            crate::rowwise::activation(z.clone(), gelu, gelu_with_slope)
                        } else {
                            let mut v = vals(z.clone());
                            gelu(&mut v);
                            Tensor::from_data(burn::tensor::TensorData::new(v, [batch, time, c_in]), &device)
                        };
                        conv1d(a, w.clone(), Some(b.clone()), stride, padding, groups)
                    };
                    let mut out = vec![vals(y.clone())];
                    if device.is_autodiff() {
                        let grads = (y * r.clone()).sum().backward();
                        out.extend([z.grad(&grads), w.grad(&grads)].map(|g| vals(g.unwrap())));
                        out.push(vals(b.grad(&grads).unwrap()));
                    }
                    out
                };
                let (got, want) = (run(true), run(false));
                assert_eq!(got.len(), if device.is_autodiff() { 4 } else { 1 });
                let case = format!("{:?}", (time, kernel, groups));
                assert_outputs_close(&case, &["value", "dz", "dw", "db"], &got, &want, 2e-6);
            }
        }
    }

    /// An input that does not require a gradient (the waveform into the first layer) gets none,
    /// while the weight still does.
    #[test]
    fn untracked_input_gets_no_gradient() {
        let device = Device::flex().autodiff();
        let x = Tensor::<3>::random([1, 30, 1], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<3>::random([8, 1, 10], Distribution::Normal(0.0, 0.3), &device).require_grad();
        let y = conv1d(x.clone(), w.clone(), None, 5, 0, 1);
        let grads = y.sum().backward();
        assert!(x.grad(&grads).is_none());
        let dw = vals(w.grad(&grads).unwrap());
        // Σ_t x[5t + j] for every output channel, 5 frames.
        let xv = vals(x);
        for o in 0..8 {
            for j in 0..10 {
                let want: f32 = (0..5).map(|t| xv[5 * t + j]).sum();
                assert!((dw[o * 10 + j] - want).abs() < 1e-5, "dw[{o}, 0, {j}] {} vs {want}", dw[o * 10 + j]);
            }
        }
    }

    /// `dW[o, c, j] = Σ_b Σ_t x[b, t·stride + j − padding, group(o)·cg_in + c] · r[b, t, o]` (f64).
    fn weight_grad_by_definition(x: &[f32], r: &[f32], sizes: [usize; 8]) -> Vec<f32> {
        let [batch, time, c_in, c_out, kernel, stride, padding, groups] = sizes;
        let (ci, co) = (c_in / groups, c_out / groups);
        let frames = (time + 2 * padding - kernel) / stride + 1;
        let mut dw = vec![0.0f32; c_out * ci * kernel];
        for o in 0..c_out {
            for c in 0..ci {
                for j in 0..kernel {
                    let mut s = 0.0f64;
                    for b in 0..batch {
                        for t in 0..frames {
                            let Some(src) = (t * stride + j).checked_sub(padding).filter(|&s| s < time) else {
                                continue;
                            };
                            s += x[(b * time + src) * c_in + (o / co) * ci + c] as f64
                                * r[(b * frames + t) * c_out + o] as f64;
                        }
                    }
                    dw[(o * ci + c) * kernel + j] = s as f32;
                }
            }
        }
        dw
    }
}
