//! Reading checkpoint tensors from a Hugging Face model directory: `model.safetensors`, shards
//! listed in `model.safetensors.index.json`, or PyTorch's `pytorch_model.bin` (read without
//! executing pickle code, see `torch_zip`). Tensors are converted to f32 on request, one at a
//! time, so peak memory is the file bytes plus one tensor.

mod init;
mod pickle;
mod save;
mod torch_zip;

pub use save::{write_atomic, write_bool_safetensors, write_safetensors};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use safetensors::SafeTensors;

use crate::{Error, Result};

/// Element types found in checkpoints.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    /// Boolean tensors (masks), read as 0.0 / 1.0.
    Bool,
    /// Integer tensors (e.g. BatchNorm counters): never loaded as weights.
    Other(&'static str),
}

impl DType {
    fn size(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 => 4,
            DType::F64 => 8,
            DType::Bool | DType::Other(_) => 1,
        }
    }
}

/// Where one tensor's elements are in its file.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Element strides; row-major when `None`.
    strides: Option<Vec<usize>>,
    /// Byte offset of element 0 in the file.
    offset: usize,
}

struct WeightFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

/// All tensors of a checkpoint, addressed by name relative to a prefix (`wav2vec2.`,
/// `model.encoder.`, ...) so that task-class checkpoints load like base models.
pub struct Weights {
    files: Vec<WeightFile>,
    index: HashMap<String, Entry>,
    prefix: String,
    /// Random initialisation instead of a checkpoint (see [`Weights::random`]).
    random: Option<u64>,
    /// With `random`: transformers' initialisation with this `initializer_range` (see
    /// [`Weights::transformers_init`]) instead of fan-in scaled normals.
    transformers_init: Option<f64>,
    /// Every tensor read so far, relative to the prefix, with its shape, in order.
    requested: std::sync::Mutex<Vec<(String, Vec<usize>)>>,
}

