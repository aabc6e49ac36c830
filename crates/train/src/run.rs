//! Fine-tuning as a [`Job`] of the shared loop (`fit`): a batch's loss (CTC and/or
//! cross-entropy on the task heads, with SpecAugment masks and LayerDrop drawn per step, and the
//! hidden-state or CNN-feature cache), evaluation on the dev split by the task's metric, and the
//! checkpoint files of a fine-tuned model.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::{Int, TensorData};
use serde::Serialize;
use speechtune_data::{Batch, LoaderOptions, Split, Vocab, drop_longer_than};
use speechtune_models::weights::write_atomic;
use speechtune_models::{FrontEnd, Perturb};
use speechtune_tasks::ctc_loss;

use crate::checkpoint::save_model;
use crate::config::{MethodConfig, RunConfig, TaskKind};
use crate::distributed::say;
use crate::eval::{EvalReport, evaluate};
use crate::feature_cache::{CacheKind, CacheStats, FeatureCache};
use crate::fit::{Data, Job, Micro, fit, peak_rss, refuse_to_overwrite, step_seed};
use crate::model::{TaskModel, count_parameters, load_upstream};
use crate::prepare::{class_names, prepare, read_split, texts};
use crate::{Error, Result};

#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Continue from the run folder's latest checkpoint.
    pub resume: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    /// Updates done (including skipped ones), and the step training resumed from.
    pub steps: usize,
    pub resumed_from: Option<usize>,
    pub skipped_steps: usize,
    /// Training utterances dropped because their audio gives fewer frames than CTC needs (for
    /// `seq2seq_asr`: because their token sequence is longer than the decoder's positions).
    pub dropped_too_short: usize,
    /// Characters of training and dev transcripts not in the vocabulary (mapped to `<unk>`).
    pub unknown_characters: usize,
    pub unknown_examples: String,
    pub trainable_parameters: usize,
    pub total_parameters: usize,
    pub seconds: f64,
    /// Mean wall time of a training update in this process (evaluation and checkpoints excluded).
    pub seconds_per_step: f64,
    /// Peak resident memory of the process (Linux: VmHWM), when known.
    pub peak_rss_bytes: Option<u64>,
    pub stopped_early: bool,
    /// The cache of this process (hidden states or CNN features), where one was used.
    pub feature_cache: Option<CacheStats>,
    pub first: EvalReport,
    pub last: EvalReport,
    /// The best evaluation and where its checkpoint is.
    pub best: EvalReport,
    pub best_dir: PathBuf,
    pub layer_weights: Vec<f32>,
}

impl RunSummary {
    /// What `fit` reports for the run in `run_dir`; the task-specific fields start empty.
    pub(crate) fn new(
        run_dir: &Path,
        out: crate::fit::Outcome<EvalReport>,
        (trainable, total): (usize, usize),
    ) -> Self {
        let st = out.state;
        Self {
            run_dir: run_dir.to_path_buf(),
            steps: st.step,
            resumed_from: out.resumed_from,
            skipped_steps: st.skipped,
            dropped_too_short: 0,
            unknown_characters: 0,
            unknown_examples: String::new(),
            trainable_parameters: trainable,
            total_parameters: total,
            seconds: st.seconds,
            seconds_per_step: out.seconds_per_step,
            peak_rss_bytes: peak_rss(),
            stopped_early: out.stopped_early,
            feature_cache: None,
            first: st.first,
            last: st.last,
            best: st.best,
            best_dir: run_dir.join("best"),
            layer_weights: Vec::new(),
        }
    }
}

/// The training split as the loop reads it: batched as `data.batch` says, decoded on
/// `data.workers` threads, kept in memory when `data.cache`.
pub(crate) fn training_data<'a>(
    cfg: &'a RunConfig,
    utts: std::sync::Arc<Vec<speechtune_data::Utterance>>,
    durations: &'a [f64],
) -> Data<'a> {
    Data {
        utts,
        durations,
        plan: &cfg.data.batch,
        loader: LoaderOptions { workers: cfg.data.workers, prefetch: 4, cache: cfg.data.cache },
        skip_unreadable: false,
    }
}

fn is_better(metric: crate::config::Metric, new: f64, old: f64) -> bool {
    if metric.higher_is_better() { new > old } else { new < old }
}

