//! `speechtune pretrain`: wav2vec 2.0 pre-training (seed 001) as a [`Job`] of the shared loop.
//! Utterances are cropped at random to `max_sample_size` samples and, within a batch, to the
//! shortest item (fairseq's default without padding); spans of the transformer input are
//! masked as `_compute_mask_indices` does, distractors come from the masked frames of the same
//! utterance, and the Gumbel temperature anneals per update (fairseq: from 2 to 0.5 by
//! 0.999995). The output is a Hugging Face `Wav2Vec2ForPreTraining` directory that
//! transformers loads and `speechtune train` fine-tunes (`upstream.model = RUN/best`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};
use speechtune_data::corpus::{Layout, fill_durations};
use speechtune_data::{Batch, BatchPlan, LoaderOptions, Problems, Rng, Split, Utterance, load_audio};
use speechtune_models::config::{ModelConfig, SslConfig};
use speechtune_models::ssl::pretrain::{
    PretrainModel, PretrainOutput, Quantize, Read, compute_mask_indices, sample_negative_indices,
};
use speechtune_models::weights::{Weights, write_atomic, write_safetensors};

use crate::config::{TrainConfig, load_toml};
use crate::distributed::say;
use crate::fit::{Data, Health, Job, Micro, Update, fit, peak_rss, refuse_to_overwrite, step_seed};
use crate::{Error, Result};

/// `speechtune pretrain CONFIG.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    pub model: ModelSource,
    #[serde(default)]
    pub objective: Objective,
    pub data: PretrainData,
    #[serde(default)]
    pub train: TrainConfig,
    pub output_dir: PathBuf,
}

/// Where the model starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSource {
    /// A `config.json` (a new model, initialised as transformers does) or a
    /// `Wav2Vec2ForPreTraining` directory with its quantizer (continued pre-training).
    pub from: PathBuf,
    /// Seed of a new model's initialisation.
    #[serde(default)]
    pub seed: u64,
}

/// The wav2vec 2.0 objective, in transformers' names where they exist (fairseq's defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Objective {
    pub mask_time_prob: f64,
    pub mask_time_length: usize,
    pub mask_time_min_masks: usize,
    pub num_negatives: usize,
    pub diversity_loss_weight: f64,
    /// fairseq's feature penalty: weight of the mean square of the CNN features.
    pub feature_pen_weight: f64,
    /// fairseq's `feature_grad_mult`: scale of the gradient into the CNN.
    pub feature_grad_mult: f64,
    /// Gumbel temperature: `max(max_temperature · decay^update, min_temperature)`.
    pub max_temperature: f64,
    pub min_temperature: f64,
    pub temperature_decay: f64,
    /// Health checks start after this many updates.
    pub health_warmup: usize,
}

impl Default for Objective {
    fn default() -> Self {
        Self {
            mask_time_prob: 0.65,
            mask_time_length: 10,
            mask_time_min_masks: 2,
            num_negatives: 100,
            diversity_loss_weight: 0.1,
            feature_pen_weight: 10.0,
            feature_grad_mult: 0.1,
            max_temperature: 2.0,
            min_temperature: 0.5,
            temperature_decay: 0.999995,
            health_warmup: 20,
        }
    }
}

