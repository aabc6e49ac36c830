//! One entry point for every supported checkpoint: load a model directory, prepare audio, and
//! run the model to get every hidden state.

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;

use crate::Result;
use crate::augment::Perturb;
use crate::builtin;
use crate::config::ModelConfig;
use crate::frontend::{FrontEnd, ModelInput};
use crate::ssl::{self, SslModel};
use crate::weights::Weights;
use crate::whisper::{self, WhisperEncoder};

/// The upstream network, one variant per architecture family.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // one per loaded model
pub enum UpstreamModel {
    Ssl(SslModel),
    Whisper(WhisperEncoder),
}

/// What a forward pass returns.
#[derive(Debug, Clone)]
pub struct UpstreamOutput {
    /// `[batch, frames, dim]` each: the transformer input first, then every layer's output,
    /// exactly as transformers' `output_hidden_states=True`.
    pub hidden_states: Vec<Tensor<3>>,
    /// Frames that cover each item's audio (the rest is padding).
    pub frame_lengths: Vec<usize>,
}

impl UpstreamModel {
    /// Run on a prepared batch.
    pub fn forward(&self, input: ModelInput) -> Result<UpstreamOutput> {
        self.forward_perturbed(input, None)
    }

    /// Run with training-time masking and LayerDrop drawn from `perturb`.
    pub fn forward_perturbed(&self, input: ModelInput, perturb: Option<&mut Perturb>) -> Result<UpstreamOutput> {
        match (self, input) {
            (UpstreamModel::Ssl(m), ModelInput::Waveform { samples, lengths }) => {
                let features = m.extract_features(samples);
                let frames = features.dims()[1];
                let frame_lengths: Vec<usize> = lengths.iter().map(|&l| m.frames_for(l).min(frames)).collect();
                let padded = frame_lengths.iter().any(|&l| l < frames);
                let hidden_states = m.encode(features, padded.then_some(frame_lengths.as_slice()), perturb);
                Ok(UpstreamOutput { hidden_states, frame_lengths })
            }
            (UpstreamModel::Ssl(m), ModelInput::CnnFeatures { features, frame_lengths }) => {
                let frames = features.dims()[1];
                let padded = frame_lengths.iter().any(|&l| l < frames);
                let hidden_states = m.encode(features, padded.then_some(frame_lengths.as_slice()), perturb);
                Ok(UpstreamOutput { hidden_states, frame_lengths })
            }
            (UpstreamModel::Whisper(m), ModelInput::LogMel { features, lengths }) => {
                let frames = features.dims()[2];
                let unpadded = frames != m.expected_frames();
                let mel_lengths: Vec<usize> = lengths.iter().map(|&l| l.div_ceil(160)).collect();
                let hidden_states = m.forward_perturbed(features, unpadded, &mel_lengths, perturb)?;
                let t = hidden_states[0].dims()[1];
                let frame_lengths = lengths.iter().map(|&l| l.div_ceil(self.downsampling()).min(t)).collect();
                Ok(UpstreamOutput { hidden_states, frame_lengths })
            }
            _ => Err(crate::Error::Input("model input does not match the model family".into())),
        }
    }

    /// Audio samples per output frame.
    pub fn downsampling(&self) -> usize {
        match self {
            UpstreamModel::Ssl(m) => m.downsampling(),
            UpstreamModel::Whisper(_) => 320, // hop 160, then the stride-2 conv
        }
    }

    /// Reproduce the `output_hidden_states` of transformers `major` (4 or 5). They differ for
    /// pre-LN (stable-layer-norm) SSL encoders — wav2vec2-large/XLS-R, HuBERT-large, WavLM-large:
    /// 4.x returns the last layer's output after the encoder's final layer norm, 5 before it.
    /// Returns whether this model is affected.
    pub fn hidden_states_like_transformers(&mut self, major: u32) -> Result<bool> {
        if !matches!(major, 4 | 5) {
            return Err(crate::Error::Input(format!("transformers {major}: expected 4 or 5")));
        }
        Ok(match self {
            UpstreamModel::Ssl(m) => {
                m.encoder.final_norm_in_hidden_states = major == 4;
                m.encoder.stable
            }
            UpstreamModel::Whisper(_) => false,
        })
    }

    /// Number of transformer layers (hidden states = layers + 1).
    pub fn num_layers(&self) -> usize {
        match self {
            UpstreamModel::Ssl(m) => m.encoder.layers.len(),
            UpstreamModel::Whisper(m) => m.layers.len(),
        }
    }