/// A run resumes only with the settings it was trained with; the number of steps, the time
/// budget and evaluation/checkpoint intervals may change.
pub(crate) fn check_resumable(cfg: &RunConfig, saved_path: &Path) -> Result<()> {
    let saved = RunConfig::load(saved_path, &[])?;
    let mut differ = Vec::new();
    if saved.upstream != cfg.upstream {
        differ.push("upstream");
    }
    if saved.method != cfg.method {
        differ.push("method");
    }
    if saved.task != cfg.task {
        differ.push("task");
    }
    if saved.data != cfg.data {
        differ.push("data");
    }
    if saved.augment != cfg.augment {
        differ.push("augment");
    }
    if saved.train.resume_key() != cfg.train.resume_key() {
        differ.push("train (lr, weight_decay, schedule, grad_accumulation or seed)");
    }
    if differ.is_empty() {
        Ok(())
    } else {
        Err(Error::Config {
            path: saved_path.to_path_buf(),
            reason: format!("cannot resume with different settings: {} changed", differ.join(", ")),
        })
    }
}

struct FineTune<'a> {
    cfg: &'a RunConfig,
    device: Device,
    plain: Device,
    frontend: FrontEnd,
    train_set: crate::prepare::Prepared,
    dev_set: crate::prepare::Prepared,
    vocab: Vocab,
    classes: Vec<String>,
    upstream_prefix: String,
    feature_cache: Option<FeatureCache>,
    ce: burn::nn::loss::CrossEntropyLoss,
    freeze_updates: usize,
}

impl Job for FineTune<'_> {
    type Model = TaskModel;
    type Report = EvalReport;

    fn micro(&mut self, model: &TaskModel, batch: &Batch, step: usize, micro: usize) -> Result<Option<Micro>> {
        let (cfg, device) = (self.cfg, &self.device);
        let mut perturb = (!cfg.augment.is_off())
            .then(|| Perturb::new(&cfg.augment, step_seed(cfg.train.seed ^ 0x5eed, step, micro)));
        let waves: Vec<Vec<f32>> = batch.waves.iter().map(|w| w.as_ref().clone()).collect();
        let detach = step < self.freeze_updates;
        let out = match self.feature_cache.as_mut() {
            Some(c) if c.kind() == CacheKind::HiddenStates => {
                model.heads(c.output(&model.upstream, &batch.indices, &waves, device)?, detach)
            }
            Some(c) => {
                model.forward(c.input(&model.upstream, &batch.indices, &waves, device)?, perturb.as_mut(), detach)?
            }
            None => model.forward(self.frontend.prepare(&waves, device)?, perturb.as_mut(), detach)?,
        };
        let ctc = out.ctc_logits.as_ref().map(|logits| {
            let targets: Vec<Vec<u32>> = batch.indices.iter().map(|&i| self.train_set.targets[i].clone()).collect();
            ctc_loss(logits.clone(), &out.frame_lengths, &targets, self.vocab.blank()).mean()
        });
        let cls = out.class_logits.as_ref().map(|logits| {
            let t: Vec<i64> = batch.indices.iter().map(|&i| self.train_set.classes[i].unwrap_or(0) as i64).collect();
            self.ce.forward(logits.clone(), Tensor::<1, Int>::from_data(TensorData::new(t, [batch.len()]), device))
        });
        let w = cfg.task.lid_weight;
        let loss: Tensor<1> = match (ctc, cls) {
            (Some(c), Some(l)) => c * (1.0 - w) + l * w,
            (Some(c), None) => c,
            (None, Some(l)) => l,
            (None, None) => unreachable!("every task has a head"),
        };
        Ok(Some(Micro { loss, scalars: Vec::new() }))
    }

    fn evaluate(&mut self, model: &TaskModel, step: usize) -> Result<EvalReport> {
        let (cfg, vocab, classes) = (self.cfg, &self.vocab, &self.classes);
        evaluate(&model.valid(), &self.frontend, &self.dev_set, cfg, vocab, classes, step, 1, &self.plain, |_, _| {})
    }

    fn improves(&self, new: &EvalReport, best: &EvalReport) -> Option<bool> {
        let metric = self.cfg.best_metric();
        let (n, o) = (new.metric(metric)?, best.metric(metric)?);
        Some(is_better(metric, n, o))
    }

    fn report_scalars(&self, r: &EvalReport) -> Vec<(&'static str, f64)> {
        let mut v = Vec::new();
        if r.accuracy.is_none() || r.cer > 0.0 {
            v.extend([("dev/cer", r.cer), ("dev/wer", r.wer)]);
        }
        if let (Some(a), Some(f)) = (r.accuracy, r.macro_f1) {
            v.extend([("dev/accuracy", a), ("dev/macro_f1", f)]);
        }
        v
    }

    fn save(&self, dir: &Path, model: &TaskModel, report: &EvalReport) -> Result<()> {
        save_model(dir, model, self.cfg, &self.vocab, &self.classes, &self.upstream_prefix, Some(report))
    }

    fn check_resumable(&self, checkpoint: &Path) -> Result<()> {
        check_resumable(self.cfg, &checkpoint.join("config.toml"))
    }
}

