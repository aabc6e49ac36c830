//! Training-time perturbations of the upstream, as wav2vec2 fine-tuning applies them: time and
//! channel masking of the transformer input (SpecAugment; transformers' `mask_time_prob`,
//! `mask_feature_prob`, spans drawn as `_compute_mask_indices` does) and LayerDrop. For Whisper
//! the masks apply to the log-mel input, as its `apply_spec_augment` does.

use burn::prelude::*;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};
use speechtune_data::Rng;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Fraction of frames covered by masked time spans (0 turns it off).
    pub mask_time_prob: f64,
    pub mask_time_length: usize,
    /// Fraction of channels covered by masked channel spans.
    pub mask_feature_prob: f64,
    pub mask_feature_length: usize,
    /// Probability of skipping each transformer layer.
    pub layerdrop: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            mask_time_prob: 0.0,
            mask_time_length: 10,
            mask_feature_prob: 0.0,
            mask_feature_length: 10,
            layerdrop: 0.0,
        }
    }
}

impl AugmentConfig {
    pub fn is_off(&self) -> bool {
        self.mask_time_prob <= 0.0 && self.mask_feature_prob <= 0.0 && self.layerdrop <= 0.0
    }
}

/// The perturbation of one training step: the configuration and the generator its draws come
/// from (seeded per step, so a resumed run draws the same masks).
pub struct Perturb {
    pub cfg: AugmentConfig,
    pub rng: Rng,
}

impl Perturb {
    pub fn new(cfg: &AugmentConfig, seed: u64) -> Self {
        Self { cfg: cfg.clone(), rng: Rng::new(seed) }
    }

    /// Spans of `span` positions covering about `prob` of the first `valid` of `len` positions:
    /// `floor(prob · valid / span + u)` spans with distinct random starts.
    pub fn spans(&mut self, len: usize, valid: usize, prob: f64, span: usize) -> Vec<bool> {
        let mut mask = vec![false; len];
        let valid = valid.min(len);
        if prob <= 0.0 || span == 0 || valid < span {
            return mask;
        }
        let n = ((prob * valid as f64 / span as f64 + self.rng.uniform()) as usize).min(valid / span);
        let mut starts: Vec<usize> = (0..=valid - span).collect();
        self.rng.shuffle(&mut starts);
        for &s in starts.iter().take(n) {
            mask[s..s + span].iter_mut().for_each(|m| *m = true);
        }
        mask
    }

    /// `[batch, time, 1]` 1.0 on masked frames.
    pub fn time_mask(&mut self, batch: usize, time: usize, lengths: &[usize], device: &Device) -> Option<Tensor<3>> {
        if self.cfg.mask_time_prob <= 0.0 {
            return None;
        }
        let (p, l) = (self.cfg.mask_time_prob, self.cfg.mask_time_length);
        let v: Vec<f32> = (0..batch)
            .flat_map(|b| self.spans(time, lengths.get(b).copied().unwrap_or(time), p, l))
            .map(|m| if m { 1.0 } else { 0.0 })
            .collect();
        Some(Tensor::from_data(TensorData::new(v, [batch, time, 1]), device))
    }

    /// `[batch, 1, channels]` 0.0 on masked channels, 1.0 elsewhere.
    pub fn channel_keep(&mut self, batch: usize, channels: usize, device: &Device) -> Option<Tensor<3>> {
        if self.cfg.mask_feature_prob <= 0.0 {
            return None;
        }
        let (p, l) = (self.cfg.mask_feature_prob, self.cfg.mask_feature_length);
        let v: Vec<f32> =
            (0..batch).flat_map(|_| self.spans(channels, channels, p, l)).map(|m| if m { 0.0 } else { 1.0 }).collect();
        Some(Tensor::from_data(TensorData::new(v, [batch, 1, channels]), device))
    }

    /// Which of `layers` layers to skip this step.
    pub fn dropped_layers(&mut self, layers: usize) -> Vec<bool> {
        (0..layers).map(|_| self.cfg.layerdrop > 0.0 && self.rng.uniform() < self.cfg.layerdrop).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_the_requested_fraction_inside_the_valid_part() {
        let mut p = Perturb::new(&AugmentConfig::default(), 7);
        let mut covered = 0usize;
        for _ in 0..200 {
            let m = p.spans(120, 100, 0.3, 10);
            assert!(m[100..].iter().all(|&x| !x), "padding is never masked");
            let n = m.iter().filter(|&&x| x).count();
            assert!(n <= 40, "at most floor(0.3·100/10 + 1) = 4 spans of 10, got {n}");
            covered += n;
        }
        // Overlapping spans cover less than prob; the mean must still be close below it.
        let mean = covered as f64 / 200.0 / 100.0;
        assert!((0.2..=0.31).contains(&mean), "covered {mean}");
        assert!(p.spans(5, 5, 0.5, 10).iter().all(|&x| !x), "shorter than a span: nothing masked");
    }
}
