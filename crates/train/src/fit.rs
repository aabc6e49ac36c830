//! The training loop shared by fine-tuning (`train`) and pre-training (`pretrain`): updates with
//! gradient accumulation, AdamW with the configured schedule, global-norm clipping, non-finite
//! steps skipped, evaluation, the best checkpoint and the last N, early stopping, a time budget,
//! exact resumption after the process is killed, `metrics.jsonl` and TensorBoard events, and a
//! return to the last checkpoint when a job reports its training unhealthy. What is trained and
//! how a batch becomes a loss is the [`Job`]'s.
//!
//! Data-parallel (several processes, [`crate::distributed`]): each rank takes its share of the
//! batch stream ([`crate::shard`]), gradients are summed over the ranks before clipping and the
//! optimiser step, so every rank holds the same weights; rank 0 alone evaluates, logs and
//! writes, and what it decides (stop, roll back) reaches the others with the next collective.
//!
//! Exactness: every random draw of a step is seeded from (seed, step, micro-batch) by
//! [`step_seed`], the batch order is a function of (seed, epoch), and the optimiser state, the
//! step and the position in the epoch are saved with the weights; a resumed run therefore
//! repeats exactly what the uninterrupted run does. (The backend's generator is per process:
//! two trainings running in threads of one process would draw from it in turn and lose that
//! exactness.)

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use speechtune_data::{Batch, BatchPlan, Loader, LoaderOptions, Utterance, plan_batches};
use speechtune_models::weights::write_atomic;

use crate::checkpoint::checkpoints;
use crate::clip::clip_global_norm;
use crate::config::{OnCollapse, TrainConfig};
use crate::distributed::{self, Comm, say};
use crate::shard::{Position, Stream};
use crate::tensorboard::EventWriter;
use crate::{Error, Result};

/// The loss of one micro-batch and what to log with it.
pub struct Micro {
    pub loss: Tensor<1>,
    /// Averaged over the micro-batches of an update, logged as `NAME` in `metrics.jsonl` and
    /// `train/NAME` in TensorBoard.
    pub scalars: Vec<(&'static str, f64)>,
}

/// What an update looked like, for [`Job::health`].
pub struct Update {
    pub step: usize,
    pub loss: f64,
    pub grad_norm: f64,
    pub finite: bool,
    pub scalars: Vec<(&'static str, f64)>,
}

/// A job's verdict after an update.
pub enum Health {
    Ok,
    /// Training has gone wrong (the job has said so to the user): with `train.on_collapse =
    /// "rollback"` the loop returns to the last checkpoint and continues at half the learning
    /// rate.
    Unhealthy(String),
}

/// What the loop trains.
pub trait Job {
    type Model: Module;
    type Report: Clone + Serialize + DeserializeOwned;

