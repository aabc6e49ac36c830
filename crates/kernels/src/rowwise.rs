//! Activations, softmax and layer norm as single operations on burn's CPU autodiff graph, each
//! computed in parallel over blocks of rows with a fused backward pass.
//!
//! burn-flex runs elementwise operations on one thread, and a composed layer norm or softmax is
//! a chain of them forward and backward (means, differences, products, broadcasts): on two cores
//! the other core waits through each. Here the forward pass is one parallel sweep that also
//! keeps what the backward pass needs (an activation's slope, softmax's probabilities, layer
//! norm's per-row mean and inverse deviation), and the backward pass is one more.

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
    BLOCK, GraphOp, GraphTensor, contiguous, dims, on_graph, par_build, par_build_pair, sum_by, tensor, values,
};

/// About [`BLOCK`] values per task, in whole rows.
fn block(row: usize) -> usize {
    let row = row.max(1);
    row * BLOCK.div_ceil(row)
}

/// A function that turns values into `f(x)` and writes `f'(x)` into its second argument
/// (`crate::fastmath::gelu_with_slope`, ...).
pub type WithSlope = fn(&mut [f32], &mut [f32]);

/// The same function without the slope (`crate::fastmath::gelu`, ...).
pub type Plain = fn(&mut [f32]);

/// An activation fused into the input of the operation after it ([`crate::dense::linear_after`],
/// [`crate::conv::conv1d_after`]): that operation keeps only the activation's input and makes
/// its values and slopes again in the backward pass.
#[derive(Clone, Copy)]
pub(crate) struct Act(pub Plain, pub WithSlope);

impl std::fmt::Debug for Act {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Act")
    }
}

impl Act {
    /// `f(z)`, in parallel. (The same values as `with_slope` gives.)
    pub fn apply(self, z: &[f32]) -> Vec<f32> {
        par_build(z.len(), BLOCK, Some(z), |_, v| (self.0)(v))
    }

    /// `d ← d ⊙ f'(z)`, a gradient through the activation: the slopes made again block by block
    /// (no tensor of them).
    pub fn chain(self, d: &mut [f32], z: &[f32]) {
        assert_eq!(d.len(), z.len(), "a gradient of the activation's input size");
        d.par_chunks_mut(BLOCK).zip(z.par_chunks(BLOCK)).for_each_init(
            || (vec![0.0f32; BLOCK], vec![0.0f32; BLOCK]),
            |(v, slope), (d, z)| {
                let (v, slope) = (&mut v[..z.len()], &mut slope[..z.len()]);
                v.copy_from_slice(z);
                (self.1)(v, slope);
                d.iter_mut().zip(slope.iter()).for_each(|(d, s)| *d *= s);
            },
        );
    }
}

/// `f(x)` on the autodiff graph, its backward pass `dY ⊙ f'(x)` (the slope kept from the forward
/// pass); `f` alone (no slope) where `x` is not tracked. `x` must be a float32 tensor on burn's
/// CPU autodiff backend.
pub fn activation<const D: usize>(x: Tensor<D>, f: Plain, with_slope: WithSlope) -> Tensor<D> {
    assert!(crate::supports(&x) && x.device().is_autodiff(), "a float32 tensor on the CPU's autodiff graph");
    on_graph(Activation(f, with_slope), [x])
}

#[derive(Clone, Copy)]
struct Activation(Plain, WithSlope);

impl std::fmt::Debug for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Activation")
    }
}

impl Backward<Flex, 1> for Activation {
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = contiguous(&grads.consume::<Flex>(&ops.node));
        let [Some(parent)] = ops.parents else { return };
        let slope = values(&ops.state);
        let dx = par_build(slope.len(), BLOCK, Some(values(&g)), |i, d| {
            d.iter_mut().zip(&slope[i * BLOCK..]).for_each(|(d, s)| *d *= s)
        });
        grads.register::<Flex>(parent.id, tensor(dx, dims(&g)));
    }
}

impl GraphOp<1> for Activation {
    fn run<C: CheckpointStrategy>(self, [x]: [GraphTensor; 1]) -> GraphTensor {
        let input = contiguous(x.primitive());
        let (shape, v) = (dims(&input), values(&input));
        match self.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (y, slope) = par_build_pair(v, BLOCK, |y, d| (self.1)(y, d));
                prep.finish(tensor(slope, shape.clone()), tensor(y, shape))
            }
            OpsKind::UnTracked(prep) => {
                let y = par_build(v.len(), BLOCK, Some(v), |_, y| (self.0)(y));
                prep.finish(tensor(y, shape))
            }
        }
    }
}