    /// Width of the hidden states.
    pub fn hidden_size(&self) -> usize {
        match self {
            UpstreamModel::Ssl(m) => m.projection.weight.dims()[1],
            UpstreamModel::Whisper(m) => m.layer_norm.weight.as_ref().map(|w| w.dims()[0]).unwrap_or(0),
        }
    }

    /// Parameter counts per component, in model order.
    pub fn parameter_breakdown(&self) -> Vec<(String, usize)> {
        let mut rows = Vec::new();
        match self {
            UpstreamModel::Ssl(m) => {
                rows.push(("feature encoder (CNN)".to_string(), m.feature_encoder.num_params()));
                let proj = m.projection.num_params() + m.feature_norm.as_ref().map_or(0, |n| n.num_params());
                rows.push(("feature projection".to_string(), proj));
                rows.push(("positional conv".to_string(), m.encoder.pos_conv.num_params()));
                for (i, l) in m.encoder.layers.iter().enumerate() {
                    rows.push((format!("transformer layer {i}"), l.num_params()));
                }
                rows.push(("encoder layer norm".to_string(), m.encoder.layer_norm.num_params()));
                if let Some(e) = &m.masked_spec_embed {
                    rows.push(("masked_spec_embed".to_string(), e.num_params()));
                }
            }
            UpstreamModel::Whisper(m) => {
                rows.push(("conv front-end".to_string(), m.conv1.num_params() + m.conv2.num_params()));
                rows.push(("positional table (frozen)".to_string(), m.embed_positions.num_params()));
                for (i, l) in m.layers.iter().enumerate() {
                    rows.push((format!("transformer layer {i}"), l.num_params()));
                }
                rows.push(("final layer norm".to_string(), m.layer_norm.num_params()));
            }
        }
        rows
    }
}

pub(crate) const TINY_CONFIG: &str = r#"{
  "model_type": "wav2vec2", "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
  "intermediate_size": 256, "conv_dim": [64, 64, 64, 64, 64, 64, 64], "feat_extract_norm": "layer",
  "do_stable_layer_norm": true, "conv_bias": true, "num_conv_pos_embeddings": 32,
  "num_conv_pos_embedding_groups": 8, "mask_time_prob": 0.05, "layerdrop": 0.0
}"#;

/// A loaded checkpoint: the network, its front-end and its configuration.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub model: UpstreamModel,
    pub frontend: FrontEnd,
    pub config: ModelConfig,
    /// The prefix under which the checkpoint keeps the base model (`wav2vec2.`, `model.encoder.`, ...).
    pub prefix: String,
}

impl Upstream {
    /// A Hugging Face model directory or a built-in name (`builtin:tiny` with seed 0,
    /// `builtin:tiny-pretrained`), as commands that take a model accept them.
    pub fn open(model: &Path, device: &Device) -> Result<Self> {
        Ok(crate::export::Source::parse(&model.to_string_lossy(), 0).open(device)?.0)
    }

