//! Group norm with one group per channel (`nn.GroupNorm(C, C)`, wav2vec2's first CNN layer:
//! each channel normalised over time, per item) on channels-last tensors, as one operation on
//! burn's CPU autodiff graph with its own backward pass.
//!
//! burn composes it from a variance, a mean, a difference, a quotient, a product and a sum, each
//! one pass on the calling thread that the backward pass repeats with broadcasts, and keeps most
//! of their results for it: for 10 s of audio that is 32,000 × 512 values per tensor. Here the
//! forward pass is two parallel sweeps (per-channel sums, then the output) keeping only the input
//! and each channel's mean and inverse deviation, and the backward pass two more.

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use rayon::prelude::*;

use crate::graph::{BLOCK, GraphOp, GraphTensor, contiguous, on_graph, par_build, tensor, values};

/// `(x − mean) / √(var + eps) · weight + bias` with mean and (biased) variance per item and
/// channel over time, for `x` `[batch, time, channels]` on burn's CPU autodiff graph; gradients
/// for `x`, `weight` and `bias` (those tracked).
///
/// # Panics
/// Off the CPU's autodiff graph, or where the parameters are not one value per channel.
pub fn channel_norm(x: Tensor<3>, weight: Tensor<1>, bias: Tensor<1>, eps: f64) -> Tensor<3> {
    assert!(crate::supports(&x) && x.device().is_autodiff(), "a float32 tensor on the CPU's autodiff graph");
    let [batch, time, c] = x.dims();
    assert!(weight.dims() == [c] && bias.dims() == [c], "group norm parameters of {c} values");
    let op = ChannelNorm { batch, time, c, eps: eps as f32 };
    on_graph(op, [x, weight.reshape([1, 1, c]), bias.reshape([1, 1, c])])
}

#[derive(Debug, Clone, Copy)]
struct ChannelNorm {
    batch: usize,
    time: usize,
    c: usize,
    eps: f32,
}

/// What the backward pass reads: the input, the weight, and per item and channel the mean and
/// the inverse deviation.
#[derive(Debug, Clone)]
struct Saved {
    x: FlexTensor,
    weight: FlexTensor,
    stats: Arc<Vec<(f32, f32)>>,
}

impl ChannelNorm {
    /// Rows (frames) per parallel task.
    fn rows_per_task(&self) -> usize {
        (BLOCK / self.c.max(1)).max(1)
    }

    /// Per item, `[Σ_t f(t, c) for each channel]`, summed in f64 over blocks of frames in
    /// parallel and the blocks added in order, so that the result does not depend on the pool's
    /// scheduling (`f` writes its terms for one frame into the channel accumulators).
    fn channel_sums<const K: usize>(
        &self,
        f: impl Fn(usize, usize, &mut [[f64; K]]) + Sync + Send,
    ) -> Vec<Vec<[f64; K]>> {
        let rows = self.rows_per_task();
        (0..self.batch)
            .map(|b| {
                (0..self.time.div_ceil(rows))
                    .into_par_iter()
                    .map(|task| {
                        let mut acc = vec![[0.0f64; K]; self.c];
                        for t in task * rows..((task + 1) * rows).min(self.time) {
                            f(b, t, &mut acc);
                        }
                        acc
                    })
                    .collect::<Vec<_>>()
                    .into_iter()
                    .fold(vec![[0.0f64; K]; self.c], |mut a, b| {
                        a.iter_mut().zip(&b).for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
                        a
                    })
            })
            .collect()
    }
}

