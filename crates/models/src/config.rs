//! Checkpoint `config.json` files, deserialised with transformers' field names and defaults.
//! Unknown fields are ignored.

use std::path::Path;

use serde::Deserialize;

use crate::{Error, Result};

/// The model types speechtune loads, as `config.json` spells them.
pub const SUPPORTED_MODEL_TYPES: [&str; 5] = ["wav2vec2", "hubert", "data2vec-audio", "wavlm", "whisper"];

fn d_hidden() -> usize {
    768
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    12
}
fn d_ffn() -> usize {
    3072
}
fn d_gelu() -> String {
    "gelu".into()
}
fn d_eps() -> f64 {
    1e-5
}
fn d_group() -> String {
    "group".into()
}
fn d_conv_dim() -> Vec<usize> {
    vec![512; 7]
}
fn d_conv_stride() -> Vec<usize> {
    vec![5, 2, 2, 2, 2, 2, 2]
}
fn d_conv_kernel() -> Vec<usize> {
    vec![10, 3, 3, 3, 3, 2, 2]
}
fn d_pos_groups() -> usize {
    16
}
fn d_pos_kernel() -> usize {
    19
}
fn d_true() -> bool {
    true
}
fn d_buckets() -> usize {
    320
}
fn d_bucket_distance() -> usize {
    800
}
fn d_mask_time_prob() -> f64 {
    0.05
}
fn d_mask_len() -> usize {
    10
}
fn d_layerdrop() -> f64 {
    0.1
}
fn d_two() -> usize {
    2
}
fn d_codevectors() -> usize {
    320
}
fn d_codevector_dim() -> usize {
    256
}
fn d_contrastive_temperature() -> f64 {
    0.1
}
fn d_negatives() -> usize {
    100
}
fn d_diversity() -> f64 {
    0.1
}
fn d_init_range() -> f64 {
    0.02
}

/// wav2vec2, XLS-R, HuBERT, data2vec-audio and WavLM share this configuration
/// (`Wav2Vec2Config`, `HubertConfig`, `Data2VecAudioConfig`, `WavLMConfig`).
#[derive(Debug, Clone, Deserialize)]
pub struct SslConfig {
    pub model_type: String,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_ffn")]
    pub intermediate_size: usize,
    #[serde(default = "d_gelu")]
    pub hidden_act: String,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// "group" (base models: GroupNorm after the first conv only) or "layer" (large models).
    /// data2vec-audio always uses layer norm and has no such field.
    #[serde(default = "d_group")]
    pub feat_extract_norm: String,
    #[serde(default = "d_gelu")]
    pub feat_extract_activation: String,
    #[serde(default = "d_conv_dim")]
    pub conv_dim: Vec<usize>,
    #[serde(default = "d_conv_stride")]
    pub conv_stride: Vec<usize>,
    #[serde(default = "d_conv_kernel")]
    pub conv_kernel: Vec<usize>,
    #[serde(default)]
    pub conv_bias: bool,
    /// Kernel of the positional conv (wav2vec2, HuBERT, WavLM) or, for data2vec-audio, the
    /// number of stacked positional conv layers. Defaults per model type (128 or 5).
    pub num_conv_pos_embeddings: Option<usize>,
    #[serde(default = "d_pos_groups")]
    pub num_conv_pos_embedding_groups: usize,
    /// data2vec-audio: kernel of each positional conv layer.
    #[serde(default = "d_pos_kernel")]
    pub conv_pos_kernel_size: usize,
    /// Pre-LN transformer with a final layer norm (large models, XLS-R).
    #[serde(default)]
    pub do_stable_layer_norm: bool,
    /// HuBERT: layer norm before the feature projection.
    #[serde(default = "d_true")]
    pub feat_proj_layer_norm: bool,
    /// HuBERT: batch-norm positional conv instead of weight norm (not in released checkpoints).
    #[serde(default)]
    pub conv_pos_batch_norm: bool,
    /// WavLM relative position buckets.
    #[serde(default = "d_buckets")]
    pub num_buckets: usize,
    #[serde(default = "d_bucket_distance")]
    pub max_bucket_distance: usize,
    /// wav2vec2 attention adapters (MMS); not supported.
    pub adapter_attn_dim: Option<usize>,
    // SpecAugment and LayerDrop settings, used when fine-tuning.
    #[serde(default = "d_mask_time_prob")]
    pub mask_time_prob: f64,
    #[serde(default = "d_mask_len")]
    pub mask_time_length: usize,
    #[serde(default)]
    pub mask_feature_prob: f64,
    #[serde(default = "d_mask_len")]
    pub mask_feature_length: usize,
    #[serde(default = "d_layerdrop")]
    pub layerdrop: f64,
    // Pre-training (`Wav2Vec2ForPreTraining`): the quantizer and the contrastive task.
    #[serde(default = "d_two")]
    pub mask_time_min_masks: usize,
    #[serde(default = "d_two")]
    pub num_codevector_groups: usize,
    #[serde(default = "d_codevectors")]
    pub num_codevectors_per_group: usize,
    #[serde(default = "d_codevector_dim")]
    pub codevector_dim: usize,
    #[serde(default = "d_codevector_dim")]
    pub proj_codevector_dim: usize,
    #[serde(default = "d_contrastive_temperature")]
    pub contrastive_logits_temperature: f64,
    #[serde(default = "d_negatives")]
    pub num_negatives: usize,
    #[serde(default = "d_diversity")]
    pub diversity_loss_weight: f64,
    /// Standard deviation of the normal initialisation of linear layers.
    #[serde(default = "d_init_range")]
    pub initializer_range: f64,
}

