//! `speechtune preprocess convert|segment|merge`: corpus preparation at scale, as seed 001 did
//! with ffmpeg, a VAD and tar archives. Every command is parallel over files, resumable (outputs
//! appear under their final name only when complete), and splits its file list for Slurm job
//! arrays (`--shard-index I --num-shards N`, defaulting from `SLURM_ARRAY_TASK_ID` /
//! `SLURM_ARRAY_TASK_COUNT`). Unreadable files are listed with the reason in a failures file and
//! do not stop the run.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use speechtune_audio::segment::{SegmentConfig, segments};
use speechtune_audio::vad::SileroVad;
use speechtune_data::shard_writer::{SegmentRow, ShardWriter, merge};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Every audio file under SRC → 16-kHz mono FLAC under DST, same folder structure.
    Convert(ConvertArgs),
    /// Voice activity detection (Silero VAD), segments of MIN..MAX seconds, in tar shards.
    Segment(SegmentArgs),
    /// Join the per-task shard manifests of DST into shards.tsv and a fairseq-style manifest.tsv.
    Merge(MergeArgs),
}

#[derive(clap::Args, Clone)]
pub struct Split {
    /// This task's part of the file list (default: $SLURM_ARRAY_TASK_ID, else 0).
    #[arg(long)]
    pub shard_index: Option<usize>,
    /// Number of parts (default: $SLURM_ARRAY_TASK_COUNT, else 1).
    #[arg(long)]
    pub num_shards: Option<usize>,
    /// Worker threads (default: the available cores).
    #[arg(long)]
    pub jobs: Option<usize>,
}

#[derive(clap::Args)]
pub struct ConvertArgs {
    pub src: PathBuf,
    pub dst: PathBuf,
    #[command(flatten)]
    pub split: Split,
}

#[derive(clap::Args)]
pub struct SegmentArgs {
    pub src: PathBuf,
    pub dst: PathBuf,
    #[command(flatten)]
    pub split: Split,
    /// Speech starts where the VAD probability reaches this.
    #[arg(long, default_value_t = 0.5)]
    pub onset: f32,
    /// Speech ends where the probability stays below this for --min-silence seconds.
    #[arg(long, default_value_t = 0.35)]
    pub offset: f32,
    #[arg(long, default_value_t = 0.1)]
    pub min_silence: f64,
    /// Seconds of padding around speech.
    #[arg(long, default_value_t = 0.1)]
    pub pad: f64,
    /// Speech closer than this is joined (while the segment stays within --max-seconds).
    #[arg(long, default_value_t = 1.0)]
    pub merge_gap: f64,
    #[arg(long, default_value_t = 2.0)]
    pub min_seconds: f64,
    /// Longer speech is split at its quietest point.
    #[arg(long, default_value_t = 30.0)]
    pub max_seconds: f64,
    /// Shard size in MB (a shard closes between source files once it reaches this).
    #[arg(long, default_value_t = 256.0)]
    pub shard_mb: f64,
    /// Write the first folder below SRC as each segment's `lang` (SRC/LANG/...).
    #[arg(long)]
    pub lang_from_dir: bool,
}

#[derive(clap::Args)]
pub struct MergeArgs {
    pub dst: PathBuf,
}

/// Extensions symphonia decodes here.
const AUDIO: [&str; 8] = ["wav", "flac", "ogg", "oga", "mp3", "m4a", "aac", "mp4"];
/// Containers it does not: listed as failures with an ffmpeg command.
const FOREIGN: [&str; 7] = ["ts", "mkv", "webm", "avi", "mov", "opus", "wma"];

impl Split {
    fn resolve(&self) -> Result<(usize, usize, usize)> {
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
        let index = self.shard_index.or_else(|| env("SLURM_ARRAY_TASK_ID")).unwrap_or(0);
        let count = self.num_shards.or_else(|| env("SLURM_ARRAY_TASK_COUNT")).unwrap_or(1);
        if count == 0 || index >= count {
            bail!("--shard-index {index} is not below --num-shards {count}");
        }
        let jobs = self.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        Ok((index, count, jobs.max(1)))
    }
}

/// Every file under `src` with an audio or known foreign extension, sorted, relative to `src`;
/// then this task's part (every `count`-th file from `index`).
fn list(src: &Path, index: usize, count: usize) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else if let Some(ext) = p.extension().map(|e| e.to_string_lossy().to_lowercase())
                && (AUDIO.contains(&ext.as_str()) || FOREIGN.contains(&ext.as_str()))
            {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut all = Vec::new();
    walk(src, &mut all).with_context(|| format!("listing {}", src.display()))?;
    all.sort();
    let rel: Vec<PathBuf> = all.into_iter().filter_map(|p| p.strip_prefix(src).ok().map(Path::to_path_buf)).collect();
    Ok(rel.into_iter().enumerate().filter(|(i, _)| i % count == index).map(|(_, p)| p).collect())
}