/// Softmax over the last dimension on the autodiff graph; its backward pass
/// `P ⊙ (dP − rowsum(dP ⊙ P))` from the kept probabilities `P`. `x` must be a float32 tensor on
/// burn's CPU autodiff backend.
pub fn softmax_last<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    assert!(crate::supports(&x) && x.device().is_autodiff(), "a float32 tensor on the CPU's autodiff graph");
    let row = x.dims()[D - 1];
    on_graph(Softmax(row), [x])
}

#[derive(Debug, Clone, Copy)]
struct Softmax(usize);

impl Backward<Flex, 1> for Softmax {
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = contiguous(&grads.consume::<Flex>(&ops.node));
        let [Some(parent)] = ops.parents else { return };
        let row = self.0.max(1);
        let p = values(&ops.state);
        let b = block(row);
        let dx = par_build(p.len(), b, Some(values(&g)), |i, d| {
            for (d, p) in d.chunks_exact_mut(row).zip(p[i * b..].chunks_exact(row)) {
                let dot = sum_by(d, p, |a, b| a * b);
                d.iter_mut().zip(p).for_each(|(d, p)| *d = p * (*d - dot));
            }
        });
        grads.register::<Flex>(parent.id, tensor(dx, dims(&g)));
    }
}

impl GraphOp<1> for Softmax {
    fn run<C: CheckpointStrategy>(self, [x]: [GraphTensor; 1]) -> GraphTensor {
        let input = contiguous(x.primitive());
        let shape = dims(&input);
        let row = self.0;
        let p = par_build(input.layout().num_elements(), block(row), Some(values(&input)), |_, v| {
            crate::fastmath::softmax_rows(v, row)
        });
        let p = tensor(p, shape);
        match self.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(p.clone(), p),
            OpsKind::UnTracked(prep) => prep.finish(p),
        }
    }
}

/// Layer norm over the last dimension, `(x − mean) / √(var + eps) · weight + bias` (biased
/// variance, as torch's `layer_norm`), as one operation on burn's CPU autodiff graph with
/// gradients for `x`, `weight` and `bias` (those tracked).
pub fn layer_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, bias: Tensor<1>, eps: f64) -> Tensor<D> {
    assert!(crate::supports(&x) && x.device().is_autodiff(), "a float32 tensor on the CPU's autodiff graph");
    let row = x.dims()[D - 1];
    assert!(weight.dims() == [row] && bias.dims() == [row], "layer norm parameters of {row} values");
    let rows = x.shape().num_elements() / row.max(1);
    let dims = x.dims();
    let x2: Tensor<2> = x.reshape([rows, row]);
    let w2: Tensor<2> = weight.reshape([1, row]);
    let b2: Tensor<2> = bias.reshape([1, row]);
    let y: Tensor<2> = on_graph(LayerNorm { row, eps: eps as f32 }, [x2, w2, b2]);
    y.reshape(dims)
}

#[derive(Debug, Clone, Copy)]
struct LayerNorm {
    row: usize,
    eps: f32,
}

/// What layer norm's backward pass reads: the input, the weight, and per row the mean and the
/// inverse standard deviation.
#[derive(Debug, Clone)]
struct NormSaved {
    x: FlexTensor,
    weight: FlexTensor,
    stats: Arc<Vec<(f32, f32)>>,
}