    /// Load a Hugging Face model directory (`config.json` + safetensors weights).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Ok(Self::load_with_weights(dir, device)?.0)
    }

    /// Like [`Upstream::load`], also returning the opened weights (which list what was read).
    pub fn load_with_weights(dir: &Path, device: &Device) -> Result<(Self, Weights)> {
        let config = ModelConfig::from_dir(dir)?;
        let weights = Weights::open_dir(dir)?;
        let frontend = FrontEnd::from_dir(dir, &config)?;
        Self::assemble(config, weights, frontend, device)
    }

    /// The built-in pretrained tiny upstream (`builtin:tiny-pretrained`: models/tiny-pretrained,
    /// embedded in the program), with its weight source.
    pub fn tiny_pretrained_with_weights(device: &Device) -> Result<(Self, Weights)> {
        let file = |name: &str| {
            let bytes = builtin::TINY_PRETRAINED_FILES.iter().find(|(n, _)| *n == name).map(|(_, b)| *b);
            (Path::new(builtin::TINY_PRETRAINED).join(name), bytes.unwrap_or_default())
        };
        let (config_path, config_json) = file("config.json");
        let config = ModelConfig::from_json(config_json, &config_path)?;
        let (pp_path, pp_json) = file("preprocessor_config.json");
        let frontend = FrontEnd::from_json(Some(pp_json), &pp_path, &config)?;
        let (weights_path, bytes) = file("model.safetensors");
        let weights = Weights::from_safetensors_bytes(vec![(weights_path, bytes.to_vec())])?;
        Self::assemble(config, weights, frontend, device)
    }

    fn assemble(
        config: ModelConfig,
        mut weights: Weights,
        frontend: FrontEnd,
        device: &Device,
    ) -> Result<(Self, Weights)> {
        let model = match &config {
            ModelConfig::Ssl(c) => {
                weights.select_prefix(&ssl::PREFIXES, "feature_extractor.conv_layers.0.conv.weight")?;
                UpstreamModel::Ssl(SslModel::load(c, &weights, device)?)
            }
            ModelConfig::Whisper(c) => {
                weights.select_prefix(&whisper::PREFIXES, "conv1.weight")?;
                UpstreamModel::Whisper(WhisperEncoder::load(c, &weights, device)?)
            }
        };
        let prefix = weights.prefix().to_string();
        Ok((Self { model, frontend, config, prefix }, weights))
    }

    /// A small wav2vec2-shaped model with seeded random weights (0.68 M parameters: a 7-layer
    /// CNN of 64 channels at the standard 320× downsampling, 4 transformer layers of width 128),
    /// for demos and tests (random weights). It has learned nothing.
    pub fn tiny(seed: u64, device: &Device) -> Result<Self> {
        Ok(Self::tiny_with_weights(seed, device)?.0)
    }

    /// Like [`Upstream::tiny`], also returning its weight source (which lists what was read).
    pub fn tiny_with_weights(seed: u64, device: &Device) -> Result<(Self, Weights)> {
        Self::random_with_weights(TINY_CONFIG.as_bytes(), "<built-in tiny upstream>", seed, device)
    }

    /// A model of the architecture `config_json` describes (a `config.json`'s text), with seeded
    /// random weights (see [`Weights::random`]): a wav2vec2-family model with a waveform
    /// front-end that normalises, or a Whisper encoder with Whisper's default log-mel front-end
    /// (30-s windows). Benchmarks use `{"model_type": "wav2vec2"}`, the shape of wav2vec2-base,
    /// and whisper-base's configuration.
    pub fn random(config_json: &[u8], name: &str, seed: u64, device: &Device) -> Result<Self> {
        Ok(Self::random_with_weights(config_json, name, seed, device)?.0)
    }

    fn random_with_weights(config_json: &[u8], name: &str, seed: u64, device: &Device) -> Result<(Self, Weights)> {
        let config = ModelConfig::from_json(config_json, Path::new(name))?;
        let weights = Weights::random(seed);
        let (model, frontend) = match &config {
            ModelConfig::Ssl(c) => {
                (UpstreamModel::Ssl(SslModel::load(c, &weights, device)?), FrontEnd::Waveform { normalize: true })
            }
            ModelConfig::Whisper(c) => (
                UpstreamModel::Whisper(WhisperEncoder::load(c, &weights, device)?),
                FrontEnd::from_json(None, Path::new(name), &config)?,
            ),
        };
        Ok((Self { model, frontend, config, prefix: String::new() }, weights))
    }

    /// Prepare a batch of 16-kHz waveforms and run the model.
    pub fn forward_waves(&self, waves: &[Vec<f32>], device: &Device) -> Result<UpstreamOutput> {
        self.model.forward(self.frontend.prepare(waves, device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random weights for a Whisper configuration: an encoder of its sizes behind Whisper's
    /// log-mel front-end (windows of `max_source_positions` frames), seeded.
    #[test]
    fn random_whisper_encoder_has_the_configured_shape() {
        let config = br#"{"model_type": "whisper", "d_model": 16, "encoder_layers": 2,
            "encoder_attention_heads": 2, "encoder_ffn_dim": 32, "num_mel_bins": 8,
            "max_source_positions": 10, "decoder_layers": 1, "decoder_attention_heads": 2,
            "decoder_ffn_dim": 32}"#;
        let device = Device::flex();
        let wave = vec![(0..1000).map(|i| (i as f32 * 0.05).sin()).collect::<Vec<f32>>()];
        let run = |seed| {
            let up = Upstream::random(config, "tiny whisper", seed, &device).unwrap();
            assert!(matches!(up.model, UpstreamModel::Whisper(_)));
            up.forward_waves(&wave, &device).unwrap().hidden_states
        };
        let (a, b, c) = (run(0), run(0), run(1));
        assert_eq!(a.len(), 3, "the input and two layers");
        let vals = |t: &Tensor<3>| t.clone().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        for (x, y) in a.iter().zip(&b) {
            // 3,200 samples (10 positions × 2 × hop 160) of log-mel, padded, then the stride-2 conv.
            assert_eq!(x.dims(), [1, 10, 16]);
            assert_eq!(vals(x), vals(y), "the same seed, the same model");
        }
        assert_ne!(vals(&a[2]), vals(&c[2]), "another seed, other weights");
        assert!(vals(&a[2]).iter().all(|v| v.is_finite()));
    }
}
