//! An adapted upstream written back as a Hugging Face model directory: every tensor of the
//! source checkpoint under its own name, with each projection's weight replaced by what the
//! model computes with (weight ⊙ mask for S3-Router or magnitude pruning, LoRA merged in), plus
//! the binary masks and a per-layer sparsity report. transformers loads the folder like the
//! source (`Wav2Vec2Model.from_pretrained(DIR)`), and the pruned weights are exact zeros.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use burn::prelude::*;

use crate::peft::{transpose, values};
use crate::upstream::TINY_CONFIG;
use crate::weights::{Weights, write_atomic, write_bool_safetensors, write_safetensors};
use crate::{Error, Result, Upstream, UpstreamModel, builtin};

/// Where an upstream's weights come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A Hugging Face model directory, or a Hub id (`owner/name[@revision]`) fetched into the
    /// Hugging Face cache when no such directory exists.
    Dir(PathBuf),
    /// The built-in tiny model with this seed (`builtin:tiny`).
    Tiny(u64),
    /// The built-in pretrained tiny model (`builtin:tiny-pretrained`).
    TinyPretrained,
}

impl Source {
    /// A built-in name (see [`crate::builtin`]) or a directory, as run configs name upstreams;
    /// `seed` is for `builtin:tiny`.
    pub fn parse(model: &str, seed: u64) -> Self {
        match model {
            builtin::TINY => Source::Tiny(seed),
            builtin::TINY_PRETRAINED => Source::TinyPretrained,
            dir => Source::Dir(PathBuf::from(dir)),
        }
    }

    /// Build the upstream; the weights list every tensor it read.
    pub fn open(&self, device: &Device) -> Result<(Upstream, Weights)> {
        match self {
            Source::Dir(d) if !d.exists() && d.to_string_lossy().starts_with("builtin:") => Err(Error::Input(format!(
                "{} is not a built-in model (built in: {})",
                d.display(),
                builtin::NAMES.join(", ")
            ))),
            Source::Dir(d) => Upstream::load_with_weights(&crate::hub::resolve(d)?, device),
            Source::Tiny(seed) => Upstream::tiny_with_weights(*seed, device),
            Source::TinyPretrained => Upstream::tiny_pretrained_with_weights(device),
        }
    }
}

/// One masked (or merged) projection in the export.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LayerSparsity {
    /// The weight's name in the checkpoint.
    pub name: String,
    pub weights: usize,
    pub kept: usize,
}

impl LayerSparsity {
    pub fn sparsity(&self) -> f64 {
        1.0 - self.kept as f64 / self.weights.max(1) as f64
    }
}

/// `layer,weights,kept,sparsity` with a `total` row.
pub fn sparsity_csv(layers: &[LayerSparsity]) -> String {
    let mut out = String::from("layer,weights,kept,sparsity\n");
    for l in layers {
        out += &format!("{},{},{},{:.6}\n", l.name, l.weights, l.kept, l.sparsity());
    }
    let total = LayerSparsity {
        name: "total".into(),
        weights: layers.iter().map(|l| l.weights).sum(),
        kept: layers.iter().map(|l| l.kept).sum(),
    };
    out += &format!("total,{},{},{:.6}\n", total.weights, total.kept, total.sparsity());
    out
}

/// Write `model` (built from `source`, with masks and/or LoRA attached) to `out`:
/// `config.json`, `preprocessor_config.json`, `model.safetensors`, `masks.safetensors` (bool,
/// `[out, in]`, named as the weights; only where masks exist) and `sparsity.csv`. The folder is
/// written under a temporary name and renamed. Returns the per-layer sparsity.
pub fn export_hf(source: &Source, model: &UpstreamModel, out: &Path) -> Result<Vec<LayerSparsity>> {
    let device = Device::flex();
    let (fresh, weights) = source.open(&device)?;
    let prefix = fresh.prefix.clone();
    let masks = model.mask_state(&prefix);
    let layers: Vec<LayerSparsity> = masks
        .iter()
        .map(|(name, _, m)| LayerSparsity {
            name: name.clone(),
            weights: m.len(),
            kept: m.iter().filter(|&&k| k).count(),
        })
        .collect();
    // Masks are already computed above (a top-k per layer): apply them in PyTorch's layout.
    let by_name: HashMap<&str, &Vec<bool>> = masks.iter().map(|(n, _, m)| (n.as_str(), m)).collect();
    let mut replaced: HashMap<String, Vec<f32>> = HashMap::new();
    for p in model.projections() {
        if p.mask.is_none() && p.lora.is_none() {
            continue;
        }
        let (d_in, d_out) = (p.d_in(), p.d_out());
        let mut w = transpose(&values(p.weight_f32()), d_in, d_out);
        if let Some(keep) = by_name.get(format!("{prefix}{}.weight", p.name).as_str()) {
            for (x, &k) in w.iter_mut().zip(keep.iter()) {
                if !k {
                    *x = 0.0;
                }
            }
        }
        if let Some(l) = &p.lora {
            for (x, d) in w.iter_mut().zip(transpose(&values(l.delta()), d_in, d_out)) {
                *x += d;
            }
        }
        replaced.insert(format!("{}.weight", p.name), w);
    }
    let mut seen = HashSet::new();
    let mut tensors = Vec::new();
    for (name, shape) in weights.requested() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let v = match replaced.remove(&name) {
            Some(v) => {
                if v.len() != shape.iter().product::<usize>() {
                    return Err(Error::Input(format!("{name}: the adapted weight does not match shape {shape:?}")));
                }
                v
            }
            None => weights.values(&name, &shape)?,
        };
        tensors.push((format!("{prefix}{name}"), shape, v));
    }
    if let Some(name) = replaced.keys().next() {
        return Err(Error::Input(format!("{name} is not a tensor of the source checkpoint")));
    }

    let tmp = out.with_extension("tmp-export");
    let _ = std::fs::remove_dir_all(&tmp);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&tmp.join("model.safetensors"), &tensors, meta.clone())?;
    if !masks.is_empty() {
        write_bool_safetensors(&tmp.join("masks.safetensors"), &masks, meta)?;
        write_atomic(&tmp.join("sparsity.csv"), sparsity_csv(&layers).as_bytes())?;
    }
    match source {
        Source::Dir(d) => {
            for f in ["config.json", "preprocessor_config.json"] {
                if d.join(f).is_file() {
                    std::fs::copy(d.join(f), tmp.join(f)).map_err(io(&d.join(f)))?;
                }
            }
        }
        Source::TinyPretrained => {
            for (name, bytes) in builtin::TINY_PRETRAINED_FILES {
                if name.ends_with(".json") {
                    write_atomic(&tmp.join(name), bytes)?;
                }
            }
        }
        Source::Tiny(_) => {
            write_atomic(&tmp.join("config.json"), TINY_CONFIG.as_bytes())?;
            let pp = r#"{"feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": 16000, "padding_value": 0.0, "do_normalize": true, "return_attention_mask": true}"#;
            write_atomic(&tmp.join("preprocessor_config.json"), pp.as_bytes())?;
        }
    }
    let _ = std::fs::remove_dir_all(out);
    std::fs::rename(&tmp, out).map_err(io(out))?;
    Ok(layers)
}