impl Objective {
    pub fn temperature(&self, update: usize) -> f64 {
        (self.max_temperature * self.temperature_decay.powi(update as i32)).max(self.min_temperature)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainData {
    /// Any layout `speechtune data stats` reads (tar shards of `preprocess segment` included).
    pub root: PathBuf,
    /// ML-SUPERB training subset, where the layout has them.
    #[serde(default = "ten_min")]
    pub duration: String,
    /// Crop longer utterances at random to this many samples (fairseq: 250,000).
    #[serde(default = "max_samples")]
    pub max_sample_size: usize,
    /// Drop shorter utterances.
    #[serde(default = "min_samples")]
    pub min_sample_size: usize,
    /// Zero-mean unit-variance waveforms (fairseq's `normalize`; default: true for the
    /// layer-norm CNN of large models, false for base).
    #[serde(default)]
    pub normalize: Option<bool>,
    /// Held-out share of the training utterances when the corpus has no dev split.
    #[serde(default = "valid_fraction")]
    pub valid_fraction: f64,
    #[serde(default)]
    pub batch: BatchPlan,
    #[serde(default = "two")]
    pub workers: usize,
    #[serde(default = "yes")]
    pub cache: bool,
}

fn ten_min() -> String {
    "10min".into()
}
fn max_samples() -> usize {
    250_000
}
fn min_samples() -> usize {
    32_000
}
fn valid_fraction() -> f64 {
    0.02
}
fn two() -> usize {
    2
}
fn yes() -> bool {
    true
}

impl PretrainConfig {
    /// Read a TOML file and apply `key.path=value` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        load_toml(path, overrides, Self::validate)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let o = &self.objective;
        if self.train.steps == 0 || self.train.grad_accumulation == 0 || self.train.keep_last == 0 {
            return Err("train.steps, train.grad_accumulation and train.keep_last must be at least 1".into());
        }
        self.train.validate()?;
        if o.mask_time_length == 0 || o.num_negatives == 0 {
            return Err("objective.mask_time_length and objective.num_negatives must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&o.mask_time_prob) {
            return Err("objective.mask_time_prob must lie in [0, 1]".into());
        }
        if self.data.min_sample_size > self.data.max_sample_size {
            return Err("data.min_sample_size is larger than data.max_sample_size".into());
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config serialises")
    }
}

/// Valid-set scores (argmax quantizer, fixed crops and masks).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PretrainReport {
    pub step: usize,
    pub utterances: usize,
    /// Per masked frame: contrastive + diversity_weight · diversity (+ feature penalty).
    pub loss: f64,
    pub contrastive: f64,
    pub diversity: f64,
    pub accuracy: f64,
    pub code_perplexity: f64,
}

/// What a pre-training run did.
#[derive(Debug, Clone, Serialize)]
pub struct PretrainSummary {
    pub run_dir: PathBuf,
    pub steps: usize,
    pub resumed_from: Option<usize>,
    pub skipped_steps: usize,
    /// Micro-batches without a masked frame.
    pub skipped_batches: usize,
    pub parameters: usize,
    pub training_utterances: usize,
    pub valid_utterances: usize,
    /// Utterances shorter than `min_sample_size` or than one mask span.
    pub dropped_too_short: usize,
    /// Audio that could not be read (skipped), with the reason.
    pub unreadable: Vec<String>,
    pub rollbacks: usize,
    pub seconds: f64,
    pub seconds_per_step: f64,
    pub peak_rss_bytes: Option<u64>,
    pub first: PretrainReport,
    pub last: PretrainReport,
    pub best: PretrainReport,
    pub best_dir: PathBuf,
}

/// Running averages that tell a healthy run from a collapsed one.
#[derive(Default)]
struct HealthTracker {
    updates: usize,
    code_ppl: Option<f64>,
    contrastive: Option<f64>,
    loss: Option<f64>,
    lowest_loss: f64,
    flagged: Option<String>,
}

fn ema(old: Option<f64>, new: f64) -> Option<f64> {
    Some(old.map_or(new, |o| 0.8 * o + 0.2 * new))
}

struct Pretrain<'a> {
    cfg: &'a PretrainConfig,
    model_cfg: SslConfig,
    config_json: serde_json::Value,
    normalize: bool,
    device: Device,
    plain: Device,
    valid: Vec<Utterance>,
    valid_waves: Option<Vec<Vec<f32>>>,
    health: HealthTracker,
}

impl Pretrain<'_> {
    /// Crop `waves` to one length (random offsets from `rng`), normalise, and draw the masks
    /// and distractors; `None` when no masked frame remains.
    fn inputs(
        &self,
        model: &PretrainModel,
        waves: &[&[f32]],
        rng: &mut Rng,
        device: &Device,
    ) -> Option<(Tensor<2>, Vec<bool>, Vec<usize>)> {
        let o = &self.cfg.objective;
        let len = waves.iter().map(|w| w.len()).min()?.min(self.cfg.data.max_sample_size);
        let mut flat = Vec::with_capacity(waves.len() * len);
        for w in waves {
            let start = rng.below(w.len() - len + 1);
            let crop = &w[start..start + len];
            if self.normalize {
                flat.extend(speechtune_audio::zero_mean_unit_var(crop));
            } else {
                flat.extend_from_slice(crop);
            }
        }
        let t = model.frames_for(len);
        let b = waves.len();
        let mut mask =
            compute_mask_indices(rng, t, &vec![t; b], o.mask_time_prob, o.mask_time_length, o.mask_time_min_masks);
        let negatives = sample_negative_indices(rng, t, &mut mask, o.num_negatives);
        if !mask.iter().any(|&m| m) {
            return None;
        }
        Some((Tensor::from_data(TensorData::new(flat, [b, len]), device), mask, negatives))
    }

