//! `speechtune eval RUN_DIR [--split test]`: score a trained model on a split of its corpus (or
//! another with `--data`): CER/WER corpus-level and per-utterance mean, accuracy, macro-F1,
//! per language, and the confusion matrix. Writes `eval_{split}.json` and
//! `predictions_{split}.tsv` next to the checkpoint.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::prelude::*;
use speechtune_data::Split;
use speechtune_train::checkpoint;
use speechtune_train::eval::evaluate;
use speechtune_train::prepare::{class_of, prepare, read_split};

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
}

pub fn parse_split(s: &str) -> Result<Split> {
    Split::ALL.into_iter().find(|x| x.name() == s).with_context(|| format!("--split {s}: expected train, dev or test"))
}

pub fn run(args: Args) -> Result<()> {
    let split = parse_split(&args.split)?;
    let device: Device = speechtune_models::parse_device(args.device.as_deref())?;
    if crate::transcribe::is_seq2seq_run(&args.run) {
        return run_seq2seq(&args, split, &device);
    }
    let loaded = checkpoint::load_for_inference(&args.run, &device)
        .with_context(|| format!("loading {}", args.run.display()))?;
    let mut cfg = loaded.cfg.clone();
    if let Some(d) = &args.data {
        cfg.data.root = d.clone();
    }
    let utts = read_split(split, &cfg)
        .with_context(|| format!("reading the {} split of {}", split.name(), cfg.data.root.display()))?;
    let set = prepare(utts, &cfg, &loaded.vocab, &loaded.classes, None);
    if set.unknown_characters > 0 {
        let chars: String = set.unknown_examples.iter().collect();
        eprintln!("{} characters outside the vocabulary scored as <unk>: {chars:?}", set.unknown_characters);
    }
    let mut rows = vec!["id\tlang\treference\thypothesis\tclass\tpredicted".to_string()];
    let kind = cfg.task.kind;
    let report = evaluate(
        &loaded.model,
        &loaded.frontend,
        &set,
        &cfg,
        &loaded.vocab,
        &loaded.classes,
        0,
        args.beam,
        &device,
        |i, p| {
            let u = &set.utts[i];
            rows.push(format!(
                "{}\t{}\t{}\t{}\t{}\t{}",
                u.id,
                u.lang.as_deref().unwrap_or("-"),
                set.texts[i],
                p.text.as_deref().unwrap_or(""),
                class_of(u, kind),
                p.class.as_deref().unwrap_or("")
            ));
        },
    )?;
    println!(
        "{} on {} ({} utterances): {}",
        loaded.dir.display(),
        split.name(),
        report.utterances,
        crate::train::scores(&report)
    );
    print!("{}", crate::train::per_language(&report));
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
    let json = loaded.dir.join(format!("eval_{}.json", split.name()));
    crate::output::write_atomic(&json, serde_json::to_string_pretty(&report)?.as_bytes())?;
    let tsv = loaded.dir.join(format!("predictions_{}.tsv", split.name()));
    crate::output::write_atomic(&tsv, (rows.join("\n") + "\n").as_bytes())?;
    println!("wrote {} and {}", json.display(), tsv.display());
    Ok(())
}

/// `eval` of a fine-tuned Whisper (`seq2seq_asr`): generated text scored by CER/WER.
fn run_seq2seq(args: &Args, split: Split, device: &Device) -> Result<()> {
    use speechtune_train::seq2seq;
    let (mut cfg, whisper, dir) =
        seq2seq::load(&args.run, device, true).with_context(|| format!("loading {}", args.run.display()))?;
    if let Some(d) = &args.data {
        cfg.data.root = d.clone();
    }
    let set = seq2seq::read_prepared(split, &cfg, &whisper)
        .with_context(|| format!("reading the {} split of {}", split.name(), cfg.data.root.display()))?;
    let mut rows = vec!["id\tlang\treference\thypothesis".to_string()];
    let report = seq2seq::evaluate(&whisper.model, &whisper.processor, &set, &cfg, 0, args.beam, device, |i, hyp| {
        let u = &set.utts[i];
        rows.push(format!("{}\t{}\t{}\t{hyp}", u.id, u.lang.as_deref().unwrap_or("-"), set.texts[i]));
    })?;
    println!(
        "{} on {} ({} utterances): {}",
        dir.display(),
        split.name(),
        report.utterances,
        crate::train::scores(&report)
    );
    print!("{}", crate::train::per_language(&report));
    let json = dir.join(format!("eval_{}.json", split.name()));
    crate::output::write_atomic(&json, serde_json::to_string_pretty(&report)?.as_bytes())?;
    let tsv = dir.join(format!("predictions_{}.tsv", split.name()));
    crate::output::write_atomic(&tsv, (rows.join("\n") + "\n").as_bytes())?;
    println!("wrote {} and {}", json.display(), tsv.display());
    Ok(())
}
