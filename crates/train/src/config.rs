//! The run configuration: one TOML file, `--set key=value` overrides, resolved once into this
//! typed struct (unknown keys are errors that list the valid ones) and written to the run folder.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use speechtune_data::BatchPlan;
use speechtune_data::text::TextNorm;
use speechtune_models::{AugmentConfig, Precision};
use speechtune_peft::{AdapterConfig, ConvAdapterConfig, LoraConfig, MaskConfig, PrefixConfig, ScoreInit};

use crate::schedule::Schedule;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub method: MethodConfig,
    pub task: TaskConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub train: TrainConfig,
    /// SpecAugment-style masking and LayerDrop while training (off by default).
    #[serde(default)]
    pub augment: AugmentConfig,
    /// Where checkpoints, metrics and the resolved config go.
    pub output_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// A Hugging Face model directory, `builtin:tiny-pretrained` (the committed pre-trained tiny
    /// model) or `builtin:tiny` (random weights; see `Upstream::tiny`).
    pub model: String,
    #[serde(default)]
    pub seed: u64,
    /// Featurizer: leave out the CNN output (hidden state 0).
    #[serde(default)]
    pub exclude_cnn: bool,
    /// Featurizer: layer-normalise each hidden state before the weighted sum.
    #[serde(default)]
    pub layer_norm: bool,
}

/// How the upstream is adapted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum MethodConfig {
    /// Frozen upstream; only the featurizer weights and the heads train.
    #[default]
    Frozen,
    /// LoRA on the targeted projections (peft's field names).
    Lora(LoraConfig),
    /// Bottleneck adapters: `placement` houlsby (after attention and FFN) or pfeiffer (after
    /// FFN), `reduction_factor`.
    Adapter(AdapterConfig),
    /// ConvAdapter after every feed-forward block (`reduction_factor`, `se_reduction`).
    ConvAdapter(ConvAdapterConfig),
    /// Learned key/value prefixes in every attention layer (`num_virtual_tokens`,
    /// `prefix_projection`, `encoder_hidden_size`).
    Prefix(PrefixConfig),
    /// Only the upstream's bias terms train.
    Bitfit,
    /// S3-Router: binary masks with learnable scores over the frozen weights (`prune_rate` =
    /// fraction of weights KEPT, `score_init`, `fix_attn`, `trainable_proj`).
    S3Router(S3RouterConfig),
    /// Every upstream weight trains, except the CNN feature encoder when `freeze_cnn`. For the
    /// first `freeze_finetune_updates` updates only the featurizer and heads train (fairseq's
    /// option of that name).
    Full {
        #[serde(default = "yes")]
        freeze_cnn: bool,
        #[serde(default)]
        freeze_finetune_updates: usize,
    },
}

impl MethodConfig {
    /// The name used in configs (`kind = ...`).
    pub fn name(&self) -> &'static str {
        match self {
            MethodConfig::Frozen => "frozen",
            MethodConfig::Lora(_) => "lora",
            MethodConfig::Adapter(_) => "adapter",
            MethodConfig::ConvAdapter(_) => "conv_adapter",
            MethodConfig::Prefix(_) => "prefix",
            MethodConfig::Bitfit => "bitfit",
            MethodConfig::S3Router(_) => "s3_router",
            MethodConfig::Full { .. } => "full",
        }
    }
}

fn yes() -> bool {
    true
}

/// S3-Router settings, in the seed's names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3RouterConfig {
    /// Fraction of each masked layer's weights KEPT, as the seed's `prune_rate`: 0.9 keeps 90%
    /// (10% sparsity).
    pub prune_rate: f64,
    /// weight_rank (largest scores on the largest |weights|), weight_magnitude or random.
    pub score_init: ScoreInit,
    /// Leave the attention projections unmasked (only the feed-forward layers get masks).
    pub fix_attn: bool,
    /// Train the heads (the seed's `trainable_proj`); false keeps them at their initial values.
    pub trainable_proj: bool,
}

