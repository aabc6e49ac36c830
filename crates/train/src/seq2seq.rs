//! Whisper fine-tuned as a whole (`task.kind = "seq2seq_asr"`), as a [`Job`] of the shared loop:
//! the decoder reads the forced prefix and the transcript (teacher forcing) and is trained by
//! token-level cross-entropy, as `WhisperForConditionalGeneration(labels=...)` computes it, on
//! the transcript as written (Whisper writes case and punctuation); the dev split is scored by
//! CER/WER of the text generated greedily, both sides normalised by `task.text` first. LoRA (peft's usual Whisper
//! recipe: `q_proj`, `v_proj` of the encoder and of both decoder attentions), bottleneck adapters
//! in every layer of both halves, BitFit, or full fine-tuning. `[augment]` applies SpecAugment to
//! the log-mel input (time masks within each clip's audio, mel-bin masks) and LayerDrop to the
//! encoder's layers.
//!
//! A checkpoint folder holds `config.toml`, `eval.json` and the trained weights: for LoRA,
//! `adapter_model.safetensors` + `adapter_config.json`, which peft's
//! `PeftModel.from_pretrained(WhisperForConditionalGeneration.from_pretrained(base), dir)` loads;
//! for the other methods `upstream.safetensors` (every parameter that trained, by module path).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::{Int, TensorData};
use speechtune_data::text::normalize;
use speechtune_data::{BatchPlan, Loader, LoaderOptions, Split, Utterance, drop_longer_than, plan_batches};
use speechtune_models::state::{load_named, named_parameters, read_safetensors};
use speechtune_models::weights::{write_atomic, write_safetensors};
use speechtune_models::whisper::pipeline::{DecodeOptions, Whisper, WhisperProcessor};
use speechtune_models::whisper::seq2seq::WhisperSeq2Seq;
use speechtune_models::whisper::tokenizer::Task;
use speechtune_models::{FrontEnd, ModelConfig, Perturb, Precision};
use speechtune_tasks::metrics::AsrScore;
use speechtune_tasks::token_cross_entropy;

use crate::checkpoint::{LORA, UPSTREAM, peft_adapter_config, resolve, write_json};
use crate::config::{MethodConfig, RunConfig};
use crate::distributed::say;
use crate::eval::{EvalReport, LanguageScore};
use crate::fit::{Job, Micro, fit, refuse_to_overwrite, step_seed};
use crate::model::count_parameters;
use crate::prepare::{Prepared, read_split};
use crate::run::{RunSummary, TrainOptions, check_resumable, training_data};
use crate::{Error, Result};

/// Teacher-forced loss of `targets` (each the whole token sequence: prefix, text, end token) given
/// the encoder output: the decoder reads every token but the last and is scored on every token
/// but the first, padding ignored — `WhisperForConditionalGeneration`'s loss with
/// `labels = targets[1:]` (its decoder input is the labels shifted right behind the start token).
pub fn teacher_forced_loss(
    model: &WhisperSeq2Seq,
    encoder_out: &Tensor<3>,
    targets: &[Vec<u32>],
    pad: u32,
) -> Result<Tensor<1>> {
    let t = targets.iter().map(|s| s.len().saturating_sub(1)).max().unwrap_or(0);
    if t == 0 {
        return Err(Error::Config {
            path: PathBuf::from("<targets>"),
            reason: "every target needs at least two tokens".into(),
        });
    }
    let b = targets.len();
    let mut input = vec![pad as i64; b * t];
    for (i, s) in targets.iter().enumerate() {
        for (j, &id) in s[..s.len() - 1].iter().enumerate() {
            input[i * t + j] = id as i64;
        }
    }
    let device = encoder_out.device();
    let input = Tensor::<2, Int>::from_data(TensorData::new(input, [b, t]), &device);
    let logits = model.logits(encoder_out, input)?;
    let labels: Vec<Vec<u32>> = targets.iter().map(|s| s[1..].to_vec()).collect();
    Ok(token_cross_entropy(logits, &labels))
}

/// The model folder a seq2seq run starts from (a Whisper directory with its tokenizer).
fn whisper_dir(cfg: &RunConfig) -> Result<PathBuf> {
    let dir = speechtune_models::hub::resolve(Path::new(&cfg.upstream.model))?;
    let bad = |reason: String| Error::Config { path: dir.clone(), reason };
    if !dir.is_dir() {
        return Err(bad(
            "seq2seq_asr needs a Whisper model directory (WhisperForConditionalGeneration with its tokenizer)".into(),
        ));
    }
    match ModelConfig::from_dir(&dir)? {
        ModelConfig::Whisper(_) => Ok(dir),
        ModelConfig::Ssl(_) => {
            Err(bad("seq2seq_asr needs a Whisper model; this is an encoder-only model (use asr for CTC)".into()))
        }
    }
}