    /// The loss of one micro-batch at `step`; `None` skips the micro-batch (counted).
    fn micro(&mut self, model: &Self::Model, batch: &Batch, step: usize, micro: usize) -> Result<Option<Micro>>;
    /// Score `model` on the held-out data.
    fn evaluate(&mut self, model: &Self::Model, step: usize) -> Result<Self::Report>;
    /// Whether `new` beats `best`; `None` when a metric is missing (never best).
    fn improves(&self, new: &Self::Report, best: &Self::Report) -> Option<bool>;
    /// TensorBoard scalars of a report (`dev/...`).
    fn report_scalars(&self, report: &Self::Report) -> Vec<(&'static str, f64)>;
    /// Write what a user needs of `model` into `dir` (created by the loop).
    fn save(&self, dir: &Path, model: &Self::Model, report: &Self::Report) -> Result<()>;
    /// Refuse to resume from `checkpoint` when it was trained with other settings.
    fn check_resumable(&self, checkpoint: &Path) -> Result<()>;
    /// Called after every update.
    fn health(&mut self, _update: &Update) -> Health {
        Health::Ok
    }
    /// The loop has returned to an earlier checkpoint (forget what was tracked since).
    fn rolled_back(&mut self) {}
    /// A few words for the progress line.
    fn progress(&self) -> String {
        String::new()
    }
}

/// Where the data comes from and how it is batched.
pub struct Data<'a> {
    pub utts: Arc<Vec<Utterance>>,
    /// Seconds of each utterance, as batched (after any cropping).
    pub durations: &'a [f64],
    pub plan: &'a BatchPlan,
    pub loader: LoaderOptions,
    /// Skip batches whose audio cannot be decoded (listed in the outcome) instead of stopping.
    pub skip_unreadable: bool,
}

/// Where the loop is; saved with each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "R: Serialize + DeserializeOwned")]
pub struct LoopState<R> {
    pub step: usize,
    pub epoch: u64,
    /// Batches of this epoch's plan already consumed.
    pub batch_in_epoch: usize,
    pub skipped: usize,
    pub bad_in_a_row: usize,
    pub audio_seconds: f64,
    pub seconds: f64,
    pub evals_without_improvement: usize,
    /// Learning-rate factor (halved at each rollback).
    #[serde(default = "one")]
    pub lr_scale: f64,
    #[serde(default)]
    pub rollbacks: usize,
    /// Batches skipped because their audio could not be read, and why.
    #[serde(default)]
    pub unreadable: Vec<String>,
    /// Micro-batches the job skipped (e.g. no masked frame).
    #[serde(default)]
    pub skipped_micro: usize,
    pub first: R,
    pub last: R,
    pub best: R,
    #[serde(default)]
    pub best_step: usize,
    /// Index in the batch stream of this epoch's first batch ([`crate::shard`]).
    #[serde(default)]
    pub epoch_start: usize,
    /// Batches per update, over all ranks (ranks × gradient accumulation); kept when a run is
    /// resumed with another number of ranks, whose accumulation adjusts. 0: not recorded (one
    /// process, `train.grad_accumulation`).
    #[serde(default)]
    pub batches_per_update: usize,
}

impl<R> LoopState<R> {
    fn position(&self) -> Position {
        Position { epoch: self.epoch, epoch_start: self.epoch_start, batch_in_epoch: self.batch_in_epoch }
    }

    fn set_position(&mut self, p: Position) {
        (self.epoch, self.epoch_start, self.batch_in_epoch) = (p.epoch, p.epoch_start, p.batch_in_epoch);
    }
}

fn one() -> f64 {
    1.0
}

/// What a finished (or stopped) run reports.
pub struct Outcome<R> {
    pub state: LoopState<R>,
    pub resumed_from: Option<usize>,
    pub stopped_early: bool,
    /// Mean wall time of a training update in this process.
    pub seconds_per_step: f64,
}

/// A seed for draw `k` of `step`, decorrelated from neighbours (SplitMix64 finaliser).
pub fn step_seed(seed: u64, step: usize, k: usize) -> u64 {
    let mut z =
        seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (k as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `metrics.jsonl`, appended to line by line.
struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    fn open(path: PathBuf) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| Error::Write { path: path.clone(), source })?;
        Ok(Self { path, file })
    }

    fn log(&mut self, v: serde_json::Value) {
        let _ = writeln!(self.file, "{v}");
    }

    /// Drop the lines after `step` (the file is replaced: reopen it).
    fn truncate(&mut self, step: usize) -> Result<()> {
        truncate_metrics(&self.path, step)?;
        *self = Self::open(self.path.clone())?;
        Ok(())
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

struct TrainableIds(Vec<ParamId>);

impl ModuleVisitor for TrainableIds {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if param.val().is_require_grad() {
            self.0.push(param.id);
        }
    }
}

/// The trainable parameters of `model` (with their ids, which key the optimiser state) as
/// burnpack bytes.
pub fn trainable_record<M: Module>(model: &M) -> Result<Vec<u8>> {
    let mut ids = TrainableIds(Vec::new());
    model.visit(&mut ids);
    let record = model.clone().into_record_group(ParamGroup::from_ids(ids.0));
    let bytes = record.into_bytes().map_err(|e| Error::Diverged(format!("cannot serialise the model: {e}")))?;
    Ok(bytes.to_vec())
}

/// Apply bytes from [`trainable_record`] to a model built from the same config.
pub fn load_trainable_record<M: Module>(model: M, bytes: Vec<u8>, path: &Path) -> Result<M> {
    let bad = |e: burn::store::RecordError| Error::Config { path: path.to_path_buf(), reason: e.to_string() };
    let record = burn::store::ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes)).map_err(bad)?;
    model.try_load_record(record.allow_partial(true)).map_err(bad)
}

