//! Reading checkpoint tensors from a Hugging Face model directory: `model.safetensors`, or
//! shards listed in `model.safetensors.index.json`. Tensors are converted to f32 on request, one
//! at a time, so peak memory is the file bytes plus one tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, Metadata};

use crate::{Error, Result};

struct WeightFile {
    path: PathBuf,
    bytes: Vec<u8>,
    data_start: usize,
    meta: Metadata,
}

/// All tensors of a checkpoint, addressed by name relative to a prefix (`wav2vec2.`,
/// `model.encoder.`, ...) so that task-class checkpoints load like base models.
pub struct Weights {
    files: Vec<WeightFile>,
    index: HashMap<String, usize>,
    prefix: String,
}

impl Weights {
    /// Open the weights of a model directory.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.is_file() {
            return Self::open_files(&[single]);
        }
        if index.is_file() {
            let text = read(&index)?;
            let json: serde_json::Value =
                serde_json::from_slice(&text).map_err(|source| Error::Config { path: index.clone(), source })?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::Safetensors { path: index.clone(), reason: "no \"weight_map\" object".into() })?;
            let mut shards: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
            shards.sort();
            shards.dedup();
            return Self::open_files(&shards);
        }
        for bin in ["pytorch_model.bin", "model.bin"] {
            if dir.join(bin).is_file() {
                return Err(Error::PickleCheckpoint { path: dir.join(bin) });
            }
        }
        Err(Error::NoWeights { dir: dir.to_path_buf() })
    }

    /// Open one or more safetensors files as one checkpoint.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for path in paths {
            let bytes = read(path)?;
            let (n, meta) = SafeTensors::read_metadata(&bytes)
                .map_err(|e| Error::Safetensors { path: path.clone(), reason: e.to_string() })?;
            for name in meta.tensors().keys() {
                index.insert(name.clone(), files.len());
            }
            files.push(WeightFile { path: path.clone(), bytes, data_start: 8 + n, meta });
        }
        Ok(Self { files, index, prefix: String::new() })
    }

    /// Use the first candidate prefix under which `probe` exists (e.g. `wav2vec2.` for
    /// `Wav2Vec2ForCTC` checkpoints). Returns the prefix chosen.
    pub fn select_prefix(&mut self, candidates: &[&str], probe: &str) -> Result<&str> {
        match candidates.iter().find(|p| self.index.contains_key(&format!("{p}{probe}"))) {
            Some(p) => {
                self.prefix = p.to_string();
                Ok(&self.prefix)
            }
            None => Err(Error::MissingTensor {
                name: format!("{probe} (under any of the prefixes {candidates:?})"),
                files: self.file_list(),
            }),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether a tensor exists (relative to the prefix).
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(&format!("{}{name}", self.prefix))
    }

    /// All tensor names in the checkpoint, with their full (unprefixed) spelling.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(|s| s.as_str())
    }

    fn file_list(&self) -> String {
        self.files.iter().map(|f| f.path.display().to_string()).collect::<Vec<_>>().join(", ")
    }

    /// A tensor as f32 values, checking its shape.
    pub fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let full = format!("{}{name}", self.prefix);
        let file = self
            .index
            .get(&full)
            .map(|&i| &self.files[i])
            .ok_or_else(|| Error::MissingTensor { name: full.clone(), files: self.file_list() })?;
        let info = file.meta.info(&full).expect("indexed names come from this file's metadata");
        if info.shape != shape {
            return Err(Error::ShapeMismatch {
                name: full,
                file: file.path.clone(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        let (a, b) = info.data_offsets;
        let raw = &file.bytes[file.data_start + a..file.data_start + b];
        let le2 = |c: &[u8]| u16::from_le_bytes([c[0], c[1]]);
        Ok(match info.dtype {
            Dtype::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F16 => raw.chunks_exact(2).map(|c| half::f16::from_bits(le2(c)).to_f32()).collect(),
            Dtype::BF16 => raw.chunks_exact(2).map(|c| half::bf16::from_bits(le2(c)).to_f32()).collect(),
            Dtype::F64 => {
                raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("chunk of 8")) as f32).collect()
            }
            other => {
                return Err(Error::UnsupportedDtype {
                    name: full,
                    file: file.path.clone(),
                    dtype: format!("{other:?}"),
                });
            }
        })
    }

    /// A tensor on `device`, checking its shape.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D], device: &Device) -> Result<Tensor<D>> {
        let v = self.values(name, &shape)?;
        Ok(Tensor::from_data(TensorData::new(v, shape), device))
    }

    /// The shape of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let full = format!("{}{name}", self.prefix);
        self.index.get(&full).and_then(|&i| self.files[i].meta.info(&full)).map(|i| i.shape.clone())
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}