/// Put the configured method on `model` (freshly loaded, every parameter trainable).
fn adapt(model: WhisperSeq2Seq, cfg: &RunConfig, device: &Device) -> Result<WhisperSeq2Seq> {
    let mut model = adapt_method(model, cfg, device)?;
    model.relayout_for_backward();
    if cfg.train.precision != Precision::F32 && model.set_precision(cfg.train.precision) == 0 {
        return Err(cfg.precision_unusable());
    }
    Ok(model)
}

fn adapt_method(model: WhisperSeq2Seq, cfg: &RunConfig, device: &Device) -> Result<WhisperSeq2Seq> {
    Ok(match &cfg.method {
        MethodConfig::Full { freeze_cnn, .. } => {
            let mut m = model;
            if *freeze_cnn {
                m.encoder.conv1 = m.encoder.conv1.clone().no_grad();
                m.encoder.conv2 = m.encoder.conv2.clone().no_grad();
            }
            m
        }
        MethodConfig::Lora(l) => {
            let mut m = model.no_grad();
            m.attach_lora(l, device)?;
            m
        }
        MethodConfig::Adapter(a) => {
            let mut m = model.no_grad();
            m.attach_adapters(a, device);
            m
        }
        MethodConfig::Bitfit => speechtune_peft::bitfit::train_biases(model.no_grad()).0,
        other => {
            return Err(Error::Config {
                path: PathBuf::from("<config>"),
                reason: format!("method {}: seq2seq_asr trains with lora, adapter, bitfit or full", other.name()),
            });
        }
    })
}

/// The token sequences the decoder learns (`<|startoftranscript|> <|lang|> <|transcribe|>
/// <|notimestamps|> text <|endoftext|>`, the transcript as written: Whisper keeps case and
/// punctuation) and the normalised transcripts (`task.text`) that scoring compares with the
/// normalised output; utterances whose sequence does not fit the decoder's positions are dropped
/// (counted in `dropped_too_short`).
fn prepare(
    utts: Vec<Utterance>,
    cfg: &RunConfig,
    processor: &WhisperProcessor,
    max_positions: usize,
) -> Result<Prepared> {
    let tok = &processor.tokenizer;
    let eot = tok.special("<|endoftext|>")?;
    let mut p = Prepared::empty();
    let mut keep = Vec::new();
    for u in utts {
        let text = normalize(u.text.as_deref().unwrap_or(""), &cfg.task.text);
        let language = match &u.lang {
            Some(l) => Some(tok.language(l).map_err(|e| Error::Config {
                path: cfg.data.root.clone(),
                reason: format!("utterance {}: {e} (keep Whisper's languages with data.languages)", u.id),
            })?),
            None => None,
        };
        let mut ids = tok.prefix(language, Some(Task::Transcribe), false)?;
        ids.extend(tok.encode(u.text.as_deref().unwrap_or("").trim())?);
        ids.push(eot);
        if ids.len() > max_positions {
            p.dropped_too_short += 1;
            continue;
        }
        p.texts.push(text);
        p.targets.push(ids);
        p.classes.push(None);
        p.durations.push(u.seconds().unwrap_or(0.0));
        keep.push(u);
    }
    p.utts = std::sync::Arc::new(keep);
    Ok(p)
}

/// The longest audio the front-end takes in one window (30 s for the released models).
fn window_seconds(frontend: &FrontEnd) -> f64 {
    match frontend {
        FrontEnd::LogMel { config, .. } => config.n_samples.map_or(f64::INFINITY, |n| n as f64 / 16000.0),
        FrontEnd::Waveform { .. } => f64::INFINITY,
    }
}