/// The gradients of the trainable parameters as one flat buffer: per parameter (in visiting
/// order) a flag (1: this rank has a gradient for it) and its values (zeros without one).
struct PackGrads<'a> {
    grads: &'a mut GradientsParams,
    buf: Vec<f32>,
    seen: HashSet<ParamId>,
}

impl ModuleVisitor for PackGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        if !value.is_require_grad() || !self.seen.insert(param.id) {
            return;
        }
        match self.grads.remove::<D>(param.id) {
            Some(g) => {
                self.buf.push(1.0);
                self.buf.extend(g.into_data().iter::<f32>());
            }
            None => {
                self.buf.push(0.0);
                self.buf.extend(std::iter::repeat_n(0.0, value.shape().num_elements()));
            }
        }
    }
}

/// The inverse of [`PackGrads`]: a parameter gets a gradient when some rank had one.
struct UnpackGrads<'a> {
    grads: &'a mut GradientsParams,
    buf: &'a [f32],
    at: usize,
    device: &'a Device,
    seen: HashSet<ParamId>,
}

impl ModuleVisitor for UnpackGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        if !value.is_require_grad() || !self.seen.insert(param.id) {
            return;
        }
        let shape = value.shape();
        let n = shape.num_elements();
        let (flag, values) = (self.buf[self.at], &self.buf[self.at + 1..self.at + 1 + n]);
        self.at += 1 + n;
        if flag > 0.0 {
            let g = Tensor::<D>::from_data(TensorData::new(values.to_vec(), shape), self.device);
            self.grads.register(param.id, g);
        }
    }
}

/// Sum the gradients over the ranks (each rank's are already divided by the number of
/// batches per update).
fn all_reduce_grads<M: Module>(
    comm: &Comm,
    model: &M,
    grads: &mut GradientsParams,
    device: &Device,
    timeout: Duration,
    step: usize,
) {
    let mut pack = PackGrads { grads, buf: Vec::new(), seen: HashSet::new() };
    model.visit(&mut pack);
    let mut buf = pack.buf;
    comm.all_reduce_f32(&mut buf, timeout, &format!("the gradient all-reduce of update {}", step + 1));
    let device = device.clone().without_autodiff();
    let mut unpack = UnpackGrads { grads, buf: &buf, at: 0, device: &device, seen: HashSet::new() };
    model.visit(&mut unpack);
}

