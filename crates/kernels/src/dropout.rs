//! Dropout masks from a counter-based hash: whether value `i` of a tensor is kept is a function
//! of `(seed, i)` alone, so a mask is made in parallel blocks, vectorised, and made again in the
//! backward pass instead of being kept. burn-flex draws each mask value from one ChaCha stream
//! on one thread (a few percent of a LoRA training step with `lora_dropout`, while the other
//! cores wait) and the composed graph keeps the dropped-out input for the backward pass.
//!
//! A value is kept with probability `1 - p` and then scaled by `1 / (1 - p)`, as
//! `torch.nn.Dropout` and burn's `Dropout` do; the draws differ from theirs (no framework
//! shares another's random stream), not their distribution.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::prelude::*;
use rayon::prelude::*;

use crate::graph::{
    BLOCK, GraphOp, GraphTensor, contiguous, dims, flex, from_flex, on_graph, par_build, tensor, values,
};

/// `x` through the dropout `d`, for a float32 tensor on burn's CPU backend (see
/// [`crate::supports`]): on the autodiff graph one operation whose backward pass multiplies by
/// the same mask, made again from the seed (nothing kept); without autodiff, the values.
///
/// # Panics
/// Where `x` is not a float32 tensor on the CPU backend.
pub fn dropout<const D: usize>(x: Tensor<D>, d: Dropout) -> Tensor<D> {
    assert!(crate::supports(&x), "a float32 tensor on the CPU backend");
    if x.device().is_autodiff() {
        return on_graph(Masked(d), [x]);
    }
    let x = contiguous(&flex(x));
    from_flex(tensor(d.apply(values(&x)), dims(&x)))
}

#[derive(Debug, Clone, Copy)]
struct Masked(Dropout);

impl GraphOp<1> for Masked {
    fn run<C: CheckpointStrategy>(self, [x]: [GraphTensor; 1]) -> GraphTensor {
        let v = contiguous(x.primitive());
        let y = tensor(self.0.apply(values(&v)), dims(&v));
        self.prepare::<C>([x.node()]).compute_bound().stateless(y)
    }
}

impl Backward<Flex, 1> for Masked {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = contiguous(&grads.consume::<Flex>(&ops.node));
        if let [Some(parent)] = ops.parents {
            grads.register::<Flex>(parent.id, tensor(self.0.apply(values(&g)), dims(&g)));
        }
    }
}

/// One dropout draw: `p` the probability of dropping a value, `seed` the mask's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    pub p: f32,
    pub seed: u64,
}

/// Chris Wellons' `lowbias32` integer hash (a 32-bit mixer with low bias).
#[inline(always)]
fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

impl Dropout {
    /// # Panics
    /// Where `p` is not in `[0, 1)`.
    pub fn new(p: f32, seed: u64) -> Self {
        assert!((0.0..1.0).contains(&p), "a dropout probability in [0, 1), not {p}");
        Self { p, seed }
    }

    /// Draws below this 32-bit threshold drop their value.
    fn threshold(&self) -> u32 {
        (self.p as f64 * 4_294_967_296.0).round().min(u32::MAX as f64) as u32
    }

    /// The factor of a kept value, `1 / (1 - p)`.
    pub fn scale(&self) -> f32 {
        1.0 / (1.0 - self.p)
    }

    /// Whether value `i` is kept.
    #[inline(always)]
    fn keeps(&self, i: usize, threshold: u32) -> bool {
        let (lo, hi) = (self.seed as u32, (self.seed >> 32) as u32);
        // The index's high half (tensors past 2³² values) folded into the second key.
        let key = hi ^ mix((i >> 32) as u32);
        mix(mix((i as u32).wrapping_add(lo)) ^ key) >= threshold
    }

    /// `v[j] ← v[j] · scale` where value `start + j` is kept, 0 where it is dropped.
    fn apply_from(&self, start: usize, v: &mut [f32]) {
        let (t, s) = (self.threshold(), self.scale());
        for (j, x) in v.iter_mut().enumerate() {
            *x = if self.keeps(start + j, t) { *x * s } else { 0.0 };
        }
    }

    /// The mask's factors for `n` values: `1 / (1 - p)` where kept, 0 where dropped.
    pub fn mask(&self, n: usize) -> Vec<f32> {
        par_build(n, BLOCK, None, |i, c| {
            c.fill(1.0);
            self.apply_from(i * BLOCK, c);
        })
    }