/// Generate transcripts for `set` with `model` (greedy), score CER/WER against the normalised
/// references, overall and per language. Calls `each` with every utterance's index and text.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &WhisperSeq2Seq,
    processor: &WhisperProcessor,
    set: &Prepared,
    cfg: &RunConfig,
    step: usize,
    beams: usize,
    device: &Device,
    mut each: impl FnMut(usize, &str),
) -> Result<EvalReport> {
    let plan = plan_batches(&set.durations, &BatchPlan { shuffle: false, ..cfg.data.batch.clone() });
    let opts = LoaderOptions { workers: cfg.data.workers, prefetch: 2, cache: false };
    let mut overall = AsrScore::default();
    let mut per: BTreeMap<String, AsrScore> = BTreeMap::new();
    for batch in Loader::new(set.utts.clone(), plan, &opts) {
        let batch = batch?;
        let waves: Vec<Vec<f32>> = batch.waves.iter().map(|w| w.as_ref().clone()).collect();
        // One forced language per call: the batch's items grouped by language.
        let mut groups: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
        for (k, &i) in batch.indices.iter().enumerate() {
            groups.entry(set.utts[i].lang.clone()).or_default().push(k);
        }
        for (lang, ks) in groups {
            let o = DecodeOptions {
                language: lang.clone(),
                task: Task::Transcribe,
                beams,
                max_new_tokens: cfg.task.max_new_tokens,
            };
            let group: Vec<Vec<f32>> = ks.iter().map(|&k| waves[k].clone()).collect();
            for (&k, t) in ks.iter().zip(processor.transcribe(model, &group, &o, device)?) {
                let i = batch.indices[k];
                let hyp = normalize(&t.text, &cfg.task.text);
                overall.add(&hyp, &set.texts[i]);
                per.entry(lang.clone().unwrap_or_else(|| "-".into())).or_default().add(&hyp, &set.texts[i]);
                each(i, &hyp);
            }
        }
    }
    let per_language = per
        .into_iter()
        .map(|(l, s)| {
            let score = LanguageScore {
                utterances: s.cer.utterances,
                cer: Some(s.cer.corpus()),
                wer: Some(s.wer.corpus()),
                accuracy: None,
            };
            (l, score)
        })
        .collect();
    Ok(EvalReport {
        step,
        utterances: set.utts.len(),
        cer: overall.cer.corpus(),
        cer_per_utterance: overall.cer.per_utterance_mean(),
        wer: overall.wer.corpus(),
        accuracy: None,
        macro_f1: None,
        per_language,
        confusion_labels: Vec::new(),
        confusion: Vec::new(),
    })
}

struct Seq2SeqJob<'a> {
    cfg: &'a RunConfig,
    device: Device,
    plain: Device,
    processor: WhisperProcessor,
    train_set: Prepared,
    dev_set: Prepared,
    pad: u32,
}

impl Job for Seq2SeqJob<'_> {
    type Model = WhisperSeq2Seq;
    type Report = EvalReport;

    fn micro(
        &mut self,
        model: &WhisperSeq2Seq,
        batch: &speechtune_data::Batch,
        step: usize,
        micro: usize,
    ) -> Result<Option<Micro>> {
        let cfg = self.cfg;
        let mut perturb = (!cfg.augment.is_off())
            .then(|| Perturb::new(&cfg.augment, step_seed(cfg.train.seed ^ 0x5eed, step, micro)));
        let waves: Vec<Vec<f32>> = batch.waves.iter().map(|w| w.as_ref().clone()).collect();
        let enc = self.processor.encode_perturbed(model, &waves, &self.device, perturb.as_mut())?;
        let targets: Vec<Vec<u32>> = batch.indices.iter().map(|&i| self.train_set.targets[i].clone()).collect();
        let loss = teacher_forced_loss(model, &enc, &targets, self.pad)?;
        Ok(Some(Micro { loss, scalars: Vec::new() }))
    }

    fn evaluate(&mut self, model: &WhisperSeq2Seq, step: usize) -> Result<EvalReport> {
        evaluate(&model.valid(), &self.processor, &self.dev_set, self.cfg, step, 1, &self.plain, |_, _| {})
    }

    fn improves(&self, new: &EvalReport, best: &EvalReport) -> Option<bool> {
        let metric = self.cfg.best_metric();
        let (n, o) = (new.metric(metric)?, best.metric(metric)?);
        Some(if metric.higher_is_better() { n > o } else { n < o })
    }

    fn report_scalars(&self, r: &EvalReport) -> Vec<(&'static str, f64)> {
        vec![("dev/cer", r.cer), ("dev/wer", r.wer)]
    }

    fn save(&self, dir: &Path, model: &WhisperSeq2Seq, report: &EvalReport) -> Result<()> {
        save(dir, model, self.cfg, Some(report))
    }

    fn check_resumable(&self, checkpoint: &Path) -> Result<()> {
        check_resumable(self.cfg, &checkpoint.join("config.toml"))
    }
}

/// Write the trained part of `model` and the resolved config into `dir`.
pub fn save(dir: &Path, model: &WhisperSeq2Seq, cfg: &RunConfig, report: Option<&EvalReport>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Write { path: dir.to_path_buf(), source })?;
    write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    if let Some(r) = report {
        write_json(&dir.join("eval.json"), r)?;
    }
    if let MethodConfig::Lora(l) = &cfg.method {
        let state = model.lora_state(&model.prefix);
        write_safetensors(&dir.join(LORA), &state, std::collections::HashMap::from([("format".into(), "pt".into())]))?;
        write_json(&dir.join("adapter_config.json"), &peft_adapter_config(l, &cfg.upstream.model))?;
    } else {
        let state = named_parameters(model, "", true);
        let meta =
            std::collections::HashMap::from([("format".to_string(), format!("speechtune-{}", cfg.method.name()))]);
        write_safetensors(&dir.join(UPSTREAM), &state, meta)?;
    }
    Ok(())
}

