use burn::nn::transformer::{TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::TensorData;

/// `[batch, frames]` true at padding (burn's `mask_pad` convention).
pub fn frame_mask(lengths: &[usize], frames: usize, device: &Device) -> Tensor<2, Bool> {
    let v: Vec<bool> = lengths.iter().flat_map(|&l| (0..frames).map(move |t| t >= l)).collect();
    Tensor::from_data(TensorData::new(v, [lengths.len(), frames]), device)
}

/// ML-SUPERB's downstream: a linear projection to 256, a 2-layer Transformer encoder
/// (4 heads, FFN 1024) and a linear output layer.
#[derive(Module, Debug)]
pub struct SuperbDownstream {
    pub proj: Linear,
    pub encoder: TransformerEncoder,
    pub out: Linear,
}

impl SuperbDownstream {
    pub fn new(d_in: usize, d_out: usize, dropout: f64, device: &Device) -> Self {
        Self {
            proj: LinearConfig::new(d_in, 256).init(device),
            encoder: TransformerEncoderConfig::new(256, 1024, 4, 2).with_dropout(dropout).init(device),
            out: LinearConfig::new(256, d_out).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<3>, lengths: &[usize]) -> Tensor<3> {
        let [_, t, _] = x.dims();
        let mask = frame_mask(lengths, t, &x.device());
        let h = self.encoder.forward(TransformerEncoderInput::new(self.proj.forward(x)).mask_pad(mask));
        self.out.forward(h)
    }
}

/// A linear layer on the features (fairseq's CTC fine-tuning head).
#[derive(Module, Debug)]
pub struct LinearHead {
    pub out: Linear,
}

impl LinearHead {
    pub fn new(d_in: usize, d_out: usize, device: &Device) -> Self {
        Self { out: LinearConfig::new(d_in, d_out).init(device) }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.out.forward(x)
    }
}

/// Mean over valid frames, then a linear classifier: `[batch, classes]`.
#[derive(Module, Debug)]
pub struct MeanPoolClassifier {
    pub out: Linear,
}

impl MeanPoolClassifier {
    pub fn new(d_in: usize, classes: usize, device: &Device) -> Self {
        Self { out: LinearConfig::new(d_in, classes).init(device) }
    }

    pub fn forward(&self, x: Tensor<3>, lengths: &[usize]) -> Tensor<2> {
        let [b, t, _] = x.dims();
        let (valid, counts) = valid_and_counts(lengths, b, t, &x.device());
        let pooled: Tensor<2> = (x * valid).sum_dim(1).squeeze_dim(1) / counts;
        self.out.forward(pooled)
    }
}

/// `[batch, frames, 1]` 1.0 on valid frames, and the valid-frame counts `[batch, 1]`.
fn valid_and_counts(lengths: &[usize], b: usize, t: usize, device: &Device) -> (Tensor<3>, Tensor<2>) {
    let valid = frame_mask(lengths, t, device).bool_not().float().reshape([b, t, 1]);
    let counts: Vec<f32> = lengths.iter().map(|&l| l.clamp(1, t) as f32).collect();
    (valid, Tensor::from_data(TensorData::new(counts, [b, 1]), device))
}

/// Attentive statistics pooling (Okabe et al., 2018): frame weights from a small attention
/// network, the weighted mean and standard deviation concatenated, then a linear classifier.
#[derive(Module, Debug)]
pub struct AttentiveStatsClassifier {
    pub attention: Linear,
    pub score: Linear,
    pub out: Linear,
}

impl AttentiveStatsClassifier {
    pub fn new(d_in: usize, classes: usize, device: &Device) -> Self {
        let inner = (d_in / 2).max(1);
        Self {
            attention: LinearConfig::new(d_in, inner).init(device),
            score: LinearConfig::new(inner, 1).init(device),
            out: LinearConfig::new(2 * d_in, classes).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<3>, lengths: &[usize]) -> Tensor<2> {
        let [b, t, _] = x.dims();
        let device = x.device();
        let (valid, _) = valid_and_counts(lengths, b, t, &device);
        // Padding gets -1e4 before the softmax over time: weight 0.
        let e = self.score.forward(self.attention.forward(x.clone()).tanh()) + (valid.neg() + 1.0) * -1e4;
        let w = burn::tensor::activation::softmax(e, 1);
        let mean: Tensor<2> = (x.clone() * w.clone()).sum_dim(1).squeeze_dim(1);
        let second: Tensor<2> = (x.powf_scalar(2.0) * w).sum_dim(1).squeeze_dim(1);
        let std = (second - mean.clone().powf_scalar(2.0)).clamp_min(1e-5).sqrt();
        self.out.forward(Tensor::cat(vec![mean, std], 1))
    }
}

/// transformers' `WhisperForAudioClassification` head: `projector` to 256, mean over frames,
/// `classifier`.
#[derive(Module, Debug)]
pub struct ProjectorClassifier {
    pub projector: Linear,
    pub classifier: Linear,
}

impl ProjectorClassifier {
    pub fn new(d_in: usize, classes: usize, device: &Device) -> Self {
        Self {
            projector: LinearConfig::new(d_in, 256).init(device),
            classifier: LinearConfig::new(256, classes).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<3>, lengths: &[usize]) -> Tensor<2> {
        let [b, t, _] = x.dims();
        let (valid, counts) = valid_and_counts(lengths, b, t, &x.device());
        let pooled: Tensor<2> = (self.projector.forward(x) * valid).sum_dim(1).squeeze_dim(1) / counts;
        self.classifier.forward(pooled)
    }
}

/// An utterance classifier, by pooling method.
#[derive(Module, Debug)]
pub enum Classifier {
    Mean(MeanPoolClassifier),
    AttentiveStats(AttentiveStatsClassifier),
    Projector(ProjectorClassifier),
}

impl Classifier {
    /// `x`: `[batch, frames, d]` → `[batch, classes]`.
    pub fn forward(&self, x: Tensor<3>, lengths: &[usize]) -> Tensor<2> {
        match self {
            Classifier::Mean(c) => c.forward(x, lengths),
            Classifier::AttentiveStats(c) => c.forward(x, lengths),
            Classifier::Projector(c) => c.forward(x, lengths),
        }
    }
}

#[allow(clippy::large_enum_variant)] // one per model
/// A CTC head: ML-SUPERB's downstream on the weighted layer sum, or fairseq's linear layer on
/// the last hidden state.
#[derive(Module, Debug)]
pub enum CtcHead {
    Superb(SuperbDownstream),
    Linear(LinearHead),
}

impl CtcHead {
    /// `weighted`: the featurizer's output; `last`: the upstream's last hidden state.
    pub fn forward(&self, weighted: Tensor<3>, last: Tensor<3>, lengths: &[usize]) -> Tensor<3> {
        match self {
            CtcHead::Superb(h) => h.forward(weighted, lengths),
            CtcHead::Linear(h) => h.forward(last),
        }
    }
}
