//! The training loop: data preparation, optimisation with evaluation on the dev split, metrics
//! to `metrics.jsonl`, and the trained weights in the run folder.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::grad_clipping::GradientClippingConfig;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, TensorData};
use serde::Serialize;
use speechtune_data::corpus::{Layout, fill_durations};
use speechtune_data::text::normalize;
use speechtune_data::{
    BatchPlan, Loader, LoaderOptions, Problems, Split, Utterance, Vocab, drop_longer_than, plan_batches,
};
use speechtune_models::FrontEnd;
use speechtune_tasks::ctc::greedy;
use speechtune_tasks::ctc_loss;
use speechtune_tasks::metrics::{AsrScore, Confusion};

use crate::config::{RunConfig, TaskKind};
use crate::model::{TaskModel, count_parameters, load_upstream};
use crate::{Error, Result};

/// Utterances with their training targets.
struct Prepared {
    utts: Arc<Vec<Utterance>>,
    /// Normalised transcripts.
    texts: Vec<String>,
    /// CTC token ids (with the `[lang]` token first for joint ASR + LID).
    targets: Vec<Vec<u32>>,
    /// Index into the language list.
    langs: Vec<usize>,
    durations: Vec<f64>,
}

/// One evaluation on the dev split.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub step: usize,
    pub utterances: usize,
    /// Corpus-level CER and WER, and the per-utterance mean CER.
    pub cer: f64,
    pub cer_per_utterance: f64,
    pub wer: f64,
    pub lid_accuracy: Option<f64>,
    pub lid_macro_f1: Option<f64>,
    /// Per language: (utterances, CER, LID accuracy).
    pub per_language: BTreeMap<String, (usize, f64, Option<f64>)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub steps: usize,
    pub skipped_steps: usize,
    /// Training utterances dropped because their audio gives fewer frames than CTC needs.
    pub dropped_too_short: usize,
    /// Characters of dev transcripts not in the training vocabulary (mapped to `<unk>`).
    pub unknown_characters: usize,
    pub trainable_parameters: usize,
    pub total_parameters: usize,
    pub seconds: f64,
    pub first: EvalReport,
    pub last: EvalReport,
    pub layer_weights: Vec<f32>,
}

fn lang_of(u: &Utterance) -> String {
    u.lang.clone().unwrap_or_else(|| "-".into())
}

fn prepare(
    mut utts: Vec<Utterance>,
    cfg: &RunConfig,
    vocab: &Vocab,
    languages: &[String],
    min_frames: impl Fn(f64) -> usize,
) -> (Prepared, usize, usize) {
    let joint = cfg.task.kind == TaskKind::JointAsrLid;
    let mut dropped = 0;
    let mut unknown = 0;
    let mut keep = Vec::new();
    let (mut texts, mut targets, mut langs, mut durations) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for u in utts.drain(..) {
        let text = normalize(u.text.as_deref().unwrap_or(""), &cfg.task.text);
        let lang = lang_of(&u);
        let (ids, unk) = vocab.encode(&text, joint.then_some(lang.as_str()));
        let seconds = u.seconds().unwrap_or(0.0);
        // CTC needs a frame per token plus one between repeated tokens.
        let needed = ids.len() + ids.windows(2).filter(|w| w[0] == w[1]).count();
        if cfg.task.kind != TaskKind::Lid && min_frames(seconds) < needed {
            dropped += 1;
            continue;
        }
        unknown += unk;
        texts.push(text);
        targets.push(ids);
        langs.push(languages.iter().position(|l| *l == lang).unwrap_or(0));
        durations.push(seconds);
        keep.push(u);
    }
    (Prepared { utts: Arc::new(keep), texts, targets, langs, durations }, dropped, unknown)
}