    fn loss(&self, out: &PretrainOutput) -> Tensor<1> {
        out.loss(self.cfg.objective.diversity_loss_weight, self.cfg.objective.feature_pen_weight)
    }
}

fn scalar(t: Tensor<1>) -> f64 {
    let v: f32 = t.into_scalar();
    v as f64
}

impl Job for Pretrain<'_> {
    type Model = PretrainModel;
    type Report = PretrainReport;

    fn micro(&mut self, model: &PretrainModel, batch: &Batch, step: usize, micro: usize) -> Result<Option<Micro>> {
        let mut rng = Rng::new(step_seed(self.cfg.train.seed ^ 0x7072_6574, step, micro));
        let waves: Vec<&[f32]> = batch.waves.iter().map(|w| w.as_slice()).collect();
        let Some((samples, mask, negatives)) = self.inputs(model, &waves, &mut rng, &self.device) else {
            return Ok(None);
        };
        let temperature = self.cfg.objective.temperature(step);
        let quantize = Quantize::Gumbel { temperature, rng: &mut rng };
        let out = model.forward(samples, &mask, &negatives, quantize, self.cfg.objective.feature_grad_mult)?;
        let n = out.masked.max(1) as f64;
        let scalars = vec![
            ("contrastive", scalar(out.contrastive_sum.clone()) / n),
            ("diversity", scalar(out.diversity_sum.clone()) / n),
            ("feature_pen", scalar(out.feature_pen.clone())),
            ("accuracy", out.correct as f64 / n),
            ("code_perplexity", out.code_perplexity),
            ("prob_perplexity", out.prob_perplexity),
            ("temperature", temperature),
            ("masked_frames", out.masked as f64),
        ];
        Ok(Some(Micro { loss: self.loss(&out), scalars }))
    }

    fn evaluate(&mut self, model: &PretrainModel, step: usize) -> Result<PretrainReport> {
        if self.valid_waves.is_none() {
            let waves = self.valid.iter().map(load_audio).collect::<std::result::Result<Vec<_>, _>>()?;
            self.valid_waves = Some(waves);
        }
        let waves = self.valid_waves.as_ref().expect("loaded above");
        let model = model.valid();
        let (mut loss, mut contrastive, mut diversity, mut correct, mut masked, mut ppl) =
            (0.0, 0.0, 0.0, 0usize, 0usize, 0.0);
        let mut batches = 0usize;
        // One utterance at a time with fixed crops and masks: every evaluation sees the same task.
        for (i, w) in waves.iter().enumerate() {
            let mut rng = Rng::new(step_seed(0x7661_6c69, i, 0));
            let Some((samples, mask, negatives)) = self.inputs(&model, &[w.as_slice()], &mut rng, &self.plain) else {
                continue;
            };
            let out = model.forward(samples, &mask, &negatives, Quantize::Argmax, 1.0)?;
            loss += scalar(self.loss(&out)) * out.masked as f64;
            contrastive += scalar(out.contrastive_sum.clone());
            diversity += scalar(out.diversity_sum.clone());
            correct += out.correct;
            masked += out.masked;
            ppl += out.code_perplexity;
            batches += 1;
        }
        let n = masked.max(1) as f64;
        Ok(PretrainReport {
            step,
            utterances: batches,
            loss: loss / n,
            contrastive: contrastive / n,
            diversity: diversity / n,
            accuracy: correct as f64 / n,
            code_perplexity: ppl / batches.max(1) as f64,
        })
    }

    fn improves(&self, new: &PretrainReport, best: &PretrainReport) -> Option<bool> {
        (new.loss.is_finite() && best.loss.is_finite()).then_some(new.loss < best.loss)
    }

    fn report_scalars(&self, r: &PretrainReport) -> Vec<(&'static str, f64)> {
        vec![
            ("valid/loss", r.loss),
            ("valid/contrastive", r.contrastive),
            ("valid/accuracy", r.accuracy),
            ("valid/code_perplexity", r.code_perplexity),
        ]
    }

    fn save(&self, dir: &Path, model: &PretrainModel, report: &PretrainReport) -> Result<()> {
        save_hf(dir, model, &self.config_json, self.normalize)?;
        write_atomic(&dir.join("eval.json"), serde_json::to_string_pretty(report).unwrap_or_default().as_bytes())?;
        write_atomic(&dir.join("pretrain.toml"), self.cfg.to_toml().as_bytes())?;
        Ok(())
    }

    fn check_resumable(&self, checkpoint: &Path) -> Result<()> {
        let path = checkpoint.join("pretrain.toml");
        let saved = PretrainConfig::load(&path, &[])?;
        let same = saved.model == self.cfg.model
            && saved.objective == self.cfg.objective
            && saved.data == self.cfg.data
            && saved.train.resume_key() == self.cfg.train.resume_key();
        if same {
            Ok(())
        } else {
            Err(Error::Config {
                path,
                reason: "cannot resume with different settings: model, objective, data or train changed".into(),
            })
        }
    }

    fn health(&mut self, u: &Update) -> Health {
        let h = &mut self.health;
        h.updates += 1;
        let get = |k: &str| u.scalars.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        if let (true, Some(ppl), Some(c)) = (u.finite, get("code_perplexity"), get("contrastive")) {
            h.code_ppl = ema(h.code_ppl, ppl);
            h.contrastive = ema(h.contrastive, c);
            h.loss = ema(h.loss, u.loss);
        }
        let loss = h.loss.unwrap_or(f64::NAN);
        if h.updates <= self.cfg.objective.health_warmup || h.lowest_loss == 0.0 {
            h.lowest_loss = if h.lowest_loss == 0.0 { loss } else { h.lowest_loss.min(loss) };
            return Health::Ok;
        }
        h.lowest_loss = h.lowest_loss.min(loss);
        let groups = self.model_cfg.num_codevector_groups as f64;
        let problem = if !u.finite {
            Some("divergence: the loss is not finite".to_string())
        } else if h.code_ppl.is_some_and(|p| p < 2.0 * groups) {
            Some(format!(
                "codebook collapse: code perplexity {:.2} is near the number of groups ({groups})",
                h.code_ppl.unwrap_or(0.0)
            ))
        } else if h.contrastive.is_some_and(|c| c < 0.01) && u.grad_norm < 1e-3 {
            Some(format!(
                "contrastive collapse: contrastive loss {:.4} with gradient norm {:.1e}",
                h.contrastive.unwrap_or(0.0),
                u.grad_norm
            ))
        } else if loss > 3.0 * h.lowest_loss.max(1e-3) {
            Some(format!("divergence: the loss ({loss:.3}) is over 3x its lowest value ({:.3})", h.lowest_loss))
        } else {
            None
        };
        match problem {
            Some(p) if h.flagged.is_none() => {
                say!(
                    "warning at update {}: {p}. What usually helps: a lower learning rate (train.lr), a longer \
                     warmup, a larger batch (data.batch.max_seconds, or train.grad_accumulation as fairseq's \
                     update_freq), a larger objective.diversity_loss_weight; train.on_collapse = \"rollback\" \
                     returns to the last checkpoint at half the learning rate",
                    u.step
                );
                h.flagged = Some(p.clone());
                Health::Unhealthy(p)
            }
            Some(_) => Health::Ok,
            None => {
                h.flagged = None;
                Health::Ok
            }
        }
    }

    fn rolled_back(&mut self) {
        self.health = HealthTracker::default();
    }

    fn progress(&self) -> String {
        let ppl = self.health.code_ppl.map(|p| format!(" ppl {p:.1}")).unwrap_or_default();
        let flag = self.health.flagged.as_ref().map(|f| format!(" | {}", f.split(':').next().unwrap_or(f)));
        format!("{ppl}{}", flag.unwrap_or_default())
    }
}

