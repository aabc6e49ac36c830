//! Frozen computation kept across epochs: the upstream's hidden states when none of it trains,
//! or else its CNN features when only the CNN is frozen.
//!
//! **Hidden states** (method `frozen`, no masking or LayerDrop): the upstream's output for an
//! utterance is the same at every epoch, so it runs once per training utterance and later
//! epochs train the featurizer and heads alone — the s3prl / ML-SUPERB setting, where the
//! upstream is most of the cost.
//!
//! **CNN features**: when the convolutional feature encoder of an SSL upstream does not train
//! (every method but BitFit and full fine-tuning with the CNN unfrozen), its output is the same
//! at every epoch (masking and LayerDrop act after it). For models whose CNN normalises per
//! frame (layer-norm CNNs: wav2vec2-large/XLS-R, WavLM, the built-in tiny model) the valid
//! frames are exactly what a padded batch gives, and padded frames are zeroed before the
//! transformer either way. For group-norm CNNs (wav2vec2-base, HuBERT-base) the first layer
//! normalises over time, so a padded batch sees the padding and the cached, unpadded features
//! are the better-defined of the two.
//!
//! Both are computed one utterance at a time (no padding) and held in memory up to a byte
//! budget, in f32 or, with `data.cache_f16`, in f16. Values are always served as stored (also on
//! the step that computes them), so a run resumed with an empty cache repeats the same numbers.

use std::collections::HashMap;

use burn::prelude::*;
use burn::tensor::TensorData;
use half::f16;
use speechtune_models::{FrontEnd, ModelInput, UpstreamModel, UpstreamOutput};

use crate::Result;
use crate::model::count_parameters;

/// What is cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheKind {
    HiddenStates,
    CnnFeatures,
}

enum Values {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Values {
    fn new(v: Vec<f32>, half: bool) -> Self {
        if half { Values::F16(v.into_iter().map(f16::from_f32).collect()) } else { Values::F32(v) }
    }

    fn bytes(&self) -> usize {
        match self {
            Values::F32(v) => v.len() * 4,
            Values::F16(v) => v.len() * 2,
        }
    }

    fn copy_into(&self, start: usize, len: usize, out: &mut [f32]) {
        match self {
            Values::F32(v) => out.copy_from_slice(&v[start..start + len]),
            Values::F16(v) => out.iter_mut().zip(&v[start..start + len]).for_each(|(o, h)| *o = h.to_f32()),
        }
    }
}

/// One utterance: `parts` tensors `[frames, width]` back to back.
struct Entry {
    frames: usize,
    values: Values,
}

/// Per-utterance upstream outputs, bounded by a byte budget (utterances that do not fit are
/// computed each time).
pub struct FeatureCache {
    kind: CacheKind,
    frontend: FrontEnd,
    max_bytes: usize,
    half: bool,
    bytes: usize,
    items: HashMap<usize, Entry>,
    /// Tensors per utterance (hidden states, or 1) and their width.
    parts: usize,
    width: usize,
    hits: usize,
    misses: usize,
}

/// What the cache did: utterances served from memory, utterances computed, bytes held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    pub kind: CacheKind,
    pub hits: usize,
    pub misses: usize,
    pub bytes: usize,
}

impl FeatureCache {
    /// A cache for `upstream`: of its hidden states where nothing in it trains and
    /// `perturbed` (masking, LayerDrop) is false; else of its CNN features where the CNN is
    /// frozen (SSL upstreams); else `None`. `max_bytes` 0 turns caching off.
    pub fn for_model(
        upstream: &UpstreamModel,
        frontend: &FrontEnd,
        perturbed: bool,
        max_bytes: usize,
        half: bool,
    ) -> Option<Self> {
        let kind = if count_parameters(upstream).0 == 0 && !perturbed {
            CacheKind::HiddenStates
        } else if let UpstreamModel::Ssl(m) = upstream
            && count_parameters(&m.feature_encoder).0 == 0
        {
            CacheKind::CnnFeatures
        } else {
            return None;
        };
        (max_bytes > 0).then(|| Self {
            kind,
            frontend: frontend.clone(),
            max_bytes,
            half,
            bytes: 0,
            items: HashMap::new(),
            parts: 0,
            width: 0,
            hits: 0,
            misses: 0,
        })
    }