impl Default for S3RouterConfig {
    fn default() -> Self {
        let m = MaskConfig::default();
        Self { prune_rate: m.prune_rate, score_init: m.score_init, fix_attn: m.fix_attn, trainable_proj: true }
    }
}

impl S3RouterConfig {
    pub fn mask(&self) -> MaskConfig {
        MaskConfig { prune_rate: self.prune_rate, score_init: self.score_init, fix_attn: self.fix_attn }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// CTC on characters.
    Asr,
    /// Language identification: utterance classification of the language.
    Lid,
    /// Utterance classification of the manifest's `label` column (emotion, keyword, speaker).
    Classify,
    /// ESPnet's ML-SUPERB joint ASR + LID: `[lang]` prepended to the CTC target; the language is
    /// read from the first token emitted.
    JointAsrLid,
    /// A CTC head and a pooled LID head on the same features, trained on
    /// `(1 - lid_weight) · CTC + lid_weight · cross-entropy`.
    CtcPlusLid,
    /// Whisper's own decoder writes the transcript (teacher forcing, cross-entropy on the target
    /// tokens after the forced prefix `<|startoftranscript|> <|lang|> <|transcribe|>
    /// <|notimestamps|>`); evaluated on the generated text. Needs a Whisper model directory
    /// with its tokenizer.
    Seq2seqAsr,
}

impl TaskKind {
    pub fn has_ctc(self) -> bool {
        !matches!(self, TaskKind::Lid | TaskKind::Classify | TaskKind::Seq2seqAsr)
    }

    /// Whether the task writes text (scored by CER/WER).
    pub fn has_text(self) -> bool {
        self.has_ctc() || self == TaskKind::Seq2seqAsr
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    pub kind: TaskKind,
    #[serde(default)]
    pub text: TextNorm,
    /// Dropout in the downstream Transformer.
    #[serde(default = "dropout")]
    pub dropout: f64,
    /// Weight of the LID loss for `ctc_plus_lid`.
    #[serde(default = "lid_weight")]
    pub lid_weight: f64,
    /// Utterance classification head (lid, classify, ctc_plus_lid).
    #[serde(default)]
    pub pooling: Pooling,
    /// CTC head (asr, joint_asr_lid, ctc_plus_lid).
    #[serde(default)]
    pub head: CtcHeadKind,
    /// seq2seq_asr: most tokens generated per utterance when evaluating (also bounded by the
    /// decoder's positions).
    #[serde(default = "max_new_tokens")]
    pub max_new_tokens: usize,
}

fn max_new_tokens() -> usize {
    128
}

/// The CTC head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CtcHeadKind {
    /// ML-SUPERB's downstream on the featurizer's weighted sum: linear to 256, 2-layer
    /// Transformer, linear to the vocabulary.
    #[default]
    Superb,
    /// fairseq's fine-tuning head: one linear layer on the last hidden state.
    Linear,
}

/// How frame features become one vector per utterance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean over valid frames, then a linear classifier.
    #[default]
    Mean,
    /// Attentive statistics pooling (weighted mean and standard deviation), then a linear classifier.
    AttentiveStats,
    /// transformers' `WhisperForAudioClassification` head: projector to 256, mean pooling,
    /// classifier.
    Projector,
}

fn lid_weight() -> f64 {
    0.3
}

