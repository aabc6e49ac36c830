//! Frozen CNN features kept across epochs.
//!
//! When the convolutional feature encoder of an SSL upstream does not train (every method but
//! BitFit and full fine-tuning with the CNN unfrozen) and the audio is not augmented, its output
//! for an utterance is the same at every epoch. The cache computes it once per training
//! utterance, one utterance at a time (no padding in the CNN), and later batches skip the CNN.
//! For models whose CNN normalises per frame (layer-norm CNNs: wav2vec2-large/XLS-R, WavLM,
//! the built-in tiny model) the valid frames are exactly what a padded batch gives, and padded
//! frames are zeroed before the transformer either way. For group-norm CNNs (wav2vec2-base,
//! HuBERT-base) the first layer normalises over time, so a padded batch sees the padding and
//! the cached, unpadded features are the better-defined of the two.

use std::collections::HashMap;

use burn::prelude::*;
use burn::tensor::TensorData;
use speechtune_models::{FrontEnd, ModelInput, UpstreamModel};

use crate::Result;
use crate::model::count_parameters;

/// Per-utterance CNN output `[frames, channels]` in f32, bounded by a byte budget (utterances
/// that do not fit are computed each time).
pub struct FeatureCache {
    frontend: FrontEnd,
    max_bytes: usize,
    bytes: usize,
    items: HashMap<usize, (usize, Vec<f32>)>,
    channels: usize,
    hits: usize,
    misses: usize,
}

/// What the cache did: utterances served from memory, utterances run through the CNN, bytes held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    pub hits: usize,
    pub misses: usize,
    pub bytes: usize,
}

impl FeatureCache {
    /// A cache for `upstream`, or `None` where its CNN output can change during training
    /// (Whisper, a CNN with trainable parameters).
    pub fn for_model(upstream: &UpstreamModel, frontend: &FrontEnd, max_bytes: usize) -> Option<Self> {
        let UpstreamModel::Ssl(m) = upstream else { return None };
        if count_parameters(&m.feature_encoder).0 > 0 || max_bytes == 0 {
            return None;
        }
        Some(Self {
            frontend: frontend.clone(),
            max_bytes,
            bytes: 0,
            items: HashMap::new(),
            channels: 0,
            hits: 0,
            misses: 0,
        })
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats { hits: self.hits, misses: self.misses, bytes: self.bytes }
    }

    /// The model input for a batch: cached features where present, the CNN run (and its output
    /// kept, while the budget allows) for the rest.
    pub fn input(
        &mut self,
        upstream: &UpstreamModel,
        keys: &[usize],
        waves: &[Vec<f32>],
        device: &Device,
    ) -> Result<ModelInput> {
        let UpstreamModel::Ssl(m) = upstream else { unreachable!("built for SSL upstreams only") };
        let mut fresh: HashMap<usize, (usize, Vec<f32>)> = HashMap::new();
        for (&key, wave) in keys.iter().zip(waves) {
            if self.items.contains_key(&key) || fresh.contains_key(&key) {
                self.hits += 1;
                continue;
            }
            self.misses += 1;
            let ModelInput::Waveform { samples, .. } = self.frontend.prepare(std::slice::from_ref(wave), device)?
            else {
                unreachable!("SSL upstreams take waveforms")
            };
            let features = m.extract_features(samples);
            let [_, frames, channels] = features.dims();
            self.channels = channels;
            let values = features.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
            let size = values.len() * 4;
            if self.bytes + size <= self.max_bytes {
                self.bytes += size;
                self.items.insert(key, (frames, values));
            } else {
                fresh.insert(key, (frames, values));
            }
        }
        let get = |k: &usize| self.items.get(k).or_else(|| fresh.get(k)).expect("computed above");
        let frame_lengths: Vec<usize> = keys.iter().map(|k| get(k).0).collect();
        let max = frame_lengths.iter().copied().max().unwrap_or(0);
        let c = self.channels;
        let mut flat = vec![0.0f32; keys.len() * max * c];
        for (i, k) in keys.iter().enumerate() {
            let (frames, values) = get(k);
            flat[i * max * c..(i * max + frames) * c].copy_from_slice(values);
        }
        let features = Tensor::from_data(TensorData::new(flat, [keys.len(), max, c]), device);
        Ok(ModelInput::CnnFeatures { features, frame_lengths })
    }
}
