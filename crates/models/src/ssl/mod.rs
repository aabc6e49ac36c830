//! wav2vec2 (base and large/XLS-R layouts), HuBERT, data2vec-audio and WavLM.

mod attention;
mod encoder;
mod feature_encoder;
pub(crate) mod native_cnn;
pub mod pretrain;

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;

pub use attention::{Attention, RelativePositionGate};
pub use encoder::{Encoder, EncoderLayer, PosConv, WeightNormPosConv};
pub use feature_encoder::{FeatureEncoder, output_length};

use crate::Result;
use crate::augment::Perturb;
use crate::config::SslConfig;
use crate::layers::{LayerNorm, load_linear};
use crate::weights::Weights;

/// Prefixes under which task-class checkpoints keep the base model.
pub const PREFIXES: [&str; 5] = ["", "wav2vec2.", "hubert.", "data2vec_audio.", "wavlm."];

// Wav2Vec2Model / HubertModel / Data2VecAudioModel / WavLMModel, without the task heads.
#[derive(Module, Debug)]
pub struct SslModel {
    pub feature_encoder: FeatureEncoder,
    /// `feature_projection.layer_norm` (absent for HuBERT with `feat_proj_layer_norm = false`).
    pub feature_norm: Option<LayerNorm>,
    pub projection: Linear,
    /// Learned vector that replaces masked frames when fine-tuning with SpecAugment.
    pub masked_spec_embed: Option<Param<Tensor<1>>>,
    pub encoder: Encoder,
    pub conv_kernel: Vec<usize>,
    pub conv_stride: Vec<usize>,
}

impl SslModel {
    pub fn load(cfg: &SslConfig, w: &Weights, device: &Device) -> Result<Self> {
        let c = *cfg.conv_dim.last().expect("config validated: at least one conv layer");
        let feature_norm = if cfg.model_type != "hubert" || cfg.feat_proj_layer_norm {
            Some(LayerNorm::load(w, "feature_projection.layer_norm", c, cfg.layer_norm_eps, device)?)
        } else {
            None
        };
        let masked_spec_embed = if w.contains("masked_spec_embed") {
            Some(Param::from_tensor(w.tensor("masked_spec_embed", [cfg.hidden_size], device)?))
        } else {
            None
        };
        Ok(Self {
            feature_encoder: FeatureEncoder::load(cfg, w, device)?,
            feature_norm,
            projection: load_linear(w, "feature_projection.projection", c, cfg.hidden_size, true, device)?,
            masked_spec_embed,
            encoder: Encoder::load(cfg, w, device)?,
            conv_kernel: cfg.conv_kernel.clone(),
            conv_stride: cfg.conv_stride.clone(),
        })
    }

    /// CNN features `[batch, frames, channels]` (the frozen part in most fine-tuning recipes).
    /// Computed outside burn where nothing in the CNN trains and the device is the CPU
    /// ([`FeatureEncoder::forward_native`]), channels-last on the CPU's autodiff graph
    /// ([`FeatureEncoder::forward_channels_last`]).
    pub fn extract_features(&self, samples: Tensor<2>) -> Tensor<3> {
        if self.feature_encoder.native_applies(&samples.device()) {
            return self.feature_encoder.forward_native(samples);
        }
        let f32_weights =
            self.feature_encoder.layers.iter().all(|l| speechtune_kernels::supports(&l.conv.weight.val()));
        if speechtune_kernels::supports(&samples) && samples.device().is_autodiff() && f32_weights {
            return self.feature_encoder.forward_channels_last(samples);
        }
        self.feature_encoder.forward(samples).swap_dims(1, 2)
    }

    /// Project CNN features and run the transformer; returns every hidden state. `perturb`
    /// masks the transformer input and drops layers (training only).
    pub fn encode(
        &self,
        features: Tensor<3>,
        frame_lengths: Option<&[usize]>,
        perturb: Option<&mut Perturb>,
    ) -> Vec<Tensor<3>> {
        let mut x = self.projection.forward(self.normalize_features(features));
        let mut skip = Vec::new();
        if let Some(p) = perturb {
            let [b, t, d] = x.dims();
            let device = x.device();
            let lengths = frame_lengths.map(|l| l.to_vec()).unwrap_or_else(|| vec![t; b]);
            if let Some(m) = p.time_mask(b, t, &lengths, &device) {
                x = self.mask_frames(x, m);
            }
            if let Some(keep) = p.channel_keep(b, d, &device) {
                x = x * keep;
            }
            skip = p.dropped_layers(self.encoder.layers.len());
        }
        self.encoder.forward(x, frame_lengths, &skip)
    }

    /// `feature_projection.layer_norm` of the CNN features (what the quantizer reads when
    /// pre-training); HuBERT without that norm passes them through.
    pub fn normalize_features(&self, features: Tensor<3>) -> Tensor<3> {
        match &self.feature_norm {
            Some(norm) => norm.forward(features),
            None => features,
        }
    }

    /// transformers' `_mask_hidden_states` for time masks: frames where `mask` (`[batch, time,
    /// 1]`, 1.0 = masked) is set become `masked_spec_embed` (zeros for checkpoints saved
    /// without it).
    pub fn mask_frames(&self, x: Tensor<3>, mask: Tensor<3>) -> Tensor<3> {
        let d = x.dims()[2];
        let embed = match &self.masked_spec_embed {
            Some(e) => e.val().reshape([1, 1, d]),
            None => Tensor::zeros([1, 1, d], &x.device()),
        };
        x * (mask.clone().neg() + 1.0) + mask * embed
    }

    /// Frames produced for `samples` input samples.
    pub fn frames_for(&self, samples: usize) -> usize {
        output_length(samples, &self.conv_kernel, &self.conv_stride)
    }

    /// Input samples per output frame (320 for the released models).
    pub fn downsampling(&self) -> usize {
        self.conv_stride.iter().product()
    }
}
