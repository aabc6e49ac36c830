//! The training loop: updates with gradient accumulation, evaluation on the dev split, the best
//! checkpoint and the last N, early stopping, and exact resumption after the process is killed.
//!
//! Exactness: every random draw of a step (dropout through the backend's generator, SpecAugment
//! masks and LayerDrop through our own) is seeded from (seed, step, micro-batch), the batch
//! order is a function of (seed, epoch), and the optimiser state, the step and the position in
//! the epoch are saved with the weights; a resumed run therefore repeats exactly what the
//! uninterrupted run does. (The backend's generator is per process: two trainings running in
//! threads of one process would draw from it in turn and lose that exactness.)

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::{Int, TensorData};
use serde::{Deserialize, Serialize};
use speechtune_data::{BatchPlan, Loader, LoaderOptions, Split, Vocab, drop_longer_than, plan_batches};
use speechtune_models::weights::write_atomic;
use speechtune_models::{FrontEnd, Perturb};
use speechtune_tasks::ctc_loss;

use crate::checkpoint::{checkpoints, load_trainable_record, save_model, trainable_record};
use crate::clip::clip_global_norm;
use crate::config::{MethodConfig, RunConfig, TaskKind};
use crate::eval::{EvalReport, evaluate};
use crate::feature_cache::{CacheKind, CacheStats, FeatureCache};
use crate::model::{TaskModel, count_parameters, load_upstream};
use crate::prepare::{class_names, prepare, read_split, texts};
use crate::tensorboard::EventWriter;
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
    /// Training utterances dropped because their audio gives fewer frames than CTC needs.
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

/// Where the loop is; saved with each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LoopState {
    step: usize,
    epoch: u64,
    /// Batches of this epoch's plan already consumed.
    batch_in_epoch: usize,
    skipped: usize,
    bad_in_a_row: usize,
    audio_seconds: f64,
    seconds: f64,
    evals_without_improvement: usize,
    first: EvalReport,
    last: EvalReport,
    best: EvalReport,
}