impl SslConfig {
    pub fn is_data2vec(&self) -> bool {
        self.model_type == "data2vec-audio"
    }

    pub fn is_wavlm(&self) -> bool {
        self.model_type == "wavlm"
    }

    /// Positional conv kernel (wav2vec2/HuBERT/WavLM) or layer count (data2vec-audio).
    pub fn pos_conv_param(&self) -> usize {
        self.num_conv_pos_embeddings.unwrap_or(if self.is_data2vec() { 5 } else { 128 })
    }

    /// Whether every conv layer of the feature encoder has a layer norm.
    pub fn layer_norm_convs(&self) -> bool {
        self.is_data2vec() || self.feat_extract_norm == "layer"
    }
}

fn d_mels() -> usize {
    80
}
fn d_source_positions() -> usize {
    1500
}

/// `WhisperConfig`: the encoder's fields, and the decoder's with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct WhisperConfig {
    pub d_model: usize,
    pub encoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub encoder_ffn_dim: usize,
    #[serde(default = "d_mels")]
    pub num_mel_bins: usize,
    #[serde(default = "d_source_positions")]
    pub max_source_positions: usize,
    #[serde(default = "d_gelu")]
    pub activation_function: String,
    #[serde(default = "d_whisper_decoder_layers")]
    pub decoder_layers: usize,
    #[serde(default = "d_whisper_decoder_heads")]
    pub decoder_attention_heads: usize,
    #[serde(default = "d_whisper_decoder_ffn")]
    pub decoder_ffn_dim: usize,
    #[serde(default = "d_whisper_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_whisper_target_positions")]
    pub max_target_positions: usize,
    #[serde(default)]
    pub scale_embedding: bool,
    #[serde(default = "d_whisper_start")]
    pub decoder_start_token_id: u32,
    #[serde(default = "d_whisper_eos")]
    pub eos_token_id: u32,
    #[serde(default = "d_whisper_eos")]
    pub pad_token_id: u32,
}

fn d_whisper_decoder_layers() -> usize {
    4
}
fn d_whisper_decoder_heads() -> usize {
    6
}
fn d_whisper_decoder_ffn() -> usize {
    1536
}
fn d_whisper_vocab() -> usize {
    51865
}
fn d_whisper_target_positions() -> usize {
    448
}
fn d_whisper_start() -> u32 {
    50257
}
fn d_whisper_eos() -> u32 {
    50256
}

/// A parsed `config.json`, dispatched on `model_type`.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per loaded model
pub enum ModelConfig {
    Ssl(SslConfig),
    Whisper(WhisperConfig),
}

