//! What a run keeps. A checkpoint folder holds only what was trained, plus what is needed to use
//! it: the fully resolved `config.toml`, `vocab.json`, `classes.json`, `eval.json`,
//! `heads.safetensors` (featurizer and heads, names are module paths such as
//! `ctc.Superb.proj.weight`),
//! and per method: `adapter_model.safetensors` + `adapter_config.json` for LoRA (Hugging Face
//! peft's format, loadable by peft on the same base model), or `upstream.safetensors` (every
//! upstream parameter that trained: adapters, prefixes, biases, mask scores, or the fine-tuned
//! weights), plus `masks.safetensors` for S3-Router (the binary masks, bool `[out, in]`).
//! Resumable checkpoints add `resume/` (model and optimiser state in burn's burnpack format and
//! the loop's position). Folders are written under a temporary name and renamed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use speechtune_data::Vocab;
use speechtune_models::state::{TensorMap, load_named, named_parameters, read_safetensors};
use speechtune_models::weights::{write_atomic, write_bool_safetensors, write_safetensors};
use speechtune_models::{FrontEnd, Precision};

use crate::config::{MethodConfig, RunConfig};
use crate::eval::EvalReport;
use crate::model::{TaskModel, load_upstream};
use crate::{Error, Result};

pub const HEADS: &str = "heads.safetensors";
pub const UPSTREAM: &str = "upstream.safetensors";
pub const LORA: &str = "adapter_model.safetensors";
/// S3-Router runs: the binary masks (bool, `[out, in]`, named as the weights they mask).
pub const MASKS: &str = "masks.safetensors";

fn json_file(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    Ok(write_atomic(path, text.as_bytes())?)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Write { path: path.to_path_buf(), source }
}

/// Write the trained parts of `model` and the files needed to use them into `dir`.
#[allow(clippy::too_many_arguments)]
pub fn save_model(
    dir: &Path,
    model: &TaskModel,
    cfg: &RunConfig,
    vocab: &Vocab,
    classes: &[String],
    upstream_prefix: &str,
    report: Option<&EvalReport>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    write_atomic(&dir.join("vocab.json"), vocab.to_json().as_bytes())?;
    json_file(&dir.join("classes.json"), &classes)?;
    if let Some(r) = report {
        json_file(&dir.join("eval.json"), r)?;
    }
    let mut heads = named_parameters(&model.featurizer, "featurizer", false);
    if let Some(h) = &model.ctc {
        heads.extend(named_parameters(h, "ctc", false));
    }
    if let Some(h) = &model.classifier {
        heads.extend(named_parameters(h, "classifier", false));
    }
    let meta = HashMap::from([("format".to_string(), "speechtune-heads".to_string())]);
    write_safetensors(&dir.join(HEADS), &heads, meta)?;
    match &cfg.method {
        MethodConfig::Frozen => {}
        MethodConfig::Lora(l) => {
            let state = model.upstream.lora_state(upstream_prefix);
            write_safetensors(&dir.join(LORA), &state, HashMap::from([("format".into(), "pt".into())]))?;
            let adapter_config = peft_adapter_config(l, &cfg.upstream.model);
            json_file(&dir.join("adapter_config.json"), &adapter_config)?;
        }
        MethodConfig::Adapter(_)
        | MethodConfig::ConvAdapter(_)
        | MethodConfig::Prefix(_)
        | MethodConfig::Bitfit
        | MethodConfig::S3Router(_)
        | MethodConfig::Full { .. } => {
            let state = named_parameters(&model.upstream, "", true);
            let meta = HashMap::from([("format".to_string(), format!("speechtune-{}", cfg.method.name()))]);
            write_safetensors(&dir.join(UPSTREAM), &state, meta)?;
            let masks = model.upstream.mask_state(upstream_prefix);
            if !masks.is_empty() {
                let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
                write_bool_safetensors(&dir.join(MASKS), &masks, meta)?;
            }
        }
    }
    Ok(())
}

/// `adapter_config.json` as Hugging Face peft writes it for these LoRA settings.
pub(crate) fn peft_adapter_config(l: &speechtune_peft::LoraConfig, base_model: &str) -> serde_json::Value {
    serde_json::json!({
        "peft_type": "LORA",
        "base_model_name_or_path": base_model,
        "r": l.r,
        "lora_alpha": l.lora_alpha,
        "lora_dropout": l.lora_dropout,
        "target_modules": l.target_modules,
        "layers_to_transform": l.layers_to_transform,
        "use_rslora": l.use_rslora,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "task_type": null,
    })
}

pub(crate) fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    json_file(path, value)
}

/// Whether `dir` holds a trained model (a checkpoint folder, not a run folder).
fn is_model_dir(dir: &Path) -> bool {
    dir.join("config.toml").is_file() && [HEADS, LORA, UPSTREAM].iter().any(|f| dir.join(f).is_file())
}