impl Backward<Flex, 3> for LayerNorm {
    type State = NormSaved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = contiguous(&grads.consume::<Flex>(&ops.node));
        let s = ops.state;
        let row = self.row.max(1);
        let (x, w, gv) = (values(&s.x), values(&s.weight), values(&g));
        let [px, pw, pb] = ops.parents;
        let params = pw.is_some() || pb.is_some();
        let rows_per_task = block(row) / row;
        let rows = x.len() / row;
        // Per task (a block of rows): dweight's and dbias's partial sums, and its rows of dx.
        let param_sums = |task: usize| -> (Vec<f32>, Vec<f32>) {
            let (mut dw, mut db) = (vec![0.0f32; row], vec![0.0f32; row]);
            for r in task * rows_per_task..((task + 1) * rows_per_task).min(rows) {
                let (xr, gr) = (&x[r * row..][..row], &gv[r * row..][..row]);
                let (mean, inv) = s.stats[r];
                for (((dw, db), x), g) in dw.iter_mut().zip(db.iter_mut()).zip(xr).zip(gr) {
                    *dw += g * (x - mean) * inv;
                    *db += g;
                }
            }
            (dw, db)
        };
        let sums: Vec<(Vec<f32>, Vec<f32>)> = if params {
            (0..rows.div_ceil(rows_per_task.max(1))).into_par_iter().map(param_sums).collect()
        } else {
            Vec::new()
        };
        if let Some(node) = px {
            let dx = par_build(x.len(), rows_per_task * row, None, |task, d| {
                let mut gw = vec![0.0f32; row];
                for (r, d) in d.chunks_exact_mut(row).enumerate() {
                    let r = task * rows_per_task + r;
                    let (xr, gr) = (&x[r * row..][..row], &gv[r * row..][..row]);
                    let (mean, inv) = s.stats[r];
                    // dx = inv · (g w − mean(g w) − x̂ · mean(g w x̂)), x̂ = (x − mean) · inv
                    gw.iter_mut().zip(gr).zip(w).for_each(|((a, g), w)| *a = g * w);
                    let a = sum_by(&gw, &gw, |v, _| v) / row as f32;
                    let b = sum_by(&gw, xr, |v, x| v * (x - mean)) * inv / row as f32;
                    for ((d, gw), x) in d.iter_mut().zip(&gw).zip(xr) {
                        *d = inv * (gw - a - (x - mean) * inv * b);
                    }
                }
            });
            grads.register::<Flex>(node.id, tensor(dx, dims(&s.x)));
        }
        if params {
            let (mut dw, mut db) = (vec![0.0f32; row], vec![0.0f32; row]);
            for (w, b) in sums {
                dw.iter_mut().zip(w).for_each(|(a, b)| *a += b);
                db.iter_mut().zip(b).for_each(|(a, b)| *a += b);
            }
            if let Some(node) = pw {
                grads.register::<Flex>(node.id, tensor(dw, vec![1, row]));
            }
            if let Some(node) = pb {
                grads.register::<Flex>(node.id, tensor(db, vec![1, row]));
            }
        }
    }
}

