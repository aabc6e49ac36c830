//! `speechtune eval RUN_DIR [--split test]`: score a trained model on a split of its corpus (or
//! another with `--data`): CER/WER corpus-level and per-utterance mean, accuracy, macro-F1,
//! per language, and the confusion matrix. Writes `eval_{split}.json` and
//! `predictions_{split}.tsv` next to the checkpoint.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::prelude::*;
use speechtune_data::Split;

#[derive(clap::Args)]
pub struct Args {
    /// A run folder (uses best/, else the latest checkpoint) or a checkpoint folder.
    pub run: PathBuf,
    /// train, dev or test.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Another corpus than the one trained on (any layout `data stats` reads).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// CTC prefix beam search with this many beams (1: greedy).
    #[arg(long, default_value_t = 1)]
    pub beam: usize,
    /// cpu; cuda / cuda:N or vulkan / vulkan:N in a build with that feature (default: its GPU).
    #[arg(long)]
    pub device: Option<String>,
    /// Mixed precision: `bf16` runs the frozen projections' matrix products with bf16 inputs and
    /// f32 sums (fast on CPUs with AMX or AVX512_BF16), `f32` (the default) runs everything in f32.
    #[arg(long, default_value = "f32")]
    pub precision: speechtune_models::Precision,
}

pub fn parse_split(s: &str) -> Result<Split> {
    Split::ALL.into_iter().find(|x| x.name() == s).with_context(|| format!("--split {s}: expected train, dev or test"))
}

pub fn run(args: Args) -> Result<()> {
    let split = parse_split(&args.split)?;
    let device: Device = speechtune_models::parse_device(args.device.as_deref())?;
    let e =
        speechtune_train::infer::evaluate(&args.run, split, args.data.as_deref(), args.beam, &device, args.precision)
            .with_context(|| format!("evaluating {}", args.run.display()))?;
    if e.unknown_characters > 0 {
        eprintln!(
            "{} characters outside the vocabulary scored as <unk>: {:?}",
            e.unknown_characters, e.unknown_examples
        );
    }
    let report = &e.report;
    println!(
        "{} on {} ({} utterances): {}",
        e.dir.display(),
        split.name(),
        report.utterances,
        crate::train::scores(report)
    );
    print!("{}", crate::train::per_language(report));
    if !report.confusion.is_empty() {
        println!("confusion (rows: truth, columns: predicted):");
        let w = report.confusion_labels.iter().map(|l| l.len()).max().unwrap_or(1).max(4);
        println!(
            "{:w$} {}",
            "",
            report.confusion_labels.iter().map(|l| format!("{l:>w$}")).collect::<Vec<_>>().join(" ")
        );
        for (label, row) in report.confusion_labels.iter().zip(&report.confusion) {
            println!("{label:w$} {}", row.iter().map(|n| format!("{n:>w$}")).collect::<Vec<_>>().join(" "));
        }
    }
    println!("wrote {} and {}", e.json.display(), e.predictions.display());
    Ok(())
}
