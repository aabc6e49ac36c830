//! The convolutional feature encoder shared by wav2vec2, HuBERT, data2vec-audio and WavLM.

use burn::module::Param;
use burn::prelude::*;

use crate::Result;
use crate::config::SslConfig;
use crate::layers::{Activation, Conv1d, LayerNorm};
use crate::weights::Weights;

/// `nn.GroupNorm(num_groups=C, num_channels=C)`: each channel normalised over time, per item.
#[derive(Module, Debug)]
pub struct ChannelNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
}

impl ChannelNorm {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let c = self.weight.dims()[0];
        let (var, mean) = x.clone().var_mean_bias(2);
        let y = (x - mean) / (var + 1e-5).sqrt();
        y * self.weight.val().reshape([1, c, 1]) + self.bias.val().reshape([1, c, 1])
    }

    /// The same on `[batch, time, channels]` (on the CPU's autodiff graph as one operation,
    /// [`speechtune_kernels::groupnorm`]).
    fn forward_channels_last(&self, x: Tensor<3>) -> Tensor<3> {
        if speechtune_kernels::supports(&x) && x.device().is_autodiff() {
            return speechtune_kernels::groupnorm::channel_norm(x, self.weight.val(), self.bias.val(), 1e-5);
        }
        let c = self.weight.dims()[0];
        let (var, mean) = x.clone().var_mean_bias(1);
        let y = (x - mean) / (var + 1e-5).sqrt();
        y * self.weight.val().reshape([1, 1, c]) + self.bias.val().reshape([1, 1, c])
    }
}

// One of Wav2Vec2{NoLayerNorm,LayerNorm,GroupNorm}ConvLayer / Data2VecAudioConvLayer
// (transformers/models/wav2vec2/modeling_wav2vec2.py).
#[derive(Module, Debug)]
pub struct ConvLayer {
    pub conv: Conv1d,
    pub group_norm: Option<ChannelNorm>,
    pub layer_norm: Option<LayerNorm>,
}

// Wav2Vec2FeatureEncoder: `[batch, samples]` → `[batch, channels, frames]`.
#[derive(Module, Debug)]
pub struct FeatureEncoder {
    pub layers: Vec<ConvLayer>,
    #[module(skip)]
    pub activation: Activation,
    /// Each layer's weight in bf16 for the native CNN's products, `None` for a layer that stays
    /// f32 ([`FeatureEncoder::use_bf16`]).
    #[module(skip)]
    pub bf16: Option<std::sync::Arc<Vec<Option<speechtune_kernels::bf16::PackedB>>>>,
}

impl FeatureEncoder {
    pub fn load(cfg: &SslConfig, w: &Weights, device: &Device) -> Result<Self> {
        let mut layers = Vec::new();
        let mut c_in = 1;
        for (i, ((&c, &k), &s)) in cfg.conv_dim.iter().zip(&cfg.conv_kernel).zip(&cfg.conv_stride).enumerate() {
            let p = format!("feature_extractor.conv_layers.{i}");
            let mut conv = Conv1d::load(w, &format!("{p}.conv"), [c, c_in, k], cfg.conv_bias, s, 0, 1, device)?;
            if !device.is_autodiff() && *device == Device::flex() {
                // Stored `[kernel, c_in, c_out]`, seen as `[c_out, c_in, kernel]` (same values and
                // shape): the native CNN's product reads this storage as it is.
                conv.weight = conv.weight.map(|t| {
                    let device = t.device();
                    Tensor::from_data(t.permute([2, 1, 0]).into_data(), &device).permute([2, 1, 0])
                });
            }
            let (group_norm, layer_norm) = if cfg.layer_norm_convs() {
                (None, Some(LayerNorm::load(w, &format!("{p}.layer_norm"), c, 1e-5, device)?))
            } else if i == 0 {
                let norm = ChannelNorm {
                    weight: Param::from_tensor(w.tensor(&format!("{p}.layer_norm.weight"), [c], device)?),
                    bias: Param::from_tensor(w.tensor(&format!("{p}.layer_norm.bias"), [c], device)?),
                };
                (Some(norm), None)
            } else {
                (None, None)
            };
            layers.push(ConvLayer { conv, group_norm, layer_norm });
            c_in = c;
        }
        Ok(Self { layers, activation: Activation::parse(&cfg.feat_extract_activation)?, bf16: None })
    }

    pub fn forward(&self, samples: Tensor<2>) -> Tensor<3> {
        let mut x = samples.unsqueeze_dim(1);
        for layer in &self.layers {
            x = layer.conv.forward(x);
            if let Some(norm) = &layer.group_norm {
                x = norm.forward(x);
            }
            if let Some(norm) = &layer.layer_norm {
                x = norm.forward(x.swap_dims(1, 2)).swap_dims(1, 2);
            }
            x = self.activation.forward(x);
        }
        x
    }

    /// What `forward(..).swap_dims(1, 2)` gives, `[batch, frames, channels]`, computed
    /// channels-last with convolutions that have their own backward pass
    /// ([`speechtune_kernels::conv1d`]): for a CNN that trains on burn's CPU backend (pre-training).
    pub fn forward_channels_last(&self, samples: Tensor<2>) -> Tensor<3> {
        let mut x = samples.unsqueeze_dim(2);
        // Each layer's activation (where it has a fused form) is applied by the next layer's
        // convolution, which then keeps one tensor of that size for the backward pass instead of
        // two (the activation's slope and the convolution's input); the last layer's here.
        let fused = self.activation.fused();
        for (i, layer) in self.layers.iter().enumerate() {
            let c = &layer.conv;
            let bias = c.bias.as_ref().map(|b| b.val());
            let (w, (stride, padding, groups)) = (c.weight.val(), (c.stride, c.padding, c.groups));
            x = match fused {
                Some(act) if i > 0 => speechtune_kernels::conv1d_after(x, act, w, bias, stride, padding, groups),
                _ => speechtune_kernels::conv1d(x, w, bias, stride, padding, groups),
            };
            if let Some(norm) = &layer.group_norm {
                x = norm.forward_channels_last(x);
            }
            if let Some(norm) = &layer.layer_norm {
                x = norm.forward(x);
            }
            if fused.is_none() || i + 1 == self.layers.len() {
                x = self.activation.forward(x);
            }
        }
        x
    }
}

/// Frames produced for `samples` input samples (`_get_feat_extract_output_lengths`).
pub fn output_length(samples: usize, kernels: &[usize], strides: &[usize]) -> usize {
    kernels.iter().zip(strides).fold(samples, |len, (&k, &s)| if len < k { 0 } else { (len - k) / s + 1 })
}

#[cfg(test)]
mod tests {
    #[test]
    fn base_model_frame_rate() {
        let (k, s) = ([10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2]);
        // One second at 16 kHz gives 49 frames, as transformers reports for wav2vec2-base.
        assert_eq!(super::output_length(16000, &k, &s), 49);
        assert_eq!(super::output_length(400, &k, &s), 1);
        assert_eq!(super::output_length(399, &k, &s), 0);
    }
}