fn read_split(layout: &Layout, split: Split, cfg: &RunConfig) -> Result<Vec<Utterance>> {
    let mut problems = Problems::new(false);
    let mut utts = layout.read_split(split, &cfg.data.duration, &mut problems)?;
    if let Some(p) = fill_durations(&mut utts, cfg.data.workers).into_iter().next() {
        return Err(speechtune_data::Error::Bad(p).into());
    }
    Ok(utts)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(speechtune_models::weights::write_atomic(path, bytes)?)
}

/// Train as configured; `progress` draws a progress bar on stderr.
pub fn train(cfg: &RunConfig, progress: bool) -> Result<RunSummary> {
    let started = Instant::now();
    let device = Device::flex().autodiff();
    let plain = device.clone().without_autodiff();
    device.seed(cfg.train.seed);

    let layout = Layout::detect(&cfg.data.root)?;
    let mut train_utts = read_split(&layout, Split::Train, cfg)?;
    drop_longer_than(&mut train_utts, cfg.data.max_seconds);
    let dev_utts = read_split(&layout, Split::Dev, cfg)?;
    let languages: Vec<String> = train_utts.iter().map(lang_of).collect::<BTreeSet<_>>().into_iter().collect();
    let train_texts: Vec<String> =
        train_utts.iter().map(|u| normalize(u.text.as_deref().unwrap_or(""), &cfg.task.text)).collect();
    let joint = cfg.task.kind == TaskKind::JointAsrLid;
    let vocab = Vocab::build(train_texts.iter().map(|s| s.as_str()), if joint { &languages } else { &[] });

    let upstream = load_upstream(cfg, &device)?;
    let frontend: FrontEnd = upstream.frontend.clone();
    let upstream_prefix = upstream.prefix.clone();
    let per_frame = upstream.model.downsampling() as f64 / 16000.0;
    let frames = move |s: f64| (s / per_frame).floor() as usize;
    let (train_set, dropped, _) = prepare(train_utts, cfg, &vocab, &languages, frames);
    let (dev_set, _, unknown) = prepare(dev_utts, cfg, &vocab, &languages, |_| usize::MAX);
    let mut model = TaskModel::build(upstream.model, cfg, vocab.len(), languages.len(), &device)?;
    let (trainable, total) = count_parameters(&model);
    eprintln!(
        "trainable parameters: {trainable} of {total} ({:.2}%); {} training and {} dev utterances in {} languages",
        100.0 * trainable as f64 / total.max(1) as f64,
        train_set.utts.len(),
        dev_set.utts.len(),
        languages.len()
    );

    let run_dir = cfg.output_dir.clone();
    std::fs::create_dir_all(&run_dir).map_err(|source| Error::Write { path: run_dir.clone(), source })?;
    write_file(&run_dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    write_file(&run_dir.join("vocab.json"), vocab.to_json().as_bytes())?;
    let metrics_path = run_dir.join("metrics.jsonl");
    let mut metrics =
        std::fs::File::create(&metrics_path).map_err(|source| Error::Write { path: metrics_path.clone(), source })?;
    let mut log = |v: serde_json::Value| {
        let _ = writeln!(metrics, "{v}");
    };

    let eval = |model: &TaskModel, step: usize| {
        evaluate(&model.valid(), &frontend, &dev_set, cfg, &vocab, &languages, step, &plain)
    };
    let first = eval(&model, 0)?;
    log(serde_json::json!({"eval": &first}));

    let mut optim = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(cfg.train.weight_decay as f32)
        .with_grad_clipping(cfg.train.grad_clip.map(GradientClippingConfig::Norm))
        .init();
    let opts = LoaderOptions { workers: cfg.data.workers, prefetch: 4, cache: cfg.data.cache };
    let cache = Loader::cache_handle();
    let plan_for = |epoch: u64| {
        let plan = BatchPlan { seed: cfg.train.seed.wrapping_add(epoch), ..cfg.data.batch.clone() };
        plan_batches(&train_set.durations, &plan)
    };
    let mut epoch = 0u64;
    let mut loader = Loader::with_cache(train_set.utts.clone(), plan_for(epoch), &opts, cache.clone());
    let bar =
        if progress { indicatif::ProgressBar::new(cfg.train.steps as u64) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}")
            .expect("valid template"),
    );
    let (mut bad_in_a_row, mut skipped, mut audio_seconds, mut steps_done) = (0usize, 0usize, 0.0f64, 0usize);
    let mut last = first.clone();
    let ce = CrossEntropyLossConfig::new().init(&device);
    for step in 0..cfg.train.steps {
        let batch = match loader.next() {
            Some(b) => b?,
            None => {
                epoch += 1;
                loader = Loader::with_cache(train_set.utts.clone(), plan_for(epoch), &opts, cache.clone());
                loader.next().ok_or_else(|| Error::Diverged("no training batches".into()))??
            }
        };
        let waves: Vec<Vec<f32>> = batch.waves.iter().map(|w| w.as_ref().clone()).collect();
        audio_seconds += batch.seconds();
        let out = model.forward(frontend.prepare(&waves, &device)?)?;
        let ctc = out.ctc_logits.as_ref().map(|logits| {
            let targets: Vec<Vec<u32>> = batch.indices.iter().map(|&i| train_set.targets[i].clone()).collect();
            ctc_loss(logits.clone(), &out.frame_lengths, &targets, vocab.blank()).mean()
        });
        let lid = out.lid_logits.as_ref().map(|logits| {
            let t: Vec<i64> = batch.indices.iter().map(|&i| train_set.langs[i] as i64).collect();
            ce.forward(logits.clone(), Tensor::<1, Int>::from_data(TensorData::new(t, [batch.len()]), &device))
        });
        let w = cfg.task.lid_weight;
        let loss: Tensor<1> = match (ctc, lid) {
            (Some(c), Some(l)) => c * (1.0 - w) + l * w,
            (Some(c), None) => c,
            (None, Some(l)) => l,
            (None, None) => unreachable!("every task has a head"),
        };
        let value: f32 = loss.clone().into_scalar();
        let lr = cfg.train.schedule.lr(cfg.train.lr, step, cfg.train.steps);
        if !value.is_finite() {
            skipped += 1;
            bad_in_a_row += 1;
            if bad_in_a_row >= cfg.train.max_bad_steps {
                return Err(Error::Diverged(format!(
                    "{bad_in_a_row} steps in a row with a non-finite loss (step {step})"
                )));
            }
            continue;
        }
        bad_in_a_row = 0;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(lr, model, grads);
        steps_done = step + 1;
        let speed = audio_seconds / started.elapsed().as_secs_f64();
        bar.set_position(steps_done as u64);
        bar.set_message(format!("loss {value:.3} lr {lr:.2e} {speed:.1} audio s/s"));
        log(serde_json::json!({"step": steps_done, "loss": value, "lr": lr, "audio_seconds_per_second": speed}));
        let out_of_time = cfg.train.time_budget_seconds.is_some_and(|b| started.elapsed().as_secs_f64() > b);
        if cfg.train.eval_every > 0
            && steps_done % cfg.train.eval_every == 0
            && steps_done < cfg.train.steps
            && !out_of_time
        {
            last = eval(&model, steps_done)?;
            log(serde_json::json!({"eval": &last}));
        }
        if out_of_time {
            break;
        }
    }
    bar.finish_and_clear();
    if last.step != steps_done {
        last = eval(&model, steps_done)?;
        log(serde_json::json!({"eval": &last}));
    }
    crate::checkpoint::save(&run_dir, &model, cfg, &upstream_prefix)?;
    let layer_weights = model.featurizer.layer_weights();
    let summary = RunSummary {
        run_dir,
        steps: steps_done,
        skipped_steps: skipped,
        dropped_too_short: dropped,
        unknown_characters: unknown,
        trainable_parameters: trainable,
        total_parameters: total,
        seconds: started.elapsed().as_secs_f64(),
        first,
        last,
        layer_weights,
    };
    write_file(
        &summary.run_dir.join("summary.json"),
        serde_json::to_string_pretty(&summary).unwrap_or_default().as_bytes(),
    )?;
    Ok(summary)
}