impl ModelConfig {
    /// Read `DIR/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        if !path.is_file() {
            return Err(Error::MissingConfig { dir: dir.to_path_buf() });
        }
        let text = std::fs::read(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        Self::from_json(&text, &path)
    }

    pub fn from_json(text: &[u8], path: &Path) -> Result<Self> {
        let parse = |e| Error::Config { path: path.to_path_buf(), source: e };
        let value: serde_json::Value = serde_json::from_slice(text).map_err(parse)?;
        let model_type = value.get("model_type").and_then(|v| v.as_str()).unwrap_or("").to_string();
        let cfg = match model_type.as_str() {
            "wav2vec2" | "hubert" | "data2vec-audio" | "wavlm" => {
                let c: SslConfig = serde_json::from_value(value).map_err(parse)?;
                let unsupported = |what: &str| Error::Unsupported { path: path.to_path_buf(), what: what.into() };
                if c.conv_pos_batch_norm {
                    return Err(unsupported("conv_pos_batch_norm = true"));
                }
                if c.adapter_attn_dim.is_some() {
                    return Err(unsupported("adapter_attn_dim (wav2vec2 attention adapters)"));
                }
                if c.conv_dim.len() != c.conv_kernel.len() || c.conv_dim.len() != c.conv_stride.len() {
                    return Err(unsupported("conv_dim, conv_kernel and conv_stride of different lengths"));
                }
                if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
                    return Err(unsupported("hidden_size not divisible by num_attention_heads"));
                }
                let groups = c.num_conv_pos_embedding_groups;
                if groups == 0 || !c.hidden_size.is_multiple_of(groups) {
                    return Err(unsupported("hidden_size not divisible by num_conv_pos_embedding_groups"));
                }
                let sizes = [c.hidden_size, c.intermediate_size, c.conv_pos_kernel_size, c.pos_conv_param()];
                if sizes.contains(&0)
                    || c.conv_dim.is_empty()
                    || [&c.conv_dim, &c.conv_kernel, &c.conv_stride].iter().any(|v| v.contains(&0))
                {
                    return Err(unsupported("a zero size (hidden, FFN, convolution or positional conv)"));
                }
                if c.num_codevector_groups == 0 || !c.codevector_dim.is_multiple_of(c.num_codevector_groups) {
                    return Err(unsupported("codevector_dim not divisible by num_codevector_groups"));
                }
                if !(c.layer_norm_eps.is_finite() && c.layer_norm_eps >= 0.0) {
                    return Err(unsupported("a negative or non-finite layer_norm_eps"));
                }
                ModelConfig::Ssl(c)
            }
            "whisper" => {
                let c: WhisperConfig = serde_json::from_value(value).map_err(parse)?;
                let unsupported = |what: &str| Error::Unsupported { path: path.to_path_buf(), what: what.into() };
                for (d, h) in [(c.d_model, c.encoder_attention_heads), (c.d_model, c.decoder_attention_heads)] {
                    if h == 0 || !d.is_multiple_of(h) {
                        return Err(unsupported("d_model not divisible by the number of attention heads"));
                    }
                }
                if [c.d_model, c.num_mel_bins, c.max_source_positions, c.encoder_ffn_dim].contains(&0) {
                    return Err(unsupported("a zero size (d_model, num_mel_bins, max_source_positions, FFN)"));
                }
                ModelConfig::Whisper(c)
            }
            _ => {
                return Err(Error::UnsupportedModelType {
                    path: path.to_path_buf(),
                    model_type: if model_type.is_empty() { "(missing)".into() } else { model_type },
                    supported: SUPPORTED_MODEL_TYPES.to_vec(),
                });
            }
        };
        Ok(cfg)
    }

    pub fn model_type(&self) -> &str {
        match self {
            ModelConfig::Ssl(c) => &c.model_type,
            ModelConfig::Whisper(_) => "whisper",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_transformers_defaults() {
        let c = ModelConfig::from_json(br#"{"model_type": "wav2vec2"}"#, Path::new("c.json")).unwrap();
        let ModelConfig::Ssl(c) = c else { panic!("expected an SSL config") };
        assert_eq!((c.hidden_size, c.num_hidden_layers, c.pos_conv_param()), (768, 12, 128));
        assert_eq!(c.conv_stride.iter().product::<usize>(), 320);
        assert!(!c.layer_norm_convs() && !c.do_stable_layer_norm);
        let c = ModelConfig::from_json(br#"{"model_type": "data2vec-audio"}"#, Path::new("c.json")).unwrap();
        let ModelConfig::Ssl(c) = c else { panic!("expected an SSL config") };
        assert_eq!(c.pos_conv_param(), 5);
        assert!(c.layer_norm_convs());
    }

    #[test]
    fn unknown_model_type_lists_supported() {
        let e = ModelConfig::from_json(br#"{"model_type": "bert"}"#, Path::new("x/config.json")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("x/config.json") && msg.contains("\"bert\"") && msg.contains("wavlm, whisper"), "{msg}");
    }
}