    pub fn kind(&self) -> CacheKind {
        self.kind
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats { kind: self.kind, hits: self.hits, misses: self.misses, bytes: self.bytes }
    }

    /// Compute what is missing of `keys`; returns the entries computed but not kept.
    fn fill(
        &mut self,
        upstream: &UpstreamModel,
        keys: &[usize],
        waves: &[Vec<f32>],
        device: &Device,
    ) -> Result<HashMap<usize, Entry>> {
        let mut fresh = HashMap::new();
        for (&key, wave) in keys.iter().zip(waves) {
            if self.items.contains_key(&key) || fresh.contains_key(&key) {
                self.hits += 1;
                continue;
            }
            self.misses += 1;
            let input = self.frontend.prepare(std::slice::from_ref(wave), device)?;
            let tensors: Vec<Tensor<3>> = match (self.kind, upstream, input) {
                (CacheKind::CnnFeatures, UpstreamModel::Ssl(m), ModelInput::Waveform { samples, .. }) => {
                    vec![m.extract_features(samples)]
                }
                (CacheKind::CnnFeatures, ..) => unreachable!("CNN features are cached for SSL upstreams only"),
                (CacheKind::HiddenStates, _, input) => {
                    let out = upstream.forward(input)?;
                    let frames = out.frame_lengths.first().copied().unwrap_or(0);
                    out.hidden_states.into_iter().map(|h| h.narrow(1, 0, frames)).collect()
                }
            };
            let [_, frames, width] = tensors[0].dims();
            self.parts = tensors.len();
            self.width = width;
            let mut values = Vec::with_capacity(self.parts * frames * width);
            for t in tensors {
                values.extend(t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default());
            }
            let entry = Entry { frames, values: Values::new(values, self.half) };
            let size = entry.values.bytes();
            if self.bytes + size <= self.max_bytes {
                self.bytes += size;
                self.items.insert(key, entry);
            } else {
                fresh.insert(key, entry);
            }
        }
        Ok(fresh)
    }

    /// The batch's tensors `[batch, max frames, width]`, zero-padded, one per part, and the
    /// valid frames of each item.
    fn batch(&self, keys: &[usize], fresh: &HashMap<usize, Entry>, device: &Device) -> (Vec<Tensor<3>>, Vec<usize>) {
        let get = |k: &usize| self.items.get(k).or_else(|| fresh.get(k)).expect("filled above");
        let frame_lengths: Vec<usize> = keys.iter().map(|k| get(k).frames).collect();
        let max = frame_lengths.iter().copied().max().unwrap_or(0);
        let w = self.width;
        let tensors = (0..self.parts)
            .map(|p| {
                let mut flat = vec![0.0f32; keys.len() * max * w];
                for (i, k) in keys.iter().enumerate() {
                    let e = get(k);
                    let len = e.frames * w;
                    e.values.copy_into(p * len, len, &mut flat[i * max * w..i * max * w + len]);
                }
                Tensor::from_data(TensorData::new(flat, [keys.len(), max, w]), device)
            })
            .collect();
        (tensors, frame_lengths)
    }

    /// CNN cache: the model input for a batch (cached features where present, the CNN run for
    /// the rest).
    pub fn input(
        &mut self,
        upstream: &UpstreamModel,
        keys: &[usize],
        waves: &[Vec<f32>],
        device: &Device,
    ) -> Result<ModelInput> {
        debug_assert_eq!(self.kind, CacheKind::CnnFeatures);
        let fresh = self.fill(upstream, keys, waves, device)?;
        let (mut t, frame_lengths) = self.batch(keys, &fresh, device);
        Ok(ModelInput::CnnFeatures { features: t.remove(0), frame_lengths })
    }

    /// Hidden-state cache: the upstream's output for a batch, padded frames zero.
    pub fn output(
        &mut self,
        upstream: &UpstreamModel,
        keys: &[usize],
        waves: &[Vec<f32>],
        device: &Device,
    ) -> Result<UpstreamOutput> {
        debug_assert_eq!(self.kind, CacheKind::HiddenStates);
        let fresh = self.fill(upstream, keys, waves, device)?;
        let (hidden_states, frame_lengths) = self.batch(keys, &fresh, device);
        Ok(UpstreamOutput { hidden_states, frame_lengths })
    }
}