impl GraphOp<3> for ChannelNorm {
    fn run<C: CheckpointStrategy>(self, inputs: [GraphTensor; 3]) -> GraphTensor {
        let [x, w, b] = inputs.each_ref().map(|t| contiguous(t.primitive()));
        let (xv, wv, bv) = (values(&x), values(&w), values(&b));
        let (c, n) = (self.c, self.time as f64);
        let sums = self.channel_sums::<2>(|b, t, acc| {
            let row = &xv[(b * self.time + t) * c..][..c];
            acc.iter_mut().zip(row).for_each(|(a, &v)| {
                a[0] += v as f64;
                a[1] += v as f64 * v as f64;
            });
        });
        let stats: Vec<(f32, f32)> = sums
            .iter()
            .flat_map(|item| {
                item.iter().map(|[s, sq]| {
                    let mean = s / n;
                    let var = (sq / n - mean * mean).max(0.0);
                    (mean as f32, (1.0 / (var + self.eps as f64).sqrt()) as f32)
                })
            })
            .collect();
        let rows = self.rows_per_task();
        let y = par_build(xv.len(), rows * c, None, |task, y| {
            for (i, y) in y.chunks_exact_mut(c).enumerate() {
                let r = task * rows + i;
                let s = &stats[(r / self.time.max(1)) * c..][..c];
                for ((((y, x), (mean, inv)), w), b) in y.iter_mut().zip(&xv[r * c..][..c]).zip(s).zip(wv).zip(bv) {
                    *y = (x - mean) * inv * w + b;
                }
            }
        });
        let y = tensor(y, vec![self.batch, self.time, c]);
        match self.prepare::<C>(inputs.each_ref().map(|t| t.node())).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(Saved { x, weight: w, stats: Arc::new(stats) }, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}

impl Backward<Flex, 3> for ChannelNorm {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = contiguous(&grads.consume::<Flex>(&ops.node));
        let s = ops.state;
        let (x, w, gv) = (values(&s.x), values(&s.weight), values(&g));
        let c = self.c;
        // Per item and channel: Σ_t g and Σ_t g · x̂.
        let sums = self.channel_sums::<2>(|b, t, acc| {
            let at = (b * self.time + t) * c;
            let st = &s.stats[b * c..][..c];
            for (((a, &g), &x), &(mean, inv)) in acc.iter_mut().zip(&gv[at..][..c]).zip(&x[at..][..c]).zip(st) {
                a[0] += g as f64;
                a[1] += g as f64 * ((x - mean) * inv) as f64;
            }
        });
        let [px, pw, pb] = ops.parents;
        if let Some(node) = px {
            let n = self.time as f32;
            // dx = inv · w · (g − Σg / T − x̂ · Σ(g x̂) / T)
            let means: Vec<(f32, f32)> =
                sums.iter().flat_map(|item| item.iter().map(|[sg, sgx]| (*sg as f32 / n, *sgx as f32 / n))).collect();
            let rows = self.rows_per_task();
            let dx = par_build(x.len(), rows * c, None, |task, d| {
                for (i, d) in d.chunks_exact_mut(c).enumerate() {
                    let r = task * rows + i;
                    let item = (r / self.time.max(1)) * c;
                    let (st, m) = (&s.stats[item..][..c], &means[item..][..c]);
                    let (xr, gr) = (&x[r * c..][..c], &gv[r * c..][..c]);
                    for (j, d) in d.iter_mut().enumerate() {
                        let (mean, inv) = st[j];
                        let xhat = (xr[j] - mean) * inv;
                        *d = inv * w[j] * (gr[j] - m[j].0 - xhat * m[j].1);
                    }
                }
            });
            grads.register::<Flex>(node.id, tensor(dx, vec![self.batch, self.time, c]));
        }
        let total =
            |k: usize| -> Vec<f32> { (0..c).map(|j| sums.iter().map(|item| item[j][k]).sum::<f64>() as f32).collect() };
        if let Some(node) = pw {
            grads.register::<Flex>(node.id, tensor(total(1), vec![1, 1, c]));
        }
        if let Some(node) = pb {
            grads.register::<Flex>(node.id, tensor(total(0), vec![1, 1, c]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_outputs_close, vals, with_input_grad};
    use burn::tensor::Distribution;

    /// Value and the gradients of x, weight and bias against burn's composition (as
    /// `FeatureEncoder`'s `ChannelNorm` wrote it), with channels of different means and scales,
    /// both checkpointing strategies; an untracked input gets no gradient.
    #[test]
    fn equals_burns_composition() {
        for device in [Device::flex().autodiff(), Device::flex().autodiff().gradient_checkpointing()] {
            let (batch, time, c) = (2, 300, 40);
            let offsets = Tensor::<3>::random([1, 1, c], Distribution::Uniform(-3.0, 3.0), &device);
            let scales = Tensor::<3>::random([1, 1, c], Distribution::Uniform(0.1, 4.0), &device);
            let x0 = Tensor::<3>::random([batch, time, c], Distribution::Normal(0.0, 1.0), &device) * scales + offsets;
            let w0 = Tensor::<1>::random([c], Distribution::Normal(1.0, 0.5), &device);
            let b0 = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.5), &device);
            let r = Tensor::<3>::random([batch, time, c], Distribution::Normal(0.0, 1.0), &device);
            for track_x in [true, false] {
                let run = |ours: bool| {
                    let x = if track_x { x0.clone().require_grad() } else { x0.clone() };
                    let (w, b) = (w0.clone().require_grad(), b0.clone().require_grad());
                    let y = if ours {
                        channel_norm(x.clone(), w.clone(), b.clone(), 1e-5)
                    } else {
                        let (var, mean) = x.clone().var_mean_bias(1);
                        let y = (x.clone() - mean) / (var + 1e-5).sqrt();
                        y * w.clone().reshape([1, 1, c]) + b.clone().reshape([1, 1, c])
                    };
                    let grads = (y.clone() * r.clone()).sum().backward();
                    let out = vec![vals(y), vals(w.grad(&grads).unwrap()), vals(b.grad(&grads).unwrap())];
                    with_input_grad(out, x.grad(&grads), track_x)
                };
                assert_outputs_close(
                    "channel_norm",
                    &["value", "dweight", "dbias", "dx"],
                    &run(true),
                    &run(false),
                    1e-4,
                );
            }
        }
    }
}