/// A fine-tuned Whisper read back from a run or checkpoint folder: the base model with the
/// trained weights (LoRA merged when `merge`), ready to transcribe.
pub fn load(dir: &Path, device: &Device, merge: bool) -> Result<(RunConfig, Whisper, PathBuf)> {
    let dir = resolve(dir)?;
    let cfg = RunConfig::load(&dir.join("config.toml"), &[])?;
    let base = whisper_dir(&cfg)?;
    let Whisper { model, processor } = Whisper::load(&base, device)?;
    // In f32: the weights read below would leave bf16 copies behind (callers set a precision).
    let mut f32_cfg = cfg.clone();
    f32_cfg.train.precision = Precision::F32;
    let mut model = adapt(model, &f32_cfg, device)?;
    if matches!(cfg.method, MethodConfig::Lora(_)) {
        let prefix = model.prefix.clone();
        model.load_lora_state(&prefix, &read_safetensors(&dir.join(LORA))?)?;
        if merge {
            model.merge_lora();
        }
    } else {
        let path = dir.join(UPSTREAM);
        model = load_named(model, "", &read_safetensors(&path)?, &path)?;
    }
    Ok((cfg, Whisper { model, processor }, dir))
}

/// Read `split` of the configured corpus as `Prepared` for a fine-tuned model (for `eval`).
pub fn read_prepared(split: Split, cfg: &RunConfig, whisper: &Whisper) -> Result<Prepared> {
    let utts = read_split(split, cfg)?;
    prepare(utts, cfg, &whisper.processor, usize::MAX)
}

/// Fine-tune Whisper as configured (called by [`crate::train`] for `seq2seq_asr`).
pub(crate) fn train(cfg: &RunConfig, opts: &TrainOptions) -> Result<RunSummary> {
    let device = cfg.train.training_device()?;
    let plain = device.clone().without_autodiff();
    device.seed(cfg.train.seed);
    let run_dir = cfg.output_dir.clone();
    refuse_to_overwrite(&run_dir, opts.resume)?;

    let base = whisper_dir(cfg)?;
    let Whisper { model, processor } = Whisper::load(&base, &device)?;
    let pad = processor.tokenizer.special("<|endoftext|>")?;
    let max_positions = model.decoder.max_positions();
    let window = window_seconds(&processor.frontend);
    let mut train_utts = read_split(Split::Train, cfg)?;
    let too_long = drop_longer_than(&mut train_utts, cfg.data.max_seconds.min(window));
    let mut dev_utts = read_split(Split::Dev, cfg)?;
    let dev_too_long = drop_longer_than(&mut dev_utts, window);
    if too_long + dev_too_long > 0 {
        say!(
            "{too_long} training and {dev_too_long} dev utterances longer than {:.0} s (data.max_seconds or Whisper's window) left out",
            cfg.data.max_seconds.min(window)
        );
    }
    let train_set = prepare(train_utts, cfg, &processor, max_positions)?;
    let dev_set = prepare(dev_utts, cfg, &processor, usize::MAX)?;
    if train_set.utts.is_empty() {
        return Err(Error::Config {
            path: cfg.data.root.clone(),
            reason: "no training utterance left to train on".into(),
        });
    }
    if train_set.dropped_too_short > 0 {
        say!(
            "{} training transcripts longer than the decoder's {max_positions} positions left out",
            train_set.dropped_too_short
        );
    }
    let model = adapt(model, cfg, &device)?;
    let (trainable, total) = count_parameters(&model);
    say!(
        "trainable parameters: {trainable} of {total} ({:.2}%), method {}; {} training and {} dev utterances",
        100.0 * trainable as f64 / total.max(1) as f64,
        cfg.method.name(),
        train_set.utts.len(),
        dev_set.utts.len(),
    );
    let root = crate::distributed::comm().is_root();
    if root {
        std::fs::create_dir_all(&run_dir).map_err(|source| Error::Write { path: run_dir.clone(), source })?;
        write_atomic(&run_dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    }

    let utts = train_set.utts.clone();
    let durations = train_set.durations.clone();
    let dropped = train_set.dropped_too_short;
    let mut job = Seq2SeqJob { cfg, device: device.clone(), plain, processor, train_set, dev_set, pad };
    let data = training_data(cfg, utts, &durations);
    let (_, out) = fit(&mut job, model, data, &cfg.train, &run_dir, &device, opts.progress, opts.resume)?;
    let mut summary = RunSummary::new(&run_dir, out, (trainable, total));
    summary.dropped_too_short = dropped;
    if root {
        let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
        write_atomic(&run_dir.join("summary.json"), text.as_bytes())?;
    }
    Ok(summary)
}
