//! `speechtune train CONFIG.toml [--set key=value ...]`

use std::path::PathBuf;

use anyhow::{Context, Result};
use speechtune_train::{EvalReport, RunConfig, RunSummary, TrainOptions};

#[derive(clap::Args)]
pub struct Args {
    /// Run configuration (see configs/).
    pub config: PathBuf,
    /// Override a setting, e.g. --set train.lr=5e-4 --set method.r=16 (TOML values).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Continue the run in output_dir from its latest checkpoint (after a kill or a time limit).
    #[arg(long)]
    pub resume: bool,
    /// Data-parallel on these devices, one process each (same as train.devices), e.g.
    /// `--devices cpu,cpu` or `--devices vulkan:0,vulkan:1`: started through `mpirun`.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// One run per training language, in output_dir/LANG (S3-Router's multilingual setting:
    /// one mask per language over the same pretrained weights). `transcribe --lang/--lid`
    /// picks among them; `analyze masks` compares them.
    #[arg(long)]
    pub per_language: bool,
}

pub fn run(args: Args) -> Result<()> {
    let overrides = crate::launch::with_devices(&args.overrides, &args.devices);
    let cfg = RunConfig::load(&args.config, &overrides)?;
    if crate::launch::needs_processes(&cfg.train) {
        return crate::launch::one_process_per_device(&cfg.train);
    }
    let opts = TrainOptions { progress: true, resume: args.resume };
    if args.per_language {
        return train_per_language(cfg, &opts, &args.config);
    }
    let summary =
        speechtune_train::train(&cfg, &opts).with_context(|| format!("training {}", args.config.display()))?;
    if speechtune_train::distributed::comm().is_root() {
        print!("{}", report(&summary));
    }
    Ok(())
}

/// The end-of-run report.
pub fn report(s: &RunSummary) -> String {
    let mut out = format!(
        "run {}: {} steps in {:.0} s ({} skipped{}{}), {} of {} parameters trained ({:.2}%)\n",
        s.run_dir.display(),
        s.steps,
        s.seconds,
        s.skipped_steps,
        s.resumed_from.map(|r| format!(", resumed at step {r}")).unwrap_or_default(),
        if s.stopped_early { ", stopped early" } else { "" },
        s.trainable_parameters,
        s.total_parameters,
        100.0 * s.trainable_parameters as f64 / s.total_parameters.max(1) as f64
    );
    if s.unknown_characters > 0 {
        out += &format!(
            "{} characters outside the vocabulary were mapped to <unk>: {:?}\n",
            s.unknown_characters, s.unknown_examples
        );
    }
    for (label, e) in [("start", &s.first), ("end", &s.last), ("best", &s.best)] {
        out += &format!("dev at {label} (step {}): {}\n", e.step, scores(e));
    }
    out += &format!("best checkpoint: {}\n", s.best_dir.display());
    out += &per_language(&s.last);
    if !s.layer_weights.is_empty() {
        out += &format!(
            "layer weights: {:?}\n",
            s.layer_weights.iter().map(|w| (w * 1000.0).round() / 1000.0).collect::<Vec<_>>()
        );
    }
    out
}

/// One line of scores.
pub fn scores(e: &EvalReport) -> String {
    let mut parts = Vec::new();
    if e.per_language.values().any(|l| l.cer.is_some()) {
        parts.push(format!(
            "CER {:.1}% (per-utterance mean {:.1}%), WER {:.1}%",
            100.0 * e.cer,
            100.0 * e.cer_per_utterance,
            100.0 * e.wer
        ));
    }
    if let Some(a) = e.accuracy {
        parts.push(format!("accuracy {:.1}%, macro-F1 {:.3}", 100.0 * a, e.macro_f1.unwrap_or(0.0)));
    }
    parts.join(", ")
}

/// Per-language table: utterances, CER, WER, accuracy.
pub fn per_language(e: &EvalReport) -> String {
    let pct = |v: Option<f64>| v.map(|x| format!("{:.1}%", 100.0 * x)).unwrap_or_else(|| "-".into());
    let mut out = "language  utts     CER     WER  accuracy\n".to_string();
    for (lang, l) in &e.per_language {
        out += &format!("{lang:<8} {:>5} {:>7} {:>7} {:>9}\n", l.utterances, pct(l.cer), pct(l.wer), pct(l.accuracy));
    }
    out
}

fn train_per_language(cfg: RunConfig, opts: &TrainOptions, config: &std::path::Path) -> Result<()> {
    let utts = speechtune_train::prepare::read_split(speechtune_data::Split::Train, &cfg)?;
    let languages = speechtune_train::prepare::class_names(&utts, speechtune_train::config::TaskKind::Lid);
    if languages.is_empty() {
        anyhow::bail!("{}: the training split names no language", cfg.data.root.display());
    }
    std::fs::create_dir_all(&cfg.output_dir).with_context(|| format!("creating {}", cfg.output_dir.display()))?;
    let index = serde_json::to_string_pretty(&languages)?;
    crate::output::write_atomic(&cfg.output_dir.join(speechtune_train::infer::LANGUAGES), index.as_bytes())?;
    for lang in &languages {
        let mut c = cfg.clone();
        c.data.languages = vec![lang.clone()];
        c.output_dir = cfg.output_dir.join(lang);
        println!("== {lang}: {}", c.output_dir.display());
        let summary =
            speechtune_train::train(&c, opts).with_context(|| format!("training {} for {lang}", config.display()))?;
        print!("{}", report(&summary));
    }
    Ok(())
}
