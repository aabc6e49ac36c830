//! `speechtune`: fine-tune and analyse self-supervised speech models.

mod analyze;
mod bench;
mod data;
mod demo;
mod eval;
mod export;
mod features;
mod import;
mod inspect;
mod launch;
mod output;
mod preprocess;
mod pretrain;
mod train;
mod transcribe;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "speechtune",
    version,
    about = "Pre-train, fine-tune and analyse self-supervised speech models (wav2vec2, XLS-R, HuBERT, data2vec-audio, WavLM, Whisper)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Extract every hidden state of an upstream model for audio files.
    Features(features::Args),
    /// Show a checkpoint's architecture and parameters per component.
    Inspect(inspect::Args),
    /// Fine-tune an upstream on a task with a PEFT method.
    Train(train::Args),
    /// Pre-train wav2vec2 (the wav2vec 2.0 objective) from a config or a checkpoint.
    Pretrain(pretrain::Args),
    /// Score a trained model on a split: CER/WER, accuracy, macro-F1, per language, confusion.
    Eval(eval::Args),
    /// Transcribe audio files with a trained CTC model.
    Transcribe(transcribe::Args),
    /// Identify the language (or class) of audio files with a trained model.
    Identify(transcribe::Args),
    /// Corpus preparation: convert to 16-kHz FLAC, VAD segmentation into tar shards, merge.
    #[command(subcommand)]
    Preprocess(preprocess::Command),
    /// Corpus statistics and health checks.
    #[command(subcommand)]
    Data(data::Command),
    /// Analyse trained runs: layer weights.
    #[command(subcommand)]
    Analyze(analyze::Command),
    /// Convert checkpoints from other toolkits into Hugging Face model directories.
    #[command(subcommand)]
    Import(import::Command),
    /// Write a trained run's upstream as a Hugging Face model directory (S3-Router masks applied,
    /// LoRA merged), with its masks and a sparsity report.
    Export(export::ExportArgs),
    /// One-shot magnitude pruning of a model (per layer or global), written like `export`.
    Prune(export::PruneArgs),
    /// Joint ASR + LID with LoRA on the embedded demo corpus, evaluation and a layer-weights plot.
    Demo(demo::Args),
    /// speechtune's side of `bench/run.sh` (wav2vec2-base, random weights; JSON lines).
    #[command(hide = true)]
    Bench(bench::Args),
}

/// Tensors of tens of megabytes come and go in every forward pass and training step. glibc's
/// malloc serves each from a fresh `mmap` and unmaps it on free, so every step faults in and
/// zeroes its activations again (6 % of a 4 × 10 s forward in `exc_page_fault` / `clear_page`
/// on the EPYC). Heap memory instead, kept when freed: forward 4 × 10 s 4.35–4.50 → 3.44–3.49 s,
/// peak RSS 624 → 597 MB (bench/README.md). The same as `GLIBC_TUNABLES=glibc.malloc.mmap_max=0:
/// glibc.malloc.trim_threshold=4294967295` for a program that embeds the library.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called first in main, before any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    // Launched as one of several processes (mpirun, srun): join the job first.
    let _mpi = match speechtune_train::distributed::init() {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let comm = speechtune_train::distributed::comm();
    if comm.size > 1 && !matches!(cli.command, Command::Train(_) | Command::Pretrain(_)) {
        eprintln!(
            "error: launched as rank {} of {}: only `train` and `pretrain` run data-parallel",
            comm.rank, comm.size
        );
        std::process::exit(1);
    }
    let result = match cli.command {
        Command::Features(a) => features::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Train(a) => train::run(a),
        Command::Pretrain(a) => pretrain::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Transcribe(a) => transcribe::run(a, transcribe::Mode::Transcribe),
        Command::Identify(a) => transcribe::run(a, transcribe::Mode::Identify),
        Command::Data(c) => data::run(c),
        Command::Preprocess(c) => preprocess::run(c),
        Command::Analyze(c) => analyze::run(c),
        Command::Export(a) => export::export(a),
        Command::Import(c) => import::run(c),
        Command::Prune(a) => export::prune(a),
        Command::Demo(a) => demo::run(a),
        Command::Bench(a) => bench::run(a),
    };
    if let Err(e) = result {
        if comm.size > 1 {
            // The other ranks would wait for this one until their timeout: stop them now.
            eprintln!("error: rank {} of {}: {}", comm.rank, comm.size, speechtune_models::one_line(e.as_ref()));
            comm.abort(1);
        }
        eprintln!("error: {}", speechtune_models::one_line(e.as_ref()));
        std::process::exit(1);
    }
}