/// Write `model` as a Hugging Face `Wav2Vec2ForPreTraining` directory.
pub fn save_hf(dir: &Path, model: &PretrainModel, config_json: &serde_json::Value, normalize: bool) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Write { path: dir.to_path_buf(), source })?;
    let tensors = model.hf_tensors(Read::Values)?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&dir.join("model.safetensors"), &tensors, meta)?;
    let text = serde_json::to_string_pretty(config_json).unwrap_or_default();
    write_atomic(&dir.join("config.json"), text.as_bytes())?;
    let pp = serde_json::json!({
        "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": 16000,
        "padding_value": 0.0, "do_normalize": normalize, "return_attention_mask": normalize
    });
    write_atomic(&dir.join("preprocessor_config.json"), pp.to_string().as_bytes())?;
    Ok(())
}

/// The model's `config.json` as it starts, with the objective's settings written in.
fn model_config(cfg: &PretrainConfig) -> Result<(serde_json::Value, bool)> {
    let from = &cfg.model.from;
    let (path, is_dir) = if from.is_dir() { (from.join("config.json"), true) } else { (from.clone(), false) };
    let bad = |reason: String| Error::Config { path: path.clone(), reason };
    let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
    let mut v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let o = &cfg.objective;
    let obj = v.as_object_mut().ok_or_else(|| bad("not a JSON object".into()))?;
    obj.insert("architectures".into(), serde_json::json!(["Wav2Vec2ForPreTraining"]));
    for (k, val) in [
        ("mask_time_prob", serde_json::json!(o.mask_time_prob)),
        ("mask_time_length", serde_json::json!(o.mask_time_length)),
        ("mask_time_min_masks", serde_json::json!(o.mask_time_min_masks)),
        ("num_negatives", serde_json::json!(o.num_negatives)),
        ("diversity_loss_weight", serde_json::json!(o.diversity_loss_weight)),
    ] {
        obj.insert(k.into(), val);
    }
    Ok((v, is_dir))
}