/// A checksum of every floating-point parameter (FNV-1a over the values' bits), to check that
/// the ranks start alike.
fn weights_checksum<M: Module>(model: &M) -> u64 {
    struct Hash(u64);
    impl ModuleVisitor for Hash {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            for v in param.val().into_data().iter::<f32>() {
                self.0 = (self.0 ^ v.to_bits() as u64).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let mut h = Hash(0xcbf2_9ce4_8422_2325);
    model.visit(&mut h);
    h.0
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Config { path: path.to_path_buf(), reason: e.to_string() })
}

/// Model, optimiser and loop state of checkpoint folder `dir`.
fn restore<J: Job>(
    dir: &Path,
    model: J::Model,
    optim: ModuleOptimizer,
) -> Result<(J::Model, ModuleOptimizer, LoopState<J::Report>)> {
    let state_path = dir.join("resume/state.json");
    let text = std::fs::read_to_string(&state_path).unwrap_or_default();
    let st: LoopState<J::Report> =
        serde_json::from_str(&text).map_err(|e| Error::Config { path: state_path.clone(), reason: e.to_string() })?;
    let model_path = dir.join("resume/model.bpk");
    let model = load_trainable_record(model, read(&model_path)?, &model_path)?;
    let optim_path = dir.join("resume/optim.bpk");
    let optim = optim
        .from_bytes(burn::tensor::Bytes::from_bytes_vec(read(&optim_path)?))
        .map_err(|e| Error::Config { path: optim_path.clone(), reason: e.to_string() })?;
    Ok((model, optim, st))
}

/// `checkpoints/step-N/` with the job's files and `resume/`, written under a temporary name and
/// renamed; older checkpoints beyond `keep_last` are removed.
fn save_checkpoint<J: Job>(
    job: &J,
    run_dir: &Path,
    model: &J::Model,
    optim: &ModuleOptimizer,
    st: &LoopState<J::Report>,
    keep_last: usize,
) -> Result<()> {
    let root = run_dir.join("checkpoints");
    let tmp = root.join(format!(".step-{}.tmp", st.step));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|source| Error::Write { path: tmp.clone(), source })?;
    job.save(&tmp, model, &st.last)?;
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
    for (_, old) in all.iter().take(all.len().saturating_sub(keep_last)) {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(())
}

/// `best/`, replaced atomically.
fn save_best<J: Job>(job: &J, run_dir: &Path, model: &J::Model, report: &J::Report) -> Result<()> {
    let tmp = run_dir.join(".best.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|source| Error::Write { path: tmp.clone(), source })?;
    job.save(&tmp, model, report)?;
    let best = run_dir.join("best");
    let _ = std::fs::remove_dir_all(&best);
    std::fs::rename(&tmp, &best).map_err(|source| Error::Write { path: best, source })
}

/// The latest complete (resumable) checkpoint of a run folder.
pub fn latest_checkpoint(run_dir: &Path) -> Option<(usize, PathBuf)> {
    checkpoints(run_dir).into_iter().rev().find(|(_, p)| p.join("resume/state.json").is_file())
}

/// A run folder with checkpoints is continued only with `--resume` (checked by jobs before
/// their expensive preparation, and by the loop).
pub fn refuse_to_overwrite(run_dir: &Path, resume: bool) -> Result<()> {
    if latest_checkpoint(run_dir).is_some() && !resume {
        return Err(Error::Config {
            path: run_dir.to_path_buf(),
            reason: "this run folder has checkpoints: pass --resume to continue it, or choose another output_dir"
                .into(),
        });
    }
    Ok(())
}

/// What rank 0 decided after an update, for every rank.
#[derive(Serialize, Deserialize)]
enum Decision {
    Continue,
    /// Return to the latest checkpoint (why; the new rollback count and learning-rate factor).
    Rollback(String, usize, f64),
    Stop(String),
}

/// Train `model` with `job` on `data` as `cfg` says, in `run_dir` (which exists on rank 0).
#[allow(clippy::too_many_arguments)]
pub fn fit<J: Job>(
    job: &mut J,
    model: J::Model,
    data: Data,
    cfg: &TrainConfig,
    run_dir: &Path,
    device: &Device,
    progress: bool,
    resume: bool,
) -> Result<(J::Model, Outcome<J::Report>)> {
    let started = Instant::now();
    let comm = distributed::comm();
    let root = comm.is_root();
    let timeout = Duration::from_secs_f64(cfg.collective_timeout_seconds);
    refuse_to_overwrite(run_dir, resume)?;
    let latest = latest_checkpoint(run_dir);
    let metrics_path = run_dir.join("metrics.jsonl");
    let mut model = model;
    let mut optim = crate::optim::adamw(1e-8, cfg.weight_decay as f32);
    let mut st = match &latest {
        Some((step, dir)) => {
            job.check_resumable(dir)?;
            let (m, o, st) = restore::<J>(dir, model, optim)?;
            (model, optim) = (m, o);
            if root {
                truncate_metrics(&metrics_path, *step)?;
            }
            say!("resuming {} at step {step}", run_dir.display());
            st
        }
        None => {
            let first = if root { Some(job.evaluate(&model, 0)?) } else { None };
            let first = comm.broadcast(first, timeout, "the first evaluation")?;
            if root {
                std::fs::write(&metrics_path, "")
                    .map_err(|source| Error::Write { path: metrics_path.clone(), source })?;
            }
            LoopState {
                step: 0,
                epoch: 0,
                batch_in_epoch: 0,
                skipped: 0,
                bad_in_a_row: 0,
                audio_seconds: 0.0,
                seconds: 0.0,
                evals_without_improvement: 0,
                lr_scale: 1.0,
                rollbacks: 0,
                unreadable: Vec::new(),
                skipped_micro: 0,
                last: first.clone(),
                best: first.clone(),
                first,
                best_step: 0,
                epoch_start: 0,
                batches_per_update: 0,
            }
        }
    };
    comm.check_identical(weights_checksum(&model) ^ st.step as u64, timeout, "checking that all ranks start alike")?;
    // Batches per update over all ranks: set by the run's first start, kept by resumes.
    if st.batches_per_update == 0 {
        st.batches_per_update = cfg.grad_accumulation * if latest.is_some() { 1 } else { comm.size };
    }
    if !st.batches_per_update.is_multiple_of(comm.size) {
        return Err(Error::Config {
            path: run_dir.to_path_buf(),
            reason: format!(
                "this run takes {} batches per update, which {} ranks cannot share evenly: resume it with a number \
                 of ranks that divides {}",
                st.batches_per_update, comm.size, st.batches_per_update
            ),
        });
    }
    let accum = st.batches_per_update / comm.size;
    if comm.size > 1 || accum != cfg.grad_accumulation {
        say!(
            "data-parallel: {} rank(s) x {accum} accumulated batch(es) = {} batches of up to {} s of audio per update{}",
            comm.size,
            st.batches_per_update,
            data.plan.max_seconds,
            if accum != cfg.grad_accumulation {
                format!(
                    " (gradient accumulation {accum} instead of train.grad_accumulation = {}: the run keeps its batches per update)",
                    cfg.grad_accumulation
                )
            } else {
                String::new()
            }
        );
    }
    let resumed_from = latest.as_ref().map(|_| st.step);
    let mut metrics = if root { Some(MetricsLog::open(metrics_path.clone())?) } else { None };
    let mut events = if root { Some(EventWriter::create(run_dir, resumed_from.is_some())?) } else { None };
    if resumed_from.is_none()
        && let (Some(metrics), Some(events)) = (metrics.as_mut(), events.as_mut())
    {
        metrics.log(serde_json::json!({"eval": &st.first}));
        events.scalars(0, &job.report_scalars(&st.first));
        save_best(job, run_dir, &model, &st.best)?;
    }

    let cache = Loader::cache_handle();
    let plan_for = |epoch: u64| {
        let plan = BatchPlan { seed: cfg.seed.wrapping_add(epoch), ..data.plan.clone() };
        plan_batches(data.durations, &plan)
    };
    let make_loader = |plan: Vec<Vec<usize>>| Loader::with_cache(data.utts.clone(), plan, &data.loader, cache.clone());
    if plan_for(0).is_empty() {
        return Err(Error::Diverged("no training batches".into()));
    }
    let stream_at = |at: Position| Stream::new(plan_for, make_loader, comm.rank, comm.size, at);
    let mut stream = stream_at(st.position());
    let bar =
        if progress && root { indicatif::ProgressBar::new(cfg.steps as u64) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}")
            .expect("valid template"),
    );
    bar.set_position(st.step as u64);
    let checkpoint_every = if cfg.checkpoint_every > 0 { cfg.checkpoint_every } else { cfg.eval_every };
    let mut process_start_seconds = st.seconds;
    let mut process_start = started;
    let mut stopped_early = false;
    let mut out_of_time = false;

    let (mut step_seconds, mut steps_here) = (0.0f64, 0usize);
    while st.step < cfg.steps && !stopped_early && !out_of_time {
        let step = st.step;
        let step_started = Instant::now();
        let lr = cfg.schedule.lr(cfg.lr, step, cfg.steps) * st.lr_scale;
        let mut accumulator = GradientsAccumulator::<J::Model>::new();
        let mut loss_sum = 0.0f64;
        let mut finite = true;
        let mut grad_norm = 0.0f32;
        let mut allreduce_seconds = None;
        let mut used = 0usize;
        let (mut audio_seconds, mut skipped_micro) = (0.0f64, 0usize);
        let mut scalars: Vec<(&'static str, f64)> = Vec::new();
        let mut micro = 0usize;
        let mut failures = 0usize;
        let share = (accum * comm.size) as f32;
        while micro < accum {
            let mut at = st.position();
            let batch = stream.next(&mut at)?;
            st.set_position(at);
            let batch = match batch {
                Ok(b) => b,
                Err(e) if data.skip_unreadable => {
                    let why = e.to_string();
                    eprintln!("skipping a batch: {why}");
                    if !st.unreadable.contains(&why) {
                        st.unreadable.push(why);
                    }
                    failures += 1;
                    if failures > 100 {
                        return Err(Error::Diverged("more than 100 unreadable batches in one update".into()));
                    }
                    if comm.size > 1 {
                        // The ranks read in step: this rank's share of the group stays empty.
                        micro += 1;
                        skipped_micro += 1;
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            micro += 1;
            audio_seconds += batch.seconds();
            if !finite {
                continue; // this update is skipped; keep the data position in step with the plan
            }
            // The micro-batch's index among all ranks' batches of the update.
            let index = (micro - 1) * comm.size + comm.rank;
            device.seed(step_seed(cfg.seed, step, index));
            let Some(out) = job.micro(&model, &batch, step, index)? else {
                skipped_micro += 1;
                continue;
            };
            let value: f32 = out.loss.clone().into_scalar();
            if !value.is_finite() {
                finite = false;
                continue;
            }
            loss_sum += value as f64;
            used += 1;
            for (k, v) in out.scalars {
                match scalars.iter_mut().find(|(n, _)| *n == k) {
                    Some(s) => s.1 += v,
                    None => scalars.push((k, v)),
                }
            }
            let grads = GradientsParams::from_grads((out.loss / share).backward(), &model);
            accumulator.accumulate(&model, grads);
        }
        st.step += 1;
        // Rank-local scalars (logged by rank 0) are averaged over this rank's micro-batches.
        scalars.iter_mut().for_each(|s| s.1 /= used.max(1) as f64);
        let mut totals = [loss_sum, used as f64, !finite as u8 as f64, audio_seconds, skipped_micro as f64];
        comm.all_reduce_f64(&mut totals, timeout, &format!("the loss all-reduce of update {}", step + 1));
        let [loss_sum, used, not_finite, audio_seconds, skipped_micro] = totals;
        let (used, finite) = (used as usize, not_finite == 0.0);
        st.audio_seconds += audio_seconds;
        st.skipped_micro += skipped_micro as usize;
        let loss = loss_sum / used.max(1) as f64;
        if finite && used > 0 {
            st.bad_in_a_row = 0;
            let mut grads = accumulator.grads();
            if comm.size > 1 {
                let t = Instant::now();
                all_reduce_grads(&comm, &model, &mut grads, device, timeout, step);
                allreduce_seconds = Some(t.elapsed().as_secs_f64());
            }
            grad_norm = clip_global_norm(&model, &mut grads, cfg.grad_clip);
            model = optim.step(lr, model, grads);
        } else {
            st.skipped += 1;
            if !finite {
                st.bad_in_a_row += 1;
            }
        }
        step_seconds += step_started.elapsed().as_secs_f64();
        steps_here += 1;
        let elapsed = started.elapsed().as_secs_f64();
        st.seconds = process_start_seconds + process_start.elapsed().as_secs_f64();
        let speed = st.audio_seconds / st.seconds.max(1e-9);
        bar.set_position(st.step as u64);
        bar.set_message(format!("loss {loss:.3} lr {lr:.2e} {speed:.1} audio s/s{}", job.progress()));
        if finite
            && used > 0
            && let (Some(metrics), Some(events)) = (metrics.as_mut(), events.as_mut())
        {
            let mut line = serde_json::json!({
                "step": st.step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "audio_seconds_per_second": speed
            });
            let mut tb: Vec<(String, f64)> = vec![
                ("train/loss".into(), loss),
                ("train/lr".into(), lr),
                ("train/grad_norm".into(), grad_norm as f64),
            ];
            if let Some(t) = allreduce_seconds {
                // Rank 0's wait in the gradient all-reduce (the slowest rank's lag included).
                line["allreduce_seconds"] = serde_json::json!(t);
            }
            for (k, v) in &scalars {
                line[*k] = serde_json::json!(v);
                tb.push((format!("train/{k}"), *v));
            }
            metrics.log(line);
            let tb: Vec<(&str, f64)> = tb.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            events.scalars(st.step, &tb);
        }
        // Rank 0 judges the run's health and the time budget; every rank follows.
        let decision = if root {
            let update = Update { step: st.step, loss, grad_norm: grad_norm as f64, finite, scalars };
            let verdict = job.health(&update);
            if let (Health::Unhealthy(why), Some(metrics)) = (&verdict, metrics.as_mut()) {
                metrics.log(serde_json::json!({"step": st.step, "health": why}));
            }
            let too_many_bad = st.bad_in_a_row >= cfg.max_bad_steps;
            let rollback = match verdict {
                Health::Unhealthy(why) if cfg.on_collapse == OnCollapse::Rollback => Some(why),
                Health::Unhealthy(_) => None,
                Health::Ok if too_many_bad => {
                    Some(format!("{} steps in a row with a non-finite loss", st.bad_in_a_row))
                }
                Health::Ok => None,
            };
            let decision = match rollback {
                None => Decision::Continue,
                Some(why) => {
                    let can = cfg.on_collapse == OnCollapse::Rollback && st.rollbacks < cfg.max_rollbacks;
                    match (can, latest_checkpoint(run_dir)) {
                        (true, Some(_)) => Decision::Rollback(why, st.rollbacks + 1, st.lr_scale * 0.5),
                        _ if too_many_bad => Decision::Stop(format!("{why} (step {})", st.step)),
                        (false, _) => Decision::Stop(format!("{why} (step {}); no rollback left", st.step)),
                        (true, None) => Decision::Stop(format!("{why} (step {}); no checkpoint to return to", st.step)),
                    }
                }
            };
            let over = cfg.time_budget_seconds.is_some_and(|b| elapsed > b);
            Some((decision, over))
        } else {
            None
        };
        let (decision, over) =
            comm.broadcast(decision, timeout, &format!("rank 0's decision after update {}", st.step))?;
        match decision {
            Decision::Continue => {}
            Decision::Stop(why) => return Err(Error::Diverged(why)),
            Decision::Rollback(why, rollbacks, scale) => {
                let (at, dir) = latest_checkpoint(run_dir)
                    .ok_or_else(|| Error::Diverged(format!("{why}: rank {} sees no checkpoint", comm.rank)))?;
                say!(
                    "step {}: {why}; returning to the checkpoint of step {at} with the learning rate x{scale}",
                    st.step
                );
                let (m, o, s) = restore::<J>(&dir, model, optim)?;
                (model, optim, st) = (m, o, s);
                job.rolled_back();
                st.rollbacks = rollbacks;
                st.lr_scale = scale;
                st.bad_in_a_row = 0;
                if let Some(metrics) = metrics.as_mut() {
                    metrics.truncate(at)?;
                    metrics.log(serde_json::json!({"step": at, "rollback": why, "lr_scale": scale}));
                }
                stream = stream_at(st.position());
                process_start_seconds = st.seconds;
                process_start = Instant::now();
                bar.set_position(st.step as u64);
                continue;
            }
        }
        out_of_time = over;
        let last_step = st.step == cfg.steps || out_of_time;
        if (cfg.eval_every > 0 && st.step.is_multiple_of(cfg.eval_every)) || last_step {
            let report = if root { Some(job.evaluate(&model, st.step)?) } else { None };
            st.last = comm.broadcast(report, timeout, &format!("rank 0's evaluation at update {}", st.step))?;
            if let (Some(metrics), Some(events)) = (metrics.as_mut(), events.as_mut()) {
                metrics.log(serde_json::json!({"eval": &st.last}));
                events.scalars(st.step, &job.report_scalars(&st.last));
            }
            match job.improves(&st.last, &st.best) {
                Some(better) if better || st.best_step == 0 => {
                    st.best = st.last.clone();
                    st.best_step = st.step;
                    st.evals_without_improvement = 0;
                    if root {
                        save_best(job, run_dir, &model, &st.last)?;
                    }
                }
                _ => {
                    st.evals_without_improvement += 1;
                    if cfg.early_stopping_patience.is_some_and(|p| st.evals_without_improvement >= p) {
                        say!(
                            "early stopping at step {}: no improvement in {} evaluations",
                            st.step,
                            st.evals_without_improvement
                        );
                        stopped_early = true;
                    }
                }
            }
        }
        let checkpoint_due = checkpoint_every > 0 && st.step.is_multiple_of(checkpoint_every);
        if root && (checkpoint_due || last_step || stopped_early) {
            save_checkpoint(job, run_dir, &model, &optim, &st, cfg.keep_last)?;
        }
    }
    // Nobody leaves before rank 0 has written the last checkpoint.
    comm.barrier(timeout, "the end of training");
    bar.finish_and_clear();
    let outcome =
        Outcome { state: st, resumed_from, stopped_early, seconds_per_step: step_seconds / steps_here.max(1) as f64 };
    Ok((model, outcome))
}

/// Peak resident set size of this process (`VmHWM` in /proc/self/status), Linux only.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
