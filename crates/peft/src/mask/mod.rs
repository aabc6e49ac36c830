//! S3-Router binary masks (Fu et al., 2023): fine-tune which connections of the pretrained
//! weights are used instead of their values. Every masked projection gets a learnable score per
//! weight; the forward pass uses `W ⊙ M` with `M` keeping the `prune_rate` fraction of weights with
//! the largest |score| in that layer (binary), and the gradient of `M` passes straight through to
//! the scores. As in the seed, `prune_rate` is the fraction of weights KEPT: 0.9 keeps 90%
//! (10% sparsity).

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::{Distribution, TensorData};
use serde::{Deserialize, Serialize};

/// How scores start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScoreInit {
    /// Scores ordered as |weight|: the largest scores on the largest weights, evenly spaced in
    /// (0, 1], so the initial mask is magnitude pruning and no score starts far ahead.
    #[default]
    WeightRank,
    /// Scores = |weight|.
    WeightMagnitude,
    /// Kaiming-uniform random scores.
    Random,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaskConfig {
    /// Fraction of each layer's weights kept (0.9 = 10% sparsity).
    pub prune_rate: f64,
    pub score_init: ScoreInit,
    /// Leave attention projections unmasked (only the feed-forward layers get masks).
    pub fix_attn: bool,
}

impl Default for MaskConfig {
    fn default() -> Self {
        Self { prune_rate: 0.9, score_init: ScoreInit::WeightRank, fix_attn: false }
    }
}

#[derive(Module, Debug)]
pub struct MaskLayer {
    /// One score per weight, in burn's `[in, out]` layout.
    pub scores: Param<Tensor<2>>,
    pub keep: f64,
}

/// Number of weights kept out of `n`.
pub fn kept(n: usize, keep: f64) -> usize {
    ((n as f64 * keep).round() as usize).clamp(1, n)
}

impl MaskLayer {
    pub fn new(weight: &Tensor<2>, cfg: &MaskConfig) -> Self {
        let device = weight.device();
        let dims = weight.dims();
        let scores = match cfg.score_init {
            ScoreInit::WeightMagnitude => weight.clone().abs().detach(),
            ScoreInit::WeightRank => {
                let w: Vec<f32> = weight.clone().into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
                let mut order: Vec<usize> = (0..w.len()).collect();
                order.sort_by(|&a, &b| w[a].abs().total_cmp(&w[b].abs()));
                let mut ranks = vec![0.0f32; w.len()];
                for (r, &i) in order.iter().enumerate() {
                    ranks[i] = (r + 1) as f32 / w.len() as f32;
                }
                Tensor::from_data(TensorData::new(ranks, dims), &device)
            }
            ScoreInit::Random => {
                let bound = 1.0 / (dims[0] as f64).sqrt();
                Tensor::random(dims, Distribution::Uniform(-bound, bound), &device)
            }
        };
        Self { scores: Param::from_tensor(scores), keep: cfg.prune_rate }
    }

    /// The binary mask (no gradient).
    pub fn hard(&self) -> Tensor<2> {
        let s = self.scores.val().detach().abs();
        let [i, o] = s.dims();
        let n = i * o;
        let k = kept(n, self.keep);
        let sorted = s.clone().reshape([n]).sort_descending(0);
        let threshold = sorted.narrow(0, k - 1, 1).reshape([1, 1]);
        s.greater_equal(threshold).float()
    }

    /// The mask for the forward pass: binary values, identity gradient to the scores.
    pub fn mask(&self) -> Tensor<2> {
        let s = self.scores.val();
        (self.hard() - s.clone().detach()) + s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_by_magnitude_with_a_straight_through_gradient() {
        let device = Device::flex().autodiff();
        let layer = MaskLayer {
            scores: Param::from_data(TensorData::new(vec![0.3f32, -0.9, 0.1, 0.5, -0.2, 0.7], [2, 3]), &device),
            keep: 0.5,
        };
        let m: Vec<f32> = layer.hard().into_data().try_to_vec().unwrap();
        assert_eq!(m, [0.0, 1.0, 0.0, 1.0, 0.0, 1.0], "|−0.9|, 0.7, 0.5 are the top 3 of 6");
        let c = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]), &device);
        let mask = layer.mask();
        let v: Vec<f32> = mask.clone().into_data().try_to_vec().unwrap();
        assert_eq!(v, m, "the forward value is binary");
        let grads = (mask * c).sum().backward();
        let g: Vec<f32> = layer.scores.val().grad(&grads).unwrap().into_data().try_to_vec().unwrap();
        assert_eq!(g, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "the gradient passes straight through");
        assert_eq!((kept(10, 0.9), kept(10, 0.0), kept(3, 1.0)), (9, 1, 3));
    }
}
