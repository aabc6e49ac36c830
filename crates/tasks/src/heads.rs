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
        let device = x.device();
        let valid = frame_mask(lengths, t, &device).bool_not().float().reshape([b, t, 1]);
        let counts: Vec<f32> = lengths.iter().map(|&l| l.clamp(1, t) as f32).collect();
        let counts = Tensor::<2>::from_data(TensorData::new(counts, [b, 1]), &device);
        let pooled: Tensor<2> = (x * valid).sum_dim(1).squeeze_dim(1) / counts;
        self.out.forward(pooled)
    }
}