    /// `x` with the mask applied, made in parallel.
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        par_build(x.len(), BLOCK, Some(x), |i, c| self.apply_from(i * BLOCK, c))
    }

    /// `acc[j] += mask[j] · v[j]` over the mask's first `acc.len()` values (the chain rule
    /// through the dropout, into a gradient that already holds other terms).
    pub fn add_masked(&self, acc: &mut [f32], v: &[f32]) {
        assert_eq!(acc.len(), v.len(), "a gradient and its masked term of one size");
        let (t, s) = (self.threshold(), self.scale());
        acc.par_chunks_mut(BLOCK).zip(v.par_chunks(BLOCK)).enumerate().for_each(|(i, (a, v))| {
            for (j, (a, &v)) in a.iter_mut().zip(v).enumerate() {
                if self.keeps(i * BLOCK + j, t) {
                    *a += v * s;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kept share is 1 - p within five standard deviations, the same seed gives the same
    /// mask (also block by block against one sweep), and other seeds other masks.
    #[test]
    fn keeps_one_minus_p_and_depends_only_on_seed_and_index() {
        let n = 1 << 20;
        for p in [0.05f32, 0.1, 0.5] {
            let d = Dropout::new(p, 0x1234_5678_9abc_def0);
            let m = d.mask(n);
            let kept = m.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
            let sd = ((p * (1.0 - p)) as f64 / n as f64).sqrt();
            assert!((kept - (1.0 - p as f64)).abs() < 5.0 * sd, "p {p}: kept {kept}");
            assert!(m.iter().all(|&v| v == 0.0 || v == d.scale()), "values 0 or 1/(1-p)");
            assert_eq!(m, d.mask(n), "same seed, same mask");
            let mut one = vec![1.0f32; n];
            d.apply_from(0, &mut one);
            assert_eq!(one, m, "blocks agree with one sweep");
            let other = Dropout::new(p, 0x1234_5678_9abc_def1).mask(n);
            let differ = m.iter().zip(&other).filter(|(a, b)| a != b).count() as f64 / n as f64;
            let expect = 2.0 * (p * (1.0 - p)) as f64;
            assert!((differ - expect).abs() < 0.01, "p {p}: {differ} of values differ, expected ~{expect}");
        }
    }

    /// Neighbouring values are independent: the share of kept pairs (i, i + 1) and (i, i + 64)
    /// is (1 - p)² within five standard deviations.
    #[test]
    fn neighbours_are_uncorrelated() {
        let (n, p) = (1 << 20, 0.3f32);
        let m = Dropout::new(p, 7).mask(n);
        for lag in [1usize, 64, BLOCK] {
            let both = (0..n - lag).filter(|&i| m[i] != 0.0 && m[i + lag] != 0.0).count() as f64 / (n - lag) as f64;
            let q = ((1.0 - p) * (1.0 - p)) as f64;
            let sd = (q * (1.0 - q) / n as f64).sqrt();
            assert!((both - q).abs() < 5.0 * sd, "lag {lag}: {both} against {q}");
        }
    }

    #[test]
    fn apply_and_add_masked_follow_the_mask() {
        let d = Dropout::new(0.25, 99);
        let n = 3 * BLOCK + 17;
        let x: Vec<f32> = (0..n).map(|i| (i % 13) as f32 - 6.0).collect();
        let m = d.mask(n);
        let want: Vec<f32> = x.iter().zip(&m).map(|(a, b)| a * b).collect();
        assert_eq!(d.apply(&x), want);
        let mut acc = vec![0.5f32; n];
        d.add_masked(&mut acc, &x);
        let want: Vec<f32> = x.iter().zip(&m).map(|(a, b)| 0.5 + a * b).collect();
        assert_eq!(acc, want);
    }

    /// On the graph: the values of `apply`, and the input's gradient the upstream gradient
    /// through the same mask; off the graph the same values.
    #[test]
    fn the_operation_masks_values_and_gradients_alike() {
        use crate::testing::vals;
        let d = Dropout::new(0.4, 5);
        for device in [Device::flex().autodiff(), Device::flex().autodiff().gradient_checkpointing()] {
            let x = Tensor::<3>::random([3, 50, 40], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
            let r = Tensor::<3>::random([3, 50, 40], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
            let tracked = x.clone().require_grad();
            let y = dropout(tracked.clone(), d);
            let grads = (y.clone() * r.clone()).sum().backward();
            assert_eq!(vals(y), d.apply(&vals(x.clone())));
            assert_eq!(vals(tracked.grad(&grads).unwrap()), d.apply(&vals(r)));
            assert_eq!(vals(dropout(x.clone().inner(), d)), d.apply(&vals(x)));
        }
    }

    #[test]
    #[should_panic(expected = "in [0, 1)")]
    fn refuses_p_of_one() {
        Dropout::new(1.0, 0);
    }
}