/// Decode to 16-kHz mono, or say why not (with an ffmpeg command for foreign containers).
fn read(path: &Path) -> std::result::Result<Vec<f32>, String> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    if FOREIGN.contains(&ext.as_str()) {
        return Err(format!(
            "the .{ext} container is not decoded by speechtune; convert it first, e.g. ffmpeg -i {} -ac 1 -ar 16000 {}",
            path.display(),
            path.with_extension("flac").display()
        ));
    }
    let wave = speechtune_audio::load_mono_16k(path).map_err(|e| e.to_string())?;
    if wave.is_empty() {
        return Err("no samples".into());
    }
    Ok(wave)
}

/// Shared progress: files, hours of audio, real-time factor.
struct Progress {
    bar: indicatif::ProgressBar,
    seconds: Mutex<f64>,
    started: Instant,
}

impl Progress {
    fn new(n: usize) -> Self {
        let bar = indicatif::ProgressBar::new(n as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} files [{elapsed_precise} < {eta_precise}] {msg}",
            )
            .expect("valid template"),
        );
        Self { bar, seconds: Mutex::new(0.0), started: Instant::now() }
    }

    fn done(&self, audio_seconds: f64) {
        let mut s = self.seconds.lock().expect("not poisoned");
        *s += audio_seconds;
        let rtf = self.started.elapsed().as_secs_f64() / s.max(1e-9);
        self.bar.inc(1);
        self.bar.set_message(format!("{:.2} h of audio, real-time factor {rtf:.4}", *s / 3600.0));
    }

    fn audio_hours(&self) -> f64 {
        *self.seconds.lock().expect("not poisoned") / 3600.0
    }
}

/// Append `path\treason` lines to the failures file (created only when something failed).
fn write_failures(path: &Path, failures: &[(PathBuf, String)]) -> Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    let mut text = String::from("path\treason\n");
    for (p, r) in failures {
        text += &format!("{}\t{}\n", p.display(), r.replace(['\t', '\n'], " "));
    }
    crate::output::write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Run `work` over `files` on `jobs` threads; collects failures.
fn parallel<F>(files: &[PathBuf], jobs: usize, work: F) -> Vec<(PathBuf, String)>
where
    F: Fn(&Path) -> std::result::Result<(), String> + Sync,
{
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.min(files.len()).max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(f) = files.get(i) else { break };
                    if let Err(reason) = work(f) {
                        failures.lock().expect("not poisoned").push((f.clone(), reason));
                    }
                }
            });
        }
    });
    let mut f = failures.into_inner().expect("not poisoned");
    f.sort();
    f
}

pub fn run(c: Command) -> Result<()> {
    match c {
        Command::Convert(a) => convert(a),
        Command::Segment(a) => segment(a),
        Command::Merge(a) => {
            let n = merge(&a.dst)?;
            println!(
                "{n} segments in {} and {}",
                a.dst.join("shards.tsv").display(),
                a.dst.join("manifest.tsv").display()
            );
            Ok(())
        }
    }
}

fn convert(a: ConvertArgs) -> Result<()> {
    let (index, count, jobs) = a.split.resolve()?;
    let files = list(&a.src, index, count)?;
    let todo: Vec<PathBuf> =
        files.iter().filter(|f| !a.dst.join(f).with_extension("flac").is_file()).cloned().collect();
    println!(
        "convert: {} files in part {index} of {count}, {} already done, {jobs} threads",
        files.len(),
        files.len() - todo.len()
    );
    let progress = Progress::new(todo.len());
    let failures = parallel(&todo, jobs, |rel| {
        let wave = read(&a.src.join(rel))?;
        let bytes = speechtune_audio::flac::encode_flac(&wave).map_err(|e| e.to_string())?;
        let out = a.dst.join(rel).with_extension("flac");
        // Written under a temporary name and renamed: a killed run leaves no half file.
        crate::output::write_atomic(&out, &bytes).map_err(|e| e.to_string())?;
        progress.done(wave.len() as f64 / 16000.0);
        Ok(())
    });
    progress.bar.finish_and_clear();
    let failures_path = a.dst.join(format!("failures-convert-{index:05}.tsv"));
    write_failures(&failures_path, &failures)?;
    let secs = progress.started.elapsed().as_secs_f64();
    println!(
        "converted {} files ({:.3} h of audio) in {secs:.1} s: {:.0} h of audio per hour with {jobs} threads; {} failed{}",
        todo.len() - failures.len(),
        progress.audio_hours(),
        progress.audio_hours() * 3600.0 / secs.max(1e-9),
        failures.len(),
        if failures.is_empty() { String::new() } else { format!(" (see {})", failures_path.display()) }
    );
    Ok(())
}