/// Pre-train as configured.
pub fn pretrain(cfg: &PretrainConfig, progress: bool, resume: bool) -> Result<PretrainSummary> {
    let device = cfg.train.training_device()?;
    let plain = device.clone().without_autodiff();
    device.seed(cfg.train.seed);
    let run_dir = cfg.output_dir.clone();
    refuse_to_overwrite(&run_dir, resume)?;
    // A Hub id becomes its folder in the Hugging Face cache.
    let resolved;
    let cfg = if cfg.model.from.exists() {
        cfg
    } else {
        let mut c = cfg.clone();
        c.model.from = speechtune_models::hub::resolve(&cfg.model.from)?;
        resolved = c;
        &resolved
    };
    let (config_json, from_checkpoint) = model_config(cfg)?;
    let config_path = cfg.model.from.join("config.json");
    let parsed = ModelConfig::from_json(config_json.to_string().as_bytes(), &config_path)?;
    let ModelConfig::Ssl(model_cfg) = parsed else {
        return Err(Error::Config {
            path: cfg.model.from.clone(),
            reason: "pre-training needs a wav2vec2 model".into(),
        });
    };
    let mut weights = if from_checkpoint {
        Weights::open_dir(&cfg.model.from)?
    } else {
        Weights::transformers_init(cfg.model.seed, model_cfg.initializer_range)
    };
    let model = PretrainModel::load(&model_cfg, &mut weights, &device)?;
    let normalize = cfg.data.normalize.unwrap_or(model_cfg.feat_extract_norm == "layer");

    // Data: the training split (and dev, when the layout has one), readable and long enough.
    let layout = Layout::detect(&cfg.data.root)?;
    let mut problems = Problems::new(true);
    let mut train_utts = layout.read_split(Split::Train, &cfg.data.duration, &mut problems)?;
    let mut valid = layout.read_split(Split::Dev, &cfg.data.duration, &mut problems).unwrap_or_default();
    let mut unreadable: Vec<String> = problems.found.iter().map(|p| p.to_string()).collect();
    for utts in [&mut train_utts, &mut valid] {
        unreadable.extend(fill_durations(utts, cfg.data.workers).into_iter().map(|p| p.to_string()));
        utts.retain(|u| u.seconds().is_some());
    }
    for u in &unreadable {
        say!("skipping unreadable audio: {u}");
    }
    let min_span = model_cfg.conv_stride.iter().product::<usize>() * cfg.objective.mask_time_length;
    let min_samples = cfg.data.min_sample_size.max(min_span);
    let long_enough = |u: &Utterance| u.seconds().is_some_and(|s| s * 16000.0 >= min_samples as f64);
    let before = train_utts.len() + valid.len();
    train_utts.retain(long_enough);
    valid.retain(long_enough);
    let dropped_too_short = before - train_utts.len() - valid.len();
    if valid.is_empty() && train_utts.len() > 1 {
        let n = ((train_utts.len() as f64 * cfg.data.valid_fraction).ceil() as usize).clamp(1, train_utts.len() - 1);
        let mut order: Vec<usize> = (0..train_utts.len()).collect();
        Rng::new(cfg.train.seed ^ 0x6865_6c64).shuffle(&mut order);
        let held: std::collections::HashSet<usize> = order[..n].iter().copied().collect();
        let (v, t): (Vec<_>, Vec<_>) = train_utts.into_iter().enumerate().partition(|(i, _)| held.contains(i));
        valid = v.into_iter().map(|(_, u)| u).collect();
        train_utts = t.into_iter().map(|(_, u)| u).collect();
    }
    if train_utts.is_empty() {
        return Err(Error::Config {
            path: cfg.data.root.clone(),
            reason: format!(
                "no training utterance of at least {min_samples} samples ({dropped_too_short} shorter ones dropped)"
            ),
        });
    }
    let crop = cfg.data.max_sample_size as f64 / 16000.0;
    let durations: Vec<f64> = train_utts.iter().map(|u| u.seconds().unwrap_or(0.0).min(crop)).collect();
    let (_, parameters) = crate::model::count_parameters(&model);
    say!(
        "pre-training {} parameters on {} utterances ({:.2} h), {} for validation; {} dropped as too short, {} unreadable; \
         batches of {} s x {} accumulation x {} rank(s)",
        parameters,
        train_utts.len(),
        durations.iter().sum::<f64>() / 3600.0,
        valid.len(),
        dropped_too_short,
        unreadable.len(),
        cfg.data.batch.max_seconds,
        cfg.train.grad_accumulation,
        crate::distributed::comm().size
    );

    let root = crate::distributed::comm().is_root();
    if root {
        std::fs::create_dir_all(&run_dir).map_err(|source| Error::Write { path: run_dir.clone(), source })?;
        write_atomic(&run_dir.join("pretrain.toml"), cfg.to_toml().as_bytes())?;
    }
    let training_utterances = train_utts.len();
    let valid_utterances = valid.len();
    let mut job = Pretrain {
        cfg,
        model_cfg,
        config_json,
        normalize,
        device: device.clone(),
        plain,
        valid,
        valid_waves: None,
        health: HealthTracker::default(),
    };
    let data = Data {
        utts: Arc::new(train_utts),
        durations: &durations,
        plan: &cfg.data.batch,
        loader: LoaderOptions { workers: cfg.data.workers, prefetch: 4, cache: cfg.data.cache },
        skip_unreadable: true,
    };
    let (_model, out) = fit(&mut job, model, data, &cfg.train, &run_dir, &device, progress, resume)?;
    let st = out.state;
    unreadable.extend(st.unreadable.iter().cloned());
    let summary = PretrainSummary {
        run_dir: run_dir.clone(),
        steps: st.step,
        resumed_from: out.resumed_from,
        skipped_steps: st.skipped,
        skipped_batches: st.skipped_micro,
        parameters,
        training_utterances,
        valid_utterances,
        dropped_too_short,
        unreadable,
        rollbacks: st.rollbacks,
        seconds: st.seconds,
        seconds_per_step: out.seconds_per_step,
        peak_rss_bytes: peak_rss(),
        first: st.first,
        last: st.last,
        best: st.best,
        best_dir: run_dir.join("best"),
    };
    if root {
        let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
        write_atomic(&run_dir.join("summary.json"), text.as_bytes())?;
    }
    Ok(summary)
}