/// Greedy CTC decoding or classification on the dev split, with CER, WER and LID accuracy.
#[allow(clippy::too_many_arguments)]
fn evaluate(
    model: &TaskModel,
    frontend: &FrontEnd,
    dev: &Prepared,
    cfg: &RunConfig,
    vocab: &Vocab,
    languages: &[String],
    step: usize,
    device: &Device,
) -> Result<EvalReport> {
    let plan = plan_batches(&dev.durations, &BatchPlan { shuffle: false, ..cfg.data.batch.clone() });
    let opts = LoaderOptions { workers: cfg.data.workers, prefetch: 2, cache: false };
    let joint = cfg.task.kind == TaskKind::JointAsrLid;
    let mut asr: BTreeMap<String, AsrScore> = BTreeMap::new();
    let mut overall = AsrScore::default();
    let mut lid: BTreeMap<String, Confusion> = BTreeMap::new();
    let mut lid_all = Confusion::default();
    let lang_tokens: BTreeMap<u32, String> = vocab.languages().into_iter().collect();
    for batch in Loader::new(dev.utts.clone(), plan, &opts) {
        let batch = batch?;
        let waves: Vec<Vec<f32>> = batch.waves.iter().map(|w| w.as_ref().clone()).collect();
        let out = model.forward(frontend.prepare(&waves, device)?)?;
        for (k, &i) in batch.indices.iter().enumerate() {
            let truth = lang_of(&dev.utts[i]);
            let mut predicted_lang = None;
            if let Some(logits) = &out.ctc_logits {
                let [_, t, v] = logits.dims();
                let lp = log_softmax(logits.clone().narrow(0, k, 1), 2).narrow(1, 0, out.frame_lengths[k].min(t));
                let lp: Vec<f32> = lp.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
                let mut ids = greedy(&lp, v, vocab.blank());
                if joint && let Some(first) = ids.first().copied() {
                    if let Some(l) = lang_tokens.get(&first) {
                        predicted_lang = Some(l.clone());
                    }
                    ids.retain(|id| !lang_tokens.contains_key(id));
                }
                let hyp = vocab.decode(&ids);
                overall.add(&hyp, &dev.texts[i]);
                asr.entry(truth.clone()).or_default().add(&hyp, &dev.texts[i]);
                if joint {
                    predicted_lang.get_or_insert_with(|| "<none>".into());
                }
            }
            if let Some(logits) = &out.lid_logits {
                let row: Vec<f32> = logits
                    .clone()
                    .narrow(0, k, 1)
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .unwrap_or_default();
                let best = row.iter().enumerate().fold((0, f32::MIN), |m, (j, &x)| if x > m.1 { (j, x) } else { m }).0;
                predicted_lang = languages.get(best).cloned();
            }
            if let Some(p) = predicted_lang {
                lid_all.add(&truth, &p);
                lid.entry(truth.clone()).or_default().add(&truth, &p);
            }
        }
    }
    let has_lid = lid_all.total() > 0;
    let mut per_language = BTreeMap::new();
    for lang in asr.keys().chain(lid.keys()).collect::<BTreeSet<_>>() {
        let n = asr.get(lang).map(|s| s.cer.utterances).or_else(|| lid.get(lang).map(|c| c.total())).unwrap_or(0);
        let cer = asr.get(lang).map(|s| s.cer.corpus()).unwrap_or(0.0);
        per_language.insert(lang.clone(), (n, cer, lid.get(lang).map(|c| c.accuracy())));
    }
    Ok(EvalReport {
        step,
        utterances: dev.utts.len(),
        cer: overall.cer.corpus(),
        cer_per_utterance: overall.cer.per_utterance_mean(),
        wer: overall.wer.corpus(),
        lid_accuracy: has_lid.then(|| lid_all.accuracy()),
        lid_macro_f1: has_lid.then(|| lid_all.macro_f1()),
        per_language,
    })
}