fn segment(a: SegmentArgs) -> Result<()> {
    let cfg = SegmentConfig {
        onset: a.onset,
        offset: a.offset,
        min_silence: a.min_silence,
        pad: a.pad,
        merge_gap: a.merge_gap,
        min_seconds: a.min_seconds,
        max_seconds: a.max_seconds,
    };
    cfg.validate().map_err(anyhow::Error::msg)?;
    let (index, count, jobs) = a.split.resolve()?;
    let files = list(&a.src, index, count)?;
    let prefix = format!("shard-{index:05}");
    let (writer, done) = ShardWriter::open(&a.dst, &prefix, (a.shard_mb * 1e6) as u64)?;
    let todo: Vec<PathBuf> = files.iter().filter(|f| !done.contains(&f.display().to_string())).cloned().collect();
    println!(
        "segment: {} files in part {index} of {count}, {} already in finished shards, {jobs} threads",
        files.len(),
        files.len() - todo.len()
    );
    let progress = Progress::new(todo.len());
    let vad = SileroVad::new();
    // Workers decode, run the VAD and encode; the writer takes each file's segments in list
    // order, so shard contents do not depend on thread timing.
    type Encoded = (Vec<(SegmentRow, Vec<u8>)>, usize);
    let results: Vec<Mutex<Option<std::result::Result<Encoded, String>>>> =
        todo.iter().map(|_| Mutex::new(None)).collect();
    let writer = Mutex::new((writer, 0usize));
    let write_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let (segments_written, dropped_total) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let flush = |w: &mut (ShardWriter, usize)| {
        while w.1 < todo.len() {
            let Some(r) = results[w.1].lock().expect("not poisoned").take() else { break };
            if let Ok((segs, _)) = &r {
                for (row, bytes) in segs {
                    if let Err(e) = w.0.add(bytes, row) {
                        *write_error.lock().expect("not poisoned") = Some(e.into());
                    }
                }
                segments_written.fetch_add(segs.len(), Ordering::SeqCst);
                if let Err(e) = w.0.end_of_source() {
                    *write_error.lock().expect("not poisoned") = Some(e.into());
                }
            }
            w.1 += 1;
        }
    };
    let positions: std::collections::HashMap<&Path, usize> =
        todo.iter().enumerate().map(|(i, f)| (f.as_path(), i)).collect();
    let failures = parallel(&todo, jobs, |rel| {
        let i = positions[rel];
        let outcome = (|| {
            let wave = read(&a.src.join(rel))?;
            let seconds = wave.len() as f64 / 16000.0;
            let probs = vad.probabilities(&wave);
            let (segs, dropped) = segments(&probs, seconds, &cfg);
            let lang = a
                .lang_from_dir
                .then(|| rel.components().next().map(|c| c.as_os_str().to_string_lossy().to_string()))
                .flatten();
            let stem = rel.with_extension("").display().to_string().replace(['/', '\\'], "__");
            let mut out = Vec::new();
            for (k, s) in segs.iter().enumerate() {
                let (from, to) = ((s.start * 16000.0) as usize, ((s.end * 16000.0) as usize).min(wave.len()));
                let bytes = speechtune_audio::flac::encode_flac(&wave[from..to]).map_err(|e| e.to_string())?;
                let row = SegmentRow {
                    member: format!("{stem}__{k:04}.flac"),
                    source: rel.display().to_string(),
                    start: s.start,
                    end: s.end,
                    lang: lang.clone(),
                };
                out.push((row, bytes));
            }
            progress.done(seconds);
            Ok((out, dropped))
        })();
        if let Ok((_, d)) = &outcome {
            dropped_total.fetch_add(*d, Ordering::SeqCst);
        }
        let failed = outcome.as_ref().err().cloned();
        *results[i].lock().expect("not poisoned") = Some(outcome);
        flush(&mut writer.lock().expect("not poisoned"));
        failed.map_or(Ok(()), Err)
    });
    progress.bar.finish_and_clear();
    let (writer, _) = writer.into_inner().expect("not poisoned");
    if let Some(e) = write_error.into_inner().expect("not poisoned") {
        return Err(e.context(format!("writing shards in {}", a.dst.display())));
    }
    let shards = writer.finish()?;
    let failures_path = a.dst.join(format!("failures-segment-{index:05}.tsv"));
    write_failures(&failures_path, &failures)?;
    let secs = progress.started.elapsed().as_secs_f64();
    println!(
        "segmented {} files ({:.3} h of audio) in {secs:.1} s: {:.0} h of audio per hour with {jobs} threads; {} segments \
         in {} new shards, {} stretches of speech shorter than {} s dropped; {} failed{}",
        todo.len() - failures.len(),
        progress.audio_hours(),
        progress.audio_hours() * 3600.0 / secs.max(1e-9),
        segments_written.load(Ordering::SeqCst),
        shards.len(),
        dropped_total.load(Ordering::SeqCst),
        a.min_seconds,
        failures.len(),
        if failures.is_empty() { String::new() } else { format!(" (see {})", failures_path.display()) }
    );
    if count == 1 {
        let n = merge(&a.dst)?;
        println!("{n} segments listed in {}", a.dst.join("shards.tsv").display());
    } else {
        println!("when every task is done: speechtune preprocess merge {}", a.dst.display());
    }
    Ok(())
}