impl Weights {
    /// Open the weights of a model directory.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.is_file() {
            return Self::open_safetensors(&[single]);
        }
        if index.is_file() {
            let text = read(&index)?;
            let text = String::from_utf8(text)
                .map_err(|_| Error::Safetensors { path: index.clone(), reason: "not UTF-8".into() })?;
            let mut shards: Vec<PathBuf> =
                crate::hub::shards_of_index(&text, &index)?.into_iter().map(|f| dir.join(f)).collect();
            shards.sort();
            return Self::open_safetensors(&shards);
        }
        let bin = dir.join("pytorch_model.bin");
        if bin.is_file() {
            return Self::open_torch(&bin);
        }
        Err(Error::NoWeights { dir: dir.to_path_buf() })
    }

    /// Open one or more safetensors files as one checkpoint.
    pub fn open_safetensors(paths: &[PathBuf]) -> Result<Self> {
        let files = paths.iter().map(|p| Ok((p.clone(), read(p)?))).collect::<Result<Vec<_>>>()?;
        Self::from_safetensors_bytes(files)
    }

    /// Safetensors files already in memory (the built-in pretrained model), each with the path
    /// errors name it by.
    pub fn from_safetensors_bytes(contents: Vec<(PathBuf, Vec<u8>)>) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (path, bytes) in contents {
            let (n, meta) = SafeTensors::read_metadata(&bytes)
                .map_err(|e| Error::Safetensors { path: path.clone(), reason: e.to_string() })?;
            for (name, info) in meta.tensors() {
                use safetensors::Dtype as S;
                let dtype = match info.dtype {
                    S::F32 => DType::F32,
                    S::F16 => DType::F16,
                    S::BF16 => DType::BF16,
                    S::F64 => DType::F64,
                    S::BOOL => DType::Bool,
                    _ => DType::Other("an integer type"),
                };
                let offset = 8 + n + info.data_offsets.0;
                index
                    .insert(name, Entry { file: files.len(), dtype, shape: info.shape.clone(), strides: None, offset });
            }
            files.push(WeightFile { path, bytes });
        }
        Ok(Self {
            files,
            index,
            prefix: String::new(),
            random: None,
            transformers_init: None,
            requested: Default::default(),
        })
    }

    /// Open a `torch.save` checkpoint (zip or legacy format) without executing its pickle.
    pub fn open_torch(path: &Path) -> Result<Self> {
        Self::from_torch_bytes(path, read(path)?)
    }

    /// A `torch.save` checkpoint already in memory; `path` names it in errors.
    pub fn from_torch_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let tensors = torch_zip::read_index(&bytes)
            .map_err(|reason| Error::TorchCheckpoint { path: path.to_path_buf(), reason })?;
        Ok(Self::torch_entries(path, bytes, tensors))
    }

    /// Open a fairseq checkpoint: the tensors of its `model` state dict, and its `cfg` and
    /// `args` entries (omegaconf objects, argparse Namespaces or plain data) rebuilt as plain
    /// JSON (`{"cfg": ..., "args": ...}`), all without executing its pickle.
    pub fn open_fairseq(path: &Path) -> Result<(Self, serde_json::Value)> {
        Self::fairseq_from_bytes(path, read(path)?)
    }

    /// [`Weights::open_fairseq`] of a file already in memory; `path` names it in errors.
    pub fn fairseq_from_bytes(path: &Path, bytes: Vec<u8>) -> Result<(Self, serde_json::Value)> {
        let bad = |reason: String| Error::TorchCheckpoint { path: path.to_path_buf(), reason };
        let file = torch_zip::read(&bytes).map_err(bad)?;
        let root = file.pickle.root;
        let model = file.pickle.lookup(root, "model").ok_or_else(|| {
            bad("no \"model\" entry: not a fairseq checkpoint (a plain state dict converts with `inspect`/`export`)".into())
        })?;
        let tensors = file.tensors(model).map_err(|e| bad(format!("\"model\": {e}")))?;
        let mut config = serde_json::Map::new();
        for key in ["cfg", "args"] {
            let value = match file.pickle.lookup(root, key) {
                Some(id) => file.pickle.to_json(id).map_err(|e| bad(format!("\"{key}\": {e}")))?,
                None => serde_json::Value::Null,
            };
            config.insert(key.to_string(), value);
        }
        Ok((Self::torch_entries(path, bytes, tensors), serde_json::Value::Object(config)))
    }

    fn torch_entries(path: &Path, bytes: Vec<u8>, tensors: Vec<torch_zip::TensorRef>) -> Self {
        let index = tensors
            .into_iter()
            .map(|t| {
                let entry =
                    Entry { file: 0, dtype: t.dtype, shape: t.shape, strides: Some(t.strides), offset: t.offset };
                (t.name, entry)
            })
            .collect();
        Self {
            files: vec![WeightFile { path: path.to_path_buf(), bytes }],
            index,
            prefix: String::new(),
            random: None,
            transformers_init: None,
            requested: Default::default(),
        }
    }

    /// A source that answers every tensor request with seeded random values: the model is
    /// built by the same loading code as from a checkpoint. Biases start at 0, norm weights
    /// and weight-norm gains at 1, everything else ~ N(0, 1/fan_in) (fan_in = all but the
    /// first dimension), so activations stay O(1) through the stack.
    pub fn random(seed: u64) -> Self {
        Self {
            files: Vec::new(),
            index: HashMap::new(),
            prefix: String::new(),
            random: Some(seed),
            transformers_init: None,
            requested: Default::default(),
        }
    }

    /// A source that initialises every tensor as transformers does for a new
    /// `Wav2Vec2ForPreTraining` (`_init_weights`: normal(0, `initializer_range`) linear layers,
    /// Kaiming-normal convs, uniform codevectors, ...), seeded by `seed` and the tensor name:
    /// pre-training from a config starts here.
    pub fn transformers_init(seed: u64, initializer_range: f64) -> Self {
        Self { transformers_init: Some(initializer_range), ..Self::random(seed) }
    }

    fn random_values(seed: u64, name: &str, shape: &[usize]) -> Vec<f32> {
        let n: usize = shape.iter().product();
        let last = name.rsplit('.').next().unwrap_or(name);
        let constant = if last == "bias" {
            Some(0.0)
        } else if (name.contains("norm") && last == "weight")
            || matches!(last, "weight_g" | "original0" | "gru_rel_pos_const")
        {
            Some(1.0)
        } else {
            None
        };
        if let Some(c) = constant {
            return vec![c; n];
        }
        let fan_in = shape.iter().skip(1).product::<usize>().max(1) as f64;
        let mut rng = speechtune_data::Rng::new(seed ^ init::name_hash(name));
        (0..n).map(|_| (rng.normal() / fan_in.sqrt()) as f32).collect()
    }

    /// Use the first candidate prefix under which `probe` exists (e.g. `wav2vec2.` for
    /// `Wav2Vec2ForCTC` checkpoints). Returns the prefix chosen.
    pub fn select_prefix(&mut self, candidates: &[&str], probe: &str) -> Result<&str> {
        if self.random.is_some() {
            return Ok(&self.prefix);
        }
        match candidates.iter().find(|p| self.index.contains_key(&format!("{p}{probe}"))) {
            Some(p) => {
                self.prefix = (*p).to_string();
                Ok(&self.prefix)
            }
            None => Err(Error::MissingTensor {
                name: format!("{probe} (under any of the prefixes {candidates:?})"),
                files: self.file_list(),
            }),
        }
    }

    /// The tensors read so far (names relative to the prefix, shapes), in the order read: after
    /// building a model, everything it is made of.
    pub fn requested(&self) -> Vec<(String, Vec<usize>)> {
        self.requested.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether a tensor exists (relative to the prefix).
    pub fn contains(&self, name: &str) -> bool {
        // Random weights have every optional tensor, in the newer weight-norm spelling.
        if self.random.is_some() {
            return !name.ends_with("weight_g");
        }
        self.index.contains_key(&format!("{}{name}", self.prefix))
    }

    /// All tensor names in the checkpoint, with their full (unprefixed) spelling.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(|s| s.as_str())
    }

    fn file_list(&self) -> String {
        self.files.iter().map(|f| f.path.display().to_string()).collect::<Vec<_>>().join(", ")
    }

    /// A tensor as f32 values in row-major order, checking its shape.
    pub fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        if let Ok(mut r) = self.requested.lock() {
            r.push((name.to_string(), shape.to_vec()));
        }
        if let Some(seed) = self.random {
            if let Some(range) = self.transformers_init {
                let earlier = |n: &str| {
                    let r = self.requested.lock().ok()?;
                    r.iter().rev().find(|(m, _)| m == n).map(|(_, s)| s.clone())
                };
                return Ok(init::transformers_values(seed, range, name, shape, &earlier));
            }
            return Ok(Self::random_values(seed, name, shape));
        }
        let full = format!("{}{name}", self.prefix);
        let entry = self
            .index
            .get(&full)
            .ok_or_else(|| Error::MissingTensor { name: full.clone(), files: self.file_list() })?;
        let file = &self.files[entry.file];
        if entry.shape != shape {
            return Err(Error::ShapeMismatch {
                name: full,
                file: file.path.clone(),
                expected: shape.to_vec(),
                found: entry.shape.clone(),
            });
        }
        if let DType::Other(what) = entry.dtype {
            return Err(Error::UnsupportedDtype { name: full, file: file.path.clone(), dtype: what.into() });
        }
        let size = entry.dtype.size();
        let row_major = row_major_strides(shape);
        let strides = entry.strides.as_ref().unwrap_or(&row_major);
        // Sizes come from the file's header: computed without overflow, checked against the
        // file before anything is allocated.
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let last = shape
            .iter()
            .zip(strides)
            .try_fold(0usize, |a, (&d, &s)| d.saturating_sub(1).checked_mul(s).and_then(|x| x.checked_add(a)));
        let end = last.and_then(|l| l.checked_add(1)?.checked_mul(size)?.checked_add(entry.offset));
        let fits = |n: usize| {
            n == 0 || (end.is_some_and(|e| e <= file.bytes.len()) && n.saturating_mul(size) <= file.bytes.len())
        };
        let Some(numel) = numel.filter(|&n| fits(n)) else {
            return Err(Error::Safetensors {
                path: file.path.clone(),
                reason: format!("tensor \"{full}\" of shape {shape:?} runs past the end of the file"),
            });
        };
        let bytes = &file.bytes;
        let at = |i: usize| -> f32 {
            let p = entry.offset + i * size;
            let b = &bytes[p..p + size];
            match entry.dtype {
                DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                DType::F16 => half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
                DType::BF16 => half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
                DType::F64 => f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
                DType::Bool => f32::from(b[0] != 0),
                DType::Other(_) => unreachable!("rejected above"),
            }
        };
        if *strides == row_major {
            return Ok((0..numel).map(at).collect());
        }
        // Strided storage (a view saved by torch): walk the index space in row-major order.
        let mut out = Vec::with_capacity(numel);
        let mut idx = vec![0usize; shape.len()];
        for _ in 0..numel {
            out.push(at(idx.iter().zip(strides).map(|(i, s)| i * s).sum()));
            for d in (0..shape.len()).rev() {
                idx[d] += 1;
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Ok(out)
    }

    /// A tensor on `device`, checking its shape.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D], device: &Device) -> Result<Tensor<D>> {
        let v = self.values(name, &shape)?;
        Ok(Tensor::from_data(TensorData::new(v, shape), device))
    }

    /// The shape of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.index.get(&format!("{}{name}", self.prefix)).map(|e| e.shape.clone())
    }
}

/// A pickle (e.g. a `data.pkl`) as plain JSON, read without executing anything: tensors and
/// opaque values become null; the same allow-list as checkpoints.
pub fn unpickle_json(bytes: &[u8]) -> std::result::Result<serde_json::Value, String> {
    let p = pickle::Unpickler::new(bytes, 0).load()?;
    p.to_json(p.root)
}

fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}
