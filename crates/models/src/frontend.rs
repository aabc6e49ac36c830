//! Turning 16-kHz waveforms into model input, as the checkpoint's `preprocessor_config.json` says.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::TensorData;
use serde::Deserialize;
use speechtune_audio::logmel::{LogMelConfig, log_mel};
use speechtune_audio::zero_mean_unit_var;

use crate::config::ModelConfig;
use crate::{Error, Result};

#[derive(Debug, Default, Deserialize)]
struct PreprocessorConfig {
    do_normalize: Option<bool>,
    sampling_rate: Option<u32>,
    feature_size: Option<usize>,
    n_fft: Option<usize>,
    hop_length: Option<usize>,
    n_samples: Option<usize>,
}

/// How raw audio becomes model input.
#[derive(Debug, Clone, PartialEq)]
pub enum FrontEnd {
    /// wav2vec2-style models: the waveform itself, optionally normalised per utterance.
    Waveform { normalize: bool },
    /// Whisper: log-mel features.
    LogMel { config: LogMelConfig, normalize: bool },
}

/// A padded batch ready for the model.
#[derive(Debug, Clone)]
pub enum ModelInput {
    /// `[batch, samples]` and the valid samples of each item.
    Waveform { samples: Tensor<2>, lengths: Vec<usize> },
    /// `[batch, n_mels, frames]` and the valid audio samples of each item.
    LogMel { features: Tensor<3>, lengths: Vec<usize> },
    /// An SSL model's CNN output computed earlier (`SslModel::extract_features`, one utterance
    /// at a time), zero-padded to `[batch, frames, channels]`, and the valid frames of each item.
    CnnFeatures { features: Tensor<3>, frame_lengths: Vec<usize> },
}

impl FrontEnd {
    /// Read `DIR/preprocessor_config.json`; when absent, no normalisation (and for Whisper, the
    /// released models' 30-s log-mel front-end).
    pub fn from_dir(dir: &Path, model: &ModelConfig) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        let text = if path.is_file() {
            Some(std::fs::read(&path).map_err(|source| Error::Io { path: path.clone(), source })?)
        } else {
            None
        };
        Self::from_json(text.as_deref(), &path, model)
    }

    /// The front-end a `preprocessor_config.json` text describes (`None`: the file is absent);
    /// `path` names it in errors.
    pub fn from_json(text: Option<&[u8]>, path: &Path, model: &ModelConfig) -> Result<Self> {
        let path = path.to_path_buf();
        let pp: PreprocessorConfig = match text {
            Some(text) => {
                serde_json::from_slice(text).map_err(|source| Error::Config { path: path.clone(), source })?
            }
            None => PreprocessorConfig::default(),
        };
        if let Some(sr) = pp.sampling_rate.filter(|&sr| sr != speechtune_audio::SAMPLE_RATE) {
            return Err(Error::Unsupported {
                path,
                what: format!("sampling_rate {sr} (speechtune models run at 16 kHz)"),
            });
        }
        let normalize = pp.do_normalize.unwrap_or(false);
        Ok(match model {
            ModelConfig::Ssl(_) => FrontEnd::Waveform { normalize },
            ModelConfig::Whisper(c) => {
                let mut config = LogMelConfig::whisper(pp.feature_size.unwrap_or(c.num_mel_bins));
                config.n_fft = pp.n_fft.unwrap_or(config.n_fft);
                config.hop_length = pp.hop_length.unwrap_or(config.hop_length);
                config.n_samples = Some(pp.n_samples.unwrap_or(c.max_source_positions * 2 * config.hop_length));
                FrontEnd::LogMel { config, normalize }
            }
        })
    }

    /// Whisper's non-standard unpadded mode: features cover only the audio.
    pub fn unpadded(mut self) -> Self {
        if let FrontEnd::LogMel { config, .. } = &mut self {
            config.n_samples = None;
        }
        self
    }

    /// Prepare a batch of 16-kHz mono waveforms (zero-padded to the longest).
    pub fn prepare(&self, waves: &[Vec<f32>], device: &Device) -> Result<ModelInput> {
        if waves.is_empty() || waves.iter().any(|w| w.is_empty()) {
            return Err(Error::Input("empty batch or empty waveform".into()));
        }
        let lengths: Vec<usize> = waves.iter().map(|w| w.len()).collect();
        let prepared: Vec<Vec<f32>> =
            waves.iter().map(|w| if self.normalizes() { zero_mean_unit_var(w) } else { w.clone() }).collect();
        match self {
            FrontEnd::Waveform { .. } => {
                let max = *lengths.iter().max().expect("non-empty batch");
                let mut flat = vec![0.0f32; waves.len() * max];
                for (i, w) in prepared.iter().enumerate() {
                    flat[i * max..i * max + w.len()].copy_from_slice(w);
                }
                let samples = Tensor::from_data(TensorData::new(flat, [waves.len(), max]), device);
                Ok(ModelInput::Waveform { samples, lengths })
            }
            FrontEnd::LogMel { config, .. } => {
                let mut config = config.clone();
                if config.n_samples.is_none() {
                    // Unpadded batches still need one length: the longest item.
                    config.n_samples = Some(*lengths.iter().max().expect("non-empty batch"));
                }
                let mels: Vec<_> = prepared.iter().map(|w| log_mel(w, &config)).collect();
                let (n_mels, frames) = (mels[0].n_mels, mels[0].frames);
                let flat: Vec<f32> = mels.into_iter().flat_map(|m| m.data).collect();
                let features = Tensor::from_data(TensorData::new(flat, [waves.len(), n_mels, frames]), device);
                Ok(ModelInput::LogMel { features, lengths })
            }
        }
    }

    fn normalizes(&self) -> bool {
        match self {
            FrontEnd::Waveform { normalize } | FrontEnd::LogMel { normalize, .. } => *normalize,
        }
    }

    /// Whether Whisper features are padded to the model's fixed window (the standard).
    pub fn is_padded(&self) -> bool {
        !matches!(self, FrontEnd::LogMel { config, .. } if config.n_samples.is_none())
    }
}