/// Train as configured.
pub fn train(cfg: &RunConfig, opts: &TrainOptions) -> Result<RunSummary> {
    if cfg.task.kind == TaskKind::Seq2seqAsr {
        return crate::seq2seq::train(cfg, opts);
    }
    let device = cfg.train.training_device()?;
    let plain = device.clone().without_autodiff();
    device.seed(cfg.train.seed);
    let run_dir = cfg.output_dir.clone();
    refuse_to_overwrite(&run_dir, opts.resume)?;

    let kind = cfg.task.kind;
    let mut train_utts = read_split(Split::Train, cfg)?;
    drop_longer_than(&mut train_utts, cfg.data.max_seconds);
    let dev_utts = read_split(Split::Dev, cfg)?;
    let classes = class_names(&train_utts, kind);
    let languages: Vec<String> = class_names(&train_utts, TaskKind::Lid);
    let joint = kind == TaskKind::JointAsrLid;
    let train_texts = texts(&train_utts, cfg);
    let vocab = Vocab::build(train_texts.iter().map(|s| s.as_str()), if joint { &languages } else { &[] });

    let upstream = load_upstream(cfg, &device)?;
    let frontend: FrontEnd = upstream.frontend.clone();
    let upstream_prefix = upstream.prefix.clone();
    let per_frame = upstream.model.downsampling() as f64 / 16000.0;
    let frames = move |s: f64| (s / per_frame).floor() as usize;
    let train_set = prepare(train_utts, cfg, &vocab, &classes, Some(&frames));
    let dev_set = prepare(dev_utts, cfg, &vocab, &classes, None);
    let model = TaskModel::build(upstream.model, cfg, vocab.len(), classes.len(), &device)?;
    let (trainable, total) = count_parameters(&model);
    say!(
        "trainable parameters: {trainable} of {total} ({:.2}%), method {}; {} training and {} dev utterances, {} classes",
        100.0 * trainable as f64 / total.max(1) as f64,
        cfg.method.name(),
        train_set.utts.len(),
        dev_set.utts.len(),
        classes.len()
    );
    let unknown = train_set.unknown_characters + dev_set.unknown_characters;
    let unknown_examples: String = train_set.unknown_examples.union(&dev_set.unknown_examples).collect();
    if unknown > 0 {
        say!("{unknown} characters outside the vocabulary were mapped to <unk>: {unknown_examples:?}");
    }

    let root = crate::distributed::comm().is_root();
    if root {
        std::fs::create_dir_all(&run_dir).map_err(|source| Error::Write { path: run_dir.clone(), source })?;
        write_atomic(&run_dir.join("config.toml"), cfg.to_toml().as_bytes())?;
        write_atomic(&run_dir.join("vocab.json"), vocab.to_json().as_bytes())?;
    }

    let feature_cache = FeatureCache::for_model(
        &model.upstream,
        &frontend,
        !cfg.augment.is_off(),
        (cfg.data.cache_features_gb * 1e9) as usize,
        cfg.data.cache_f16,
    );
    let freeze_updates = match cfg.method {
        MethodConfig::Full { freeze_finetune_updates, .. } => freeze_finetune_updates,
        _ => 0,
    };
    let utts = train_set.utts.clone();
    let durations = train_set.durations.clone();
    let dropped_too_short = train_set.dropped_too_short;
    let mut job = FineTune {
        cfg,
        ce: CrossEntropyLossConfig::new().init(&device),
        device: device.clone(),
        plain,
        frontend,
        train_set,
        dev_set,
        vocab,
        classes,
        upstream_prefix,
        feature_cache,
        freeze_updates,
    };
    let data = training_data(cfg, utts, &durations);
    let (model, out) = fit(&mut job, model, data, &cfg.train, &run_dir, &device, opts.progress, opts.resume)?;
    let mut summary = RunSummary::new(&run_dir, out, (trainable, total));
    summary.dropped_too_short = dropped_too_short;
    summary.unknown_characters = unknown;
    summary.unknown_examples = unknown_examples;
    summary.feature_cache = job.feature_cache.as_ref().map(|c| c.stats());
    summary.layer_weights = model.featurizer.layer_weights();
    if root {
        let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
        write_atomic(&run_dir.join("summary.json"), text.as_bytes())?;
    }
    Ok(summary)
}