/// A seed for draw `k` of `step`, decorrelated from neighbours (SplitMix64 finaliser).
fn step_seed(seed: u64, step: usize, k: usize) -> u64 {
    let mut z =
        seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (k as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn is_better(metric: crate::config::Metric, new: f64, old: f64) -> bool {
    if metric.higher_is_better() { new > old } else { new < old }
}

/// A run resumes only with the settings it was trained with; the number of steps, the time
/// budget and evaluation/checkpoint intervals may change.
fn check_resumable(cfg: &RunConfig, saved_path: &Path) -> Result<()> {
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
    let t = |c: &RunConfig| {
        (c.train.lr, c.train.weight_decay, c.train.schedule.clone(), c.train.grad_accumulation, c.train.seed)
    };
    if t(&saved) != t(cfg) {
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

/// Keep only the lines of `metrics.jsonl` up to `step` (a resumed run rewrites what follows).
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let keep: Vec<&str> = text
        .lines()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            let s = v.get("step").or_else(|| v.get("eval").and_then(|e| e.get("step")));
            s.and_then(|s| s.as_u64()).is_some_and(|s| s as usize <= step)
        })
        .collect();
    let mut out = keep.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    Ok(write_atomic(path, out.as_bytes())?)
}

/// Train as configured.
pub fn train(cfg: &RunConfig, opts: &TrainOptions) -> Result<RunSummary> {
    let started = Instant::now();
    let device = speechtune_models::parse_device(cfg.train.device.as_deref())?.autodiff();
    let plain = device.clone().without_autodiff();
    device.seed(cfg.train.seed);
    let run_dir = cfg.output_dir.clone();
    let latest = checkpoints(&run_dir).into_iter().rev().find(|(_, p)| p.join("resume/state.json").is_file());
    if latest.is_some() && !opts.resume {
        return Err(Error::Config {
            path: run_dir.clone(),
            reason: "this run folder has checkpoints: pass --resume to continue it, or choose another output_dir"
                .into(),
        });
    }

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
    let mut model = TaskModel::build(upstream.model, cfg, vocab.len(), classes.len(), &device)?;
    let (trainable, total) = count_parameters(&model);
    eprintln!(
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
        eprintln!("{unknown} characters outside the vocabulary were mapped to <unk>: {unknown_examples:?}");
    }

    std::fs::create_dir_all(&run_dir).map_err(|source| Error::Write { path: run_dir.clone(), source })?;
    write_atomic(&run_dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    write_atomic(&run_dir.join("vocab.json"), vocab.to_json().as_bytes())?;
    let metrics_path = run_dir.join("metrics.jsonl");

    let eval = |model: &TaskModel, step: usize| {
        evaluate(&model.valid(), &frontend, &dev_set, cfg, &vocab, &classes, step, 1, &plain, |_, _| {})
    };
    let mut optim = AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(cfg.train.weight_decay as f32).init();
    let save_best = |model: &TaskModel, report: &EvalReport| -> Result<()> {
        let tmp = run_dir.join(".best.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        save_model(&tmp, model, cfg, &vocab, &classes, &upstream_prefix, Some(report))?;
        let best = run_dir.join("best");
        let _ = std::fs::remove_dir_all(&best);
        std::fs::rename(&tmp, &best).map_err(|source| Error::Write { path: best, source })
    };

    let mut st = match &latest {
        Some((step, dir)) if opts.resume => {
            check_resumable(cfg, &dir.join("config.toml"))?;
            let state_path = dir.join("resume/state.json");
            let text = std::fs::read_to_string(&state_path).unwrap_or_default();
            let st: LoopState = serde_json::from_str(&text)
                .map_err(|e| Error::Config { path: state_path.clone(), reason: e.to_string() })?;
            let model_path = dir.join("resume/model.bpk");
            let bytes = std::fs::read(&model_path)
                .map_err(|e| Error::Config { path: model_path.clone(), reason: e.to_string() })?;
            model = load_trainable_record(model, bytes, &model_path)?;
            let optim_path = dir.join("resume/optim.bpk");
            let bytes = std::fs::read(&optim_path)
                .map_err(|e| Error::Config { path: optim_path.clone(), reason: e.to_string() })?;
            optim = optim
                .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
                .map_err(|e| Error::Config { path: optim_path.clone(), reason: e.to_string() })?;
            truncate_metrics(&metrics_path, *step)?;
            eprintln!("resuming {} at step {step}", run_dir.display());
            st
        }
        _ => {
            let first = eval(&model, 0)?;
            std::fs::write(&metrics_path, "").map_err(|source| Error::Write { path: metrics_path.clone(), source })?;
            LoopState {
                step: 0,
                epoch: 0,
                batch_in_epoch: 0,
                skipped: 0,
                bad_in_a_row: 0,
                audio_seconds: 0.0,
                seconds: 0.0,
                evals_without_improvement: 0,
                last: first.clone(),
                best: first.clone(),
                first,
            }
        }
    };
    let resumed_from = opts.resume.then_some(st.step).filter(|_| latest.is_some());
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|source| Error::Write { path: metrics_path.clone(), source })?;
    let mut events = EventWriter::create(&run_dir, resumed_from.is_some())?;
    let mut log = |v: serde_json::Value| {
        let _ = writeln!(metrics, "{v}");
    };
    if resumed_from.is_none() {
        log(serde_json::json!({"eval": &st.first}));
        events.eval(&st.first);
    }

    let loader_opts = LoaderOptions { workers: cfg.data.workers, prefetch: 4, cache: cfg.data.cache };
    let cache = Loader::cache_handle();
    let plan_for = |epoch: u64| {
        let plan = BatchPlan { seed: cfg.train.seed.wrapping_add(epoch), ..cfg.data.batch.clone() };
        plan_batches(&train_set.durations, &plan)
    };
    let loader_at = |epoch: u64, skip: usize| {
        let plan: Vec<Vec<usize>> = plan_for(epoch).into_iter().skip(skip).collect();
        Loader::with_cache(train_set.utts.clone(), plan, &loader_opts, cache.clone())
    };
    if plan_for(0).is_empty() {
        return Err(Error::Diverged("no training batches".into()));
    }
    let mut loader = loader_at(st.epoch, st.batch_in_epoch);
    let mut feature_cache = FeatureCache::for_model(
        &model.upstream,
        &frontend,
        !cfg.augment.is_off(),
        (cfg.data.cache_features_gb * 1e9) as usize,
        cfg.data.cache_f16,
    );
    let bar = if opts.progress {
        indicatif::ProgressBar::new(cfg.train.steps as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}")
            .expect("valid template"),
    );
    bar.set_position(st.step as u64);
    let ce = CrossEntropyLossConfig::new().init(&device);
    let metric = cfg.best_metric();
    let freeze_updates = match cfg.method {
        MethodConfig::Full { freeze_finetune_updates, .. } => freeze_finetune_updates,
        _ => 0,
    };
    let accum = cfg.train.grad_accumulation;
    let checkpoint_every =
        if cfg.train.checkpoint_every > 0 { cfg.train.checkpoint_every } else { cfg.train.eval_every };
    let process_start_seconds = st.seconds;
    let mut stopped_early = false;
    let mut out_of_time = false;
    if resumed_from.is_none() {
        save_best(&model, &st.best)?;
    }

    let (mut step_seconds, mut steps_here) = (0.0f64, 0usize);
    while st.step < cfg.train.steps && !stopped_early && !out_of_time {
        let step = st.step;
        let step_started = Instant::now();
        let lr = cfg.train.schedule.lr(cfg.train.lr, step, cfg.train.steps);
        let mut accumulator = GradientsAccumulator::<TaskModel>::new();
        let mut loss_sum = 0.0f32;
        let mut finite = true;
        let mut grad_norm = 0.0f32;
        for micro in 0..accum {
            let batch = match loader.next() {
                Some(b) => b?,
                None => {
                    st.epoch += 1;
                    st.batch_in_epoch = 0;
                    loader = loader_at(st.epoch, 0);
                    loader.next().ok_or_else(|| Error::Diverged("no training batches".into()))??
                }
            };
            st.batch_in_epoch += 1;
            st.audio_seconds += batch.seconds();
            if !finite {
                continue; // this update is skipped; keep the data position in step with the plan
            }
            device.seed(step_seed(cfg.train.seed, step, micro));
            let mut perturb = (!cfg.augment.is_off())
                .then(|| Perturb::new(&cfg.augment, step_seed(cfg.train.seed ^ 0x5eed, step, micro)));
            let waves: Vec<Vec<f32>> = batch.waves.iter().map(|w| w.as_ref().clone()).collect();
            let detach = step < freeze_updates;
            let out = match feature_cache.as_mut() {
                Some(c) if c.kind() == CacheKind::HiddenStates => {
                    model.heads(c.output(&model.upstream, &batch.indices, &waves, &device)?, detach)
                }
                Some(c) => model.forward(
                    c.input(&model.upstream, &batch.indices, &waves, &device)?,
                    perturb.as_mut(),
                    detach,
                )?,
                None => model.forward(frontend.prepare(&waves, &device)?, perturb.as_mut(), detach)?,
            };
            let ctc = out.ctc_logits.as_ref().map(|logits| {
                let targets: Vec<Vec<u32>> = batch.indices.iter().map(|&i| train_set.targets[i].clone()).collect();
                ctc_loss(logits.clone(), &out.frame_lengths, &targets, vocab.blank()).mean()
            });
            let cls = out.class_logits.as_ref().map(|logits| {
                let t: Vec<i64> = batch.indices.iter().map(|&i| train_set.classes[i].unwrap_or(0) as i64).collect();
                ce.forward(logits.clone(), Tensor::<1, Int>::from_data(TensorData::new(t, [batch.len()]), &device))
            });
            let w = cfg.task.lid_weight;
            let loss: Tensor<1> = match (ctc, cls) {
                (Some(c), Some(l)) => c * (1.0 - w) + l * w,
                (Some(c), None) => c,
                (None, Some(l)) => l,
                (None, None) => unreachable!("every task has a head"),
            };
            let value: f32 = loss.clone().into_scalar();
            if !value.is_finite() {
                finite = false;
                continue;
            }
            loss_sum += value / accum as f32;
            let grads = GradientsParams::from_grads((loss / accum as f32).backward(), &model);
            accumulator.accumulate(&model, grads);
        }
        st.step += 1;
        if finite {
            st.bad_in_a_row = 0;
            let mut grads = accumulator.grads();
            grad_norm = clip_global_norm(&model, &mut grads, cfg.train.grad_clip);
            model = optim.step(lr, model, grads);
        } else {
            st.skipped += 1;
            st.bad_in_a_row += 1;
            if st.bad_in_a_row >= cfg.train.max_bad_steps {
                return Err(Error::Diverged(format!(
                    "{} steps in a row with a non-finite loss (step {})",
                    st.bad_in_a_row, st.step
                )));
            }
        }
        step_seconds += step_started.elapsed().as_secs_f64();
        steps_here += 1;
        let elapsed = started.elapsed().as_secs_f64();
        st.seconds = process_start_seconds + elapsed;
        let speed = st.audio_seconds / st.seconds.max(1e-9);
        bar.set_position(st.step as u64);
        bar.set_message(format!("loss {loss_sum:.3} lr {lr:.2e} {speed:.1} audio s/s"));
        if finite {
            log(serde_json::json!({
                "step": st.step, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm, "audio_seconds_per_second": speed
            }));
            events.scalars(
                st.step,
                &[("train/loss", loss_sum as f64), ("train/lr", lr), ("train/grad_norm", grad_norm as f64)],
            );
        }
        out_of_time = cfg.train.time_budget_seconds.is_some_and(|b| elapsed > b);
        let last_step = st.step == cfg.train.steps || out_of_time;
        if (cfg.train.eval_every > 0 && st.step.is_multiple_of(cfg.train.eval_every)) || last_step {
            st.last = eval(&model, st.step)?;
            log(serde_json::json!({"eval": &st.last}));
            events.eval(&st.last);
            let (new, old) = (st.last.metric(metric), st.best.metric(metric));
            if let (Some(n), Some(o)) = (new, old)
                && (is_better(metric, n, o) || st.best.step == 0)
            {
                st.best = st.last.clone();
                st.evals_without_improvement = 0;
                save_best(&model, &st.last)?;
            } else {
                st.evals_without_improvement += 1;
                if cfg.train.early_stopping_patience.is_some_and(|p| st.evals_without_improvement >= p) {
                    eprintln!(
                        "early stopping at step {}: no improvement of {metric:?} in {} evaluations",
                        st.step, st.evals_without_improvement
                    );
                    stopped_early = true;
                }
            }
        }
        let checkpoint_due = checkpoint_every > 0 && st.step.is_multiple_of(checkpoint_every);
        if checkpoint_due || last_step || stopped_early {
            save_checkpoint(&run_dir, &model, &optim, &st, cfg, &vocab, &classes, &upstream_prefix)?;
        }
    }
    bar.finish_and_clear();
    let layer_weights = model.featurizer.layer_weights();
    let summary = RunSummary {
        run_dir: run_dir.clone(),
        steps: st.step,
        resumed_from,
        skipped_steps: st.skipped,
        dropped_too_short: train_set.dropped_too_short,
        unknown_characters: unknown,
        unknown_examples,
        trainable_parameters: trainable,
        total_parameters: total,
        seconds: st.seconds,
        seconds_per_step: step_seconds / steps_here.max(1) as f64,
        peak_rss_bytes: peak_rss(),
        stopped_early,
        feature_cache: feature_cache.as_ref().map(|c| c.stats()),
        first: st.first.clone(),
        last: st.last.clone(),
        best: st.best.clone(),
        best_dir: run_dir.join("best"),
        layer_weights,
    };
    write_atomic(&run_dir.join("summary.json"), serde_json::to_string_pretty(&summary).unwrap_or_default().as_bytes())?;
    Ok(summary)
}

/// `checkpoints/step-N/` with the model files and `resume/`, written under a temporary name and
/// renamed; older checkpoints beyond `keep_last` are removed.
#[allow(clippy::too_many_arguments)]
fn save_checkpoint(
    run_dir: &Path,
    model: &TaskModel,
    optim: &ModuleOptimizer,
    st: &LoopState,
    cfg: &RunConfig,
    vocab: &Vocab,
    classes: &[String],
    upstream_prefix: &str,
) -> Result<()> {
    let root = run_dir.join("checkpoints");
    let tmp = root.join(format!(".step-{}.tmp", st.step));
    let _ = std::fs::remove_dir_all(&tmp);
    save_model(&tmp, model, cfg, vocab, classes, upstream_prefix, Some(&st.last))?;
    let resume = tmp.join("resume");
    write_atomic(&resume.join("model.bpk"), &trainable_record(model)?)?;
    let optim_bytes =
        optim.into_bytes().map_err(|e| Error::Diverged(format!("cannot serialise the optimiser: {e}")))?;
    write_atomic(&resume.join("optim.bpk"), &optim_bytes)?;
    // Written last: a checkpoint without it is incomplete and never resumed from.
    write_atomic(&resume.join("state.json"), serde_json::to_string_pretty(st).unwrap_or_default().as_bytes())?;
    let dst = root.join(format!("step-{}", st.step));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::rename(&tmp, &dst).map_err(|source| Error::Write { path: dst.clone(), source })?;
    let all = checkpoints(run_dir);
    for (_, old) in all.iter().take(all.len().saturating_sub(cfg.train.keep_last)) {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(())
}

/// Peak resident set size of this process (`VmHWM` in /proc/self/status), Linux only.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