impl GraphOp<3> for LayerNorm {
    fn run<C: CheckpointStrategy>(self, inputs: [GraphTensor; 3]) -> GraphTensor {
        let [x, w, b] = inputs.each_ref().map(|t| contiguous(t.primitive()));
        let row = self.row.max(1);
        let (xv, wv, bv) = (values(&x), values(&w), values(&b));
        let rows_per_task = block(row) / row;
        let rows = xv.len() / row;
        let stats: Vec<(f32, f32)> = (0..rows)
            .into_par_iter()
            .with_min_len(rows_per_task.max(1))
            .map(|r| {
                let xr = &xv[r * row..][..row];
                let mean = sum_by(xr, xr, |x, _| x) / row as f32;
                let var = sum_by(xr, xr, |x, _| (x - mean) * (x - mean)) / row as f32;
                (mean, 1.0 / (var + self.eps).sqrt())
            })
            .collect();
        let y = par_build(xv.len(), rows_per_task * row, None, |task, y| {
            for (r, y) in y.chunks_exact_mut(row).enumerate() {
                let r = task * rows_per_task + r;
                let (mean, inv) = stats[r];
                for (((y, x), w), b) in y.iter_mut().zip(&xv[r * row..][..row]).zip(wv).zip(bv) {
                    *y = (x - mean) * inv * w + b;
                }
            }
        });
        let y = tensor(y, dims(&x));
        match self.prepare::<C>(inputs.each_ref().map(|t| t.node())).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(NormSaved { x, weight: w, stats: Arc::new(stats) }, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_diff, vals};
    use burn::tensor::{Distribution, activation as act};

    fn devices() -> [Device; 2] {
        [Device::flex().autodiff(), Device::flex().autodiff().gradient_checkpointing()]
    }

    /// Value and input gradient of `f` at `x` under the upstream gradient `r`.
    fn value_and_grad(f: impl Fn(Tensor<3>) -> Tensor<3>, x: &Tensor<3>, r: &Tensor<3>) -> (Vec<f32>, Vec<f32>) {
        let x = x.clone().detach().require_grad();
        let y = f(x.clone());
        let grads = (y.clone() * r.clone()).sum().backward();
        (vals(y), vals(x.grad(&grads).expect("a gradient")))
    }

    #[test]
    fn activation_equals_burns_gelu() {
        for device in devices() {
            // More values than one task's block, so that several tasks run.
            let x = Tensor::<3>::random([3, 70, 130], Distribution::Normal(0.0, 2.0), &device);
            let r = Tensor::<3>::random([3, 70, 130], Distribution::Normal(0.0, 1.0), &device);
            let (y, g) =
                value_and_grad(|x| activation(x, crate::fastmath::gelu, crate::fastmath::gelu_with_slope), &x, &r);
            let (y_ref, g_ref) = value_and_grad(act::gelu, &x, &r);
            assert!(max_diff(&y, &y_ref) < 1e-5, "{}", max_diff(&y, &y_ref));
            assert!(max_diff(&g, &g_ref) < 1e-5, "{}", max_diff(&g, &g_ref));
            let untracked = activation(x.clone().detach(), crate::fastmath::gelu, crate::fastmath::gelu_with_slope);
            assert!(!untracked.is_require_grad());
            let mut plain = vals(x.clone());
            crate::fastmath::gelu(&mut plain);
            assert_eq!(vals(untracked), plain, "untracked: the plain function's values");
        }
    }

    /// Values and input gradients equal burn's softmax to f32 rounding: the gradient's row sums
    /// `Σ y·r` (130 terms, summed in another order) differ by up to ~2e-6 on unseeded random
    /// inputs (1.0e-6 in release and 1.4e-6 in the dev profile over 300 draws, 1.9e-6 once in CI).
    #[test]
    fn softmax_equals_burns() {
        for device in devices() {
            let x = Tensor::<3>::random([3, 70, 130], Distribution::Normal(0.0, 3.0), &device);
            let r = Tensor::<3>::random([3, 70, 130], Distribution::Normal(0.0, 1.0), &device);
            let (y, g) = value_and_grad(softmax_last, &x, &r);
            let (y_ref, g_ref) = value_and_grad(|x| act::softmax(x, 2), &x, &r);
            assert!(max_diff(&y, &y_ref) < 1e-6, "{}", max_diff(&y, &y_ref));
            crate::testing::assert_close("softmax's input gradient", &g, &g_ref, 4e-6);
        }
    }

    /// Value and the gradients of input, weight and bias equal burn's `layer_norm`, with rows
    /// spread over several tasks (a partial last one included).
    #[test]
    fn layer_norm_equals_burns() {
        for device in devices() {
            let x = Tensor::<3>::random([3, 57, 130], Distribution::Normal(1.0, 2.0), &device);
            let r = Tensor::<3>::random([3, 57, 130], Distribution::Normal(0.0, 1.0), &device);
            let w = Tensor::<1>::random([130], Distribution::Normal(1.0, 0.5), &device);
            let b = Tensor::<1>::random([130], Distribution::Normal(0.0, 0.5), &device);
            let run = |fused: bool| {
                let (x, w, b) = (x.clone().require_grad(), w.clone().require_grad(), b.clone().require_grad());
                let y = if fused {
                    layer_norm(x.clone(), w.clone(), b.clone(), 1e-5)
                } else {
                    burn::tensor::module::layer_norm(x.clone(), w.clone(), Some(b.clone()), 1e-5)
                };
                let grads = (y.clone() * r.clone()).sum().backward();
                [vals(y), vals(x.grad(&grads).unwrap()), vals(w.grad(&grads).unwrap()), vals(b.grad(&grads).unwrap())]
            };
            let (got, want) = (run(true), run(false));
            for (what, (a, b)) in ["value", "dx", "dweight", "dbias"].iter().zip(got.iter().zip(&want)) {
                let diff = max_diff(a, b);
                let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                assert!(diff <= 2e-5 * scale.max(1.0), "{what}: {diff} (scale {scale})");
            }
            // Frozen parameters: only x gets a gradient, the same one.
            let xg = x.clone().require_grad();
            let y = layer_norm(xg.clone(), w.clone(), b.clone(), 1e-5);
            let grads = (y * r.clone()).sum().backward();
            assert!(max_diff(&vals(xg.grad(&grads).unwrap()), &want[1]) < 2e-5);
        }
    }
}