/// A trained model read back from a checkpoint folder.
pub struct Loaded {
    pub cfg: RunConfig,
    pub vocab: Vocab,
    pub classes: Vec<String>,
    pub model: TaskModel,
    pub frontend: FrontEnd,
    pub dir: PathBuf,
}

fn subset(map: &TensorMap, prefix: &str) -> TensorMap {
    map.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The checkpoint a run folder points to: `best/` when present, else the latest of
/// `checkpoints/step-N/`; a checkpoint folder itself is returned as it is.
pub fn resolve(dir: &Path) -> Result<PathBuf> {
    if is_model_dir(&dir.join("best")) {
        return Ok(dir.join("best"));
    }
    if let Some((_, last)) = checkpoints(dir).pop() {
        return Ok(last);
    }
    if is_model_dir(dir) {
        return Ok(dir.to_path_buf());
    }
    Err(Error::Config {
        path: dir.to_path_buf(),
        reason: "no trained model here (expected a checkpoint folder, best/ or checkpoints/step-N/)".into(),
    })
}

/// The complete checkpoints of a run, oldest first.
pub fn checkpoints(run_dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(run_dir.join("checkpoints"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            // Written under a temporary name and renamed: a step-N folder is complete.
            e.path().is_dir().then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Read a checkpoint (or the one a run folder points to, see [`resolve`]) onto `device`.
pub fn load(dir: &Path, device: &Device) -> Result<Loaded> {
    load_with(dir, device, |_| {})
}

/// Like [`load`], for inference: LoRA updates folded into their base weights, so that each
/// adapted projection is one matrix product again instead of three.
/// The frozen projections' products then run in `precision` (whatever the run trained with).
pub fn load_for_inference(dir: &Path, device: &Device, precision: Precision) -> Result<Loaded> {
    let mut loaded = load(dir, device)?;
    loaded.model.upstream.merge_lora();
    loaded.model.upstream.set_precision(precision);
    Ok(loaded)
}

/// Like [`load`], with every dropout off (heads and LoRA): for gradients of a trained model on
/// an autodiff device (integrated gradients), where burn applies dropout.
pub fn load_without_dropout(dir: &Path, device: &Device) -> Result<Loaded> {
    load_with(dir, device, |cfg| {
        cfg.task.dropout = 0.0;
        if let MethodConfig::Lora(l) = &mut cfg.method {
            l.lora_dropout = 0.0;
        }
    })
}

fn load_with(dir: &Path, device: &Device, edit: impl FnOnce(&mut RunConfig)) -> Result<Loaded> {
    let dir = resolve(dir)?;
    let mut cfg = RunConfig::load(&dir.join("config.toml"), &[])?;
    if cfg.task.kind == crate::config::TaskKind::Seq2seqAsr {
        return Err(Error::Config {
            path: dir.join("config.toml"),
            reason: "a seq2seq_asr run is a whole Whisper model: read it with speechtune_train::seq2seq::load".into(),
        });
    }
    edit(&mut cfg);
    let vocab = Vocab::load(&dir.join("vocab.json"))?;
    let classes_path = dir.join("classes.json");
    let classes: Vec<String> = std::fs::read_to_string(&classes_path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        .map_err(|reason| Error::Config { path: classes_path.clone(), reason })?;
    let upstream = load_upstream(&cfg, device)?;
    let frontend = upstream.frontend.clone();
    let prefix = upstream.prefix.clone();
    // Built in f32: the weights read below would leave bf16 copies made now behind; callers
    // choose the precision of what they run (`load_for_inference`).
    let mut f32_cfg = cfg.clone();
    f32_cfg.train.precision = Precision::F32;
    let mut model = TaskModel::build(upstream.model, &f32_cfg, vocab.len(), classes.len(), device)?;
    let heads_path = dir.join(HEADS);
    let heads = read_safetensors(&heads_path)?;
    model.featurizer = load_named(model.featurizer, "featurizer", &subset(&heads, "featurizer."), &heads_path)?;
    if let Some(h) = model.ctc.take() {
        model.ctc = Some(load_named(h, "ctc", &subset(&heads, "ctc."), &heads_path)?);
    }
    if let Some(h) = model.classifier.take() {
        model.classifier = Some(load_named(h, "classifier", &subset(&heads, "classifier."), &heads_path)?);
    }
    match &cfg.method {
        MethodConfig::Frozen => {}
        MethodConfig::Lora(_) => {
            let path = dir.join(LORA);
            model.upstream.load_lora_state(&prefix, &read_safetensors(&path)?)?;
        }
        _ => {
            let path = dir.join(UPSTREAM);
            model.upstream = load_named(model.upstream, "", &read_safetensors(&path)?, &path)?;
        }
    }
    Ok(Loaded { cfg, vocab, classes, model, frontend, dir })
}