fn dropout() -> f64 {
    0.1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Corpus root (any layout `speechtune data stats` reads).
    pub root: PathBuf,
    /// ML-SUPERB training subset.
    #[serde(default = "ten_min")]
    pub duration: String,
    /// Training clips longer than this are dropped.
    #[serde(default = "twenty")]
    pub max_seconds: f64,
    #[serde(default)]
    pub batch: BatchPlan,
    #[serde(default = "two")]
    pub workers: usize,
    /// Keep decoded training audio in memory across epochs.
    #[serde(default = "yes")]
    pub cache: bool,
    /// Keep frozen upstream outputs of training audio in memory, up to this many GB: every
    /// hidden state when the upstream does not train at all (method `frozen`, no masking or
    /// LayerDrop; later epochs train the featurizer and heads alone), else the CNN features
    /// when the CNN does not train (SSL upstreams with every method but BitFit and full
    /// fine-tuning with an unfrozen CNN; later epochs skip the CNN). 0 turns it off.
    #[serde(default = "four")]
    pub cache_features_gb: f64,
    /// Hold that cache in f16 (half the memory; values rounded to f16 from the first epoch on).
    #[serde(default)]
    pub cache_f16: bool,
    /// Only these languages (ISO codes as in the corpus); empty: all.
    #[serde(default)]
    pub languages: Vec<String>,
}

fn four() -> f64 {
    4.0
}

fn ten_min() -> String {
    "10min".into()
}
fn twenty() -> f64 {
    20.0
}
fn two() -> usize {
    2
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub steps: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub schedule: Schedule,
    /// Clip the global gradient norm over all parameters, as PyTorch's clip_grad_norm_ (None: no
    /// clipping).
    pub grad_clip: Option<f32>,
    /// Evaluate on the dev split every N steps (0: only at the end).
    pub eval_every: usize,
    pub seed: u64,
    /// Abort after this many consecutive steps with a non-finite loss.
    pub max_bad_steps: usize,
    /// Stop after this many seconds of wall time (the last evaluation and checkpoint still
    /// happen; `--resume` continues from there).
    pub time_budget_seconds: Option<f64>,
    /// Batches whose gradients are summed per update.
    pub grad_accumulation: usize,
    /// Save a resumable checkpoint every N updates (0: at each evaluation and at the end).
    pub checkpoint_every: usize,
    /// How many of the latest checkpoints to keep (the best is kept apart, in `best/`).
    pub keep_last: usize,
    /// Metric that picks the best checkpoint: cer, wer (lower is better), accuracy, macro_f1
    /// (higher is better). Default: cer for tasks with CTC, accuracy otherwise.
    pub best_metric: Option<Metric>,
    /// Stop after this many evaluations without improvement of `best_metric`.
    pub early_stopping_patience: Option<usize>,
    /// `cpu`; `cuda` / `cuda:N` or `vulkan` / `vulkan:N` in a build with that feature (default:
    /// the first GPU in such a build, else the CPU).
    pub device: Option<String>,
    /// Trade compute for memory: burn's gradient checkpointing (its `Balanced` strategy)
    /// recomputes the activations of memory-bound operations in the backward pass instead of
    /// keeping them; compute-bound ones (matrix products) stay cached. Same results.
    pub activation_checkpointing: bool,
    /// When training goes wrong (pre-training: codebook or contrastive collapse, divergence;
    /// any run: `max_bad_steps` non-finite losses in a row): `warn` (the default; non-finite
    /// runs stop) or `rollback` to the last checkpoint at half the learning rate.
    pub on_collapse: OnCollapse,
    /// Rollbacks allowed before the run stops.
    pub max_rollbacks: usize,
    /// Data-parallel training: the device of each process of a machine, by its local rank
    /// (`["vulkan:0", "vulkan:1"]`, or `["cpu", "cpu"]`). Launched alone with more than one,
    /// `speechtune` starts one process per device through `mpirun`. Empty: `device`.
    pub devices: Vec<String>,
    /// Data-parallel training: how long any rank waits for the others at a collective (the
    /// gradient all-reduce; rank 0's evaluation and checkpoint writing count as waiting) before
    /// the ranks that do not answer are named and the job stops.
    pub collective_timeout_seconds: f64,
    /// `f32`, or `bf16`: mixed precision, the frozen projections' products (forward and
    /// backward) with bf16 inputs and f32 sums, on the CPU; trainable parameters, optimiser
    /// state and losses stay f32 ([`Precision`]). Fast on CPUs with AMX or AVX512_BF16.
    pub precision: Precision,
}

