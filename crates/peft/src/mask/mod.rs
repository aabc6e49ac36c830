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

/// Scope of one-shot magnitude pruning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PruneScope {
    /// Each layer keeps its own `keep` fraction of largest |weights|.
    Layer,
    /// One threshold over all layers: `keep` of all the weights survive, unevenly per layer.
    Global,
}

/// One-shot magnitude pruning as masks (scores = |weight|), one per weight matrix: the baseline
/// S3-Router is compared with. With `Global`, each layer keeps at least one weight.
pub fn magnitude_masks(weights: &[Tensor<2>], keep: f64, scope: PruneScope) -> Vec<MaskLayer> {
    let keeps: Vec<f64> = match scope {
        PruneScope::Layer => vec![keep; weights.len()],
        PruneScope::Global => {
            let abs: Vec<Vec<f32>> = weights
                .iter()
                .map(|w| w.clone().abs().into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default())
                .collect();
            let mut all: Vec<f32> = abs.iter().flatten().copied().collect();
            let k = kept(all.len(), keep);
            all.sort_by(|a, b| b.total_cmp(a));
            let threshold = all[k - 1];
            abs.iter().map(|a| a.iter().filter(|&&x| x >= threshold).count() as f64 / a.len() as f64).collect()
        }
    };
    weights
        .iter()
        .zip(keeps)
        .map(|(w, k)| MaskLayer { scores: Param::from_tensor(w.clone().abs().detach()), keep: k })
        .collect()
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

    #[test]
    fn magnitude_pruning_per_layer_and_global() {
        let device = Device::flex();
        let a = Tensor::<2>::from_data(TensorData::new(vec![0.1f32, -0.2, 0.3, -0.4], [2, 2]), &device);
        let b = Tensor::<2>::from_data(TensorData::new(vec![5.0f32, 6.0, -7.0, 8.0], [2, 2]), &device);
        let hard = |m: &MaskLayer| -> Vec<f32> { m.hard().into_data().try_to_vec().unwrap() };
        let per_layer = magnitude_masks(&[a.clone(), b.clone()], 0.5, PruneScope::Layer);
        assert_eq!(hard(&per_layer[0]), [0.0, 0.0, 1.0, 1.0]);
        assert_eq!(hard(&per_layer[1]), [0.0, 0.0, 1.0, 1.0]);
        // Globally the 4 largest of 8 are all in b; a keeps its one largest (at least one per layer).
        let global = magnitude_masks(&[a, b], 0.5, PruneScope::Global);
        assert_eq!(hard(&global[1]), [1.0, 1.0, 1.0, 1.0]);
        assert_eq!(hard(&global[0]), [0.0, 0.0, 0.0, 1.0]);
    }
}