impl TrainConfig {
    /// The device training runs on: `device` with autodiff, and gradient checkpointing when
    /// `activation_checkpointing` is set.
    pub fn training_device(&self) -> Result<burn::prelude::Device> {
        let device = speechtune_models::parse_device(self.device_name()?)?.autodiff();
        Ok(if self.activation_checkpointing { device.gradient_checkpointing() } else { device })
    }

    /// The device of this process: `devices[local rank]` when `devices` is set, else `device`.
    pub fn device_name(&self) -> Result<Option<&str>> {
        if self.devices.is_empty() {
            return Ok(self.device.as_deref());
        }
        let comm = crate::distributed::comm();
        match self.devices.get(comm.local_rank) {
            Some(d) => Ok(Some(d.as_str())),
            None => Err(crate::Error::Unsupported(format!(
                "rank {} is process {} of its machine, but train.devices names {} device(s): {:?}",
                comm.rank,
                comm.local_rank,
                self.devices.len(),
                self.devices
            ))),
        }
    }

    /// Checks shared by every kind of run.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.collective_timeout_seconds.is_nan() || self.collective_timeout_seconds <= 0.0 {
            return Err("train.collective_timeout_seconds must be positive".into());
        }
        Ok(())
    }

    /// The settings a run must keep to be resumed (the number of steps, the time budget and
    /// the evaluation/checkpoint intervals may change).
    pub fn resume_key(&self) -> (f64, f64, Schedule, usize, u64) {
        (self.lr, self.weight_decay, self.schedule.clone(), self.grad_accumulation, self.seed)
    }
}

/// What the loop does when a run turns unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnCollapse {
    #[default]
    Warn,
    Rollback,
}

/// Dev metrics that can select the best checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Cer,
    Wer,
    Accuracy,
    MacroF1,
}

impl Metric {
    pub fn higher_is_better(self) -> bool {
        matches!(self, Metric::Accuracy | Metric::MacroF1)
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            lr: 1e-3,
            weight_decay: 0.0,
            schedule: Schedule::default(),
            grad_clip: Some(5.0),
            eval_every: 0,
            seed: 0,
            max_bad_steps: 10,
            time_budget_seconds: None,
            grad_accumulation: 1,
            checkpoint_every: 0,
            keep_last: 2,
            best_metric: None,
            early_stopping_patience: None,
            device: None,
            activation_checkpointing: false,
            on_collapse: OnCollapse::Warn,
            max_rollbacks: 3,
            devices: Vec::new(),
            collective_timeout_seconds: 600.0,
            precision: Precision::F32,
        }
    }
}

impl RunConfig {
    /// Read a TOML file and apply `key.path=value` overrides (values in TOML syntax; bare words
    /// are strings).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        load_toml(path, overrides, Self::validate)
    }

    pub fn from_toml(text: &str) -> Result<Self> {
        let cfg: RunConfig =
            toml::from_str(text).map_err(|e| Error::Config { path: "<config>".into(), reason: e.to_string() })?;
        cfg.validate().map_err(|reason| Error::Config { path: "<config>".into(), reason })?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if let MethodConfig::Lora(l) = &self.method {
            l.target().validate()?;
            if l.r == 0 {
                return Err("method.r must be at least 1".into());
            }
        }
        if self.train.steps == 0 {
            return Err("train.steps must be at least 1".into());
        }
        if self.train.grad_accumulation == 0 {
            return Err("train.grad_accumulation must be at least 1".into());
        }
        self.train.validate()?;
        if self.train.keep_last == 0 {
            return Err("train.keep_last must be at least 1 (the last checkpoint is what --resume reads)".into());
        }
        let has_text = self.task.kind.has_text();
        match self.best_metric() {
            Metric::Cer | Metric::Wer if !has_text => {
                return Err(format!("train.best_metric: a {:?} task has no CER/WER", self.task.kind));
            }
            Metric::Accuracy | Metric::MacroF1 if matches!(self.task.kind, TaskKind::Asr | TaskKind::Seq2seqAsr) => {
                return Err("train.best_metric: an asr task has no accuracy; use cer or wer".into());
            }
            _ => {}
        }
        let seq2seq_method = matches!(
            self.method,
            MethodConfig::Lora(_) | MethodConfig::Adapter(_) | MethodConfig::Bitfit | MethodConfig::Full { .. }
        );
        if self.task.kind == TaskKind::Seq2seqAsr && !seq2seq_method {
            return Err(format!(
                "method {}: seq2seq_asr trains with lora, adapter, bitfit or full",
                self.method.name()
            ));
        }
        Ok(())
    }

    /// The error when `train.precision` found no frozen weight to run in it.
    pub(crate) fn precision_unusable(&self) -> Error {
        Error::Unsupported(format!(
            "train.precision = {}: no projection can run in it (method {} trains every weight, \
             or the device is not the CPU)",
            self.train.precision,
            self.method.name()
        ))
    }

    /// The metric that selects the best checkpoint.
    pub fn best_metric(&self) -> Metric {
        self.train.best_metric.unwrap_or(if self.task.kind.has_text() { Metric::Cer } else { Metric::Accuracy })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config serialises")
    }
}

/// Read a TOML file, apply `key.path=value` overrides, deserialise (unknown keys are errors)
/// and check the result with `validate`; errors name the file.
pub(crate) fn load_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    overrides: &[String],
    validate: impl Fn(&T) -> std::result::Result<(), String>,
) -> Result<T> {
    let bad = |reason: String| Error::Config { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    for o in overrides {
        apply_override(&mut table, o)?;
    }
    let cfg: T = toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| bad(e.to_string()))?;
    validate(&cfg).map_err(bad)?;
    Ok(cfg)
}

fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let (key, raw) =
        assignment.split_once('=').ok_or_else(|| Error::Override(format!("{assignment}: expected key=value")))?;
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.trim().split('.').collect();
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        cur = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| Error::Override(format!("{assignment}: {p} is not a table")))?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
output_dir = "runs/x"
[upstream]
model = "builtin:tiny"
[method]
kind = "lora"
r = 4
[task]
kind = "joint_asr_lid"
[data]
root = "data/demo"
[train]
steps = 10
"#;

    #[test]
    fn parses_with_defaults_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, BASE).unwrap();
        let c = RunConfig::load(
            &p,
            &["train.lr=0.01".into(), "method.target_modules=[\"k_proj\"]".into(), "data.batch.max_seconds=30".into()],
        )
        .unwrap();
        assert_eq!(c.train.lr, 0.01);
        assert_eq!(c.train.grad_clip, Some(5.0));
        let MethodConfig::Lora(l) = &c.method else { panic!("lora") };
        assert_eq!((l.r, l.lora_alpha), (4, 16.0));
        assert_eq!(l.target_modules, speechtune_peft::Targets::Names(vec!["k_proj".into()]));
        assert_eq!(c.data.batch.max_seconds, 30.0);
        assert_eq!(RunConfig::from_toml(&c.to_toml()).unwrap(), c, "round trip");
    }

    #[test]
    fn unknown_keys_list_the_valid_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, BASE).unwrap();
        let e = RunConfig::load(&p, &["train.learning_rate=1".into()]).unwrap_err().to_string();
        assert!(e.contains("learning_rate") && e.contains("`lr`") && e.contains("c.toml"), "{e}");
        let e = RunConfig::load(&p, &["method.rank=3".into()]).unwrap_err().to_string();
        assert!(e.contains("rank") && e.contains("lora_alpha"), "{e}");
    }
}
