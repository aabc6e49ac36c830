//! `speechtune train CONFIG.toml [--set key=value ...]`

use std::path::PathBuf;

use anyhow::{Context, Result};
use speechtune_train::{RunConfig, RunSummary};

#[derive(clap::Args)]
pub struct Args {
    /// Run configuration (see configs/).
    pub config: PathBuf,
    /// Override a setting, e.g. --set train.lr=5e-4 --set method.r=16 (TOML values).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let cfg = RunConfig::load(&args.config, &args.overrides)?;
    let summary = speechtune_train::train(&cfg, true).with_context(|| format!("training {}", args.config.display()))?;
    print!("{}", report(&summary));
    Ok(())
}

/// The end-of-run report.
pub fn report(s: &RunSummary) -> String {
    let mut out = format!(
        "run {}: {} steps in {:.0} s ({} skipped), {} of {} parameters trained ({:.2}%)\n",
        s.run_dir.display(),
        s.steps,
        s.seconds,
        s.skipped_steps,
        s.trainable_parameters,
        s.total_parameters,
        100.0 * s.trainable_parameters as f64 / s.total_parameters.max(1) as f64
    );
    for (label, e) in [("start", &s.first), ("end", &s.last)] {
        out += &format!(
            "dev at {label} (step {}): CER {:.1}% (per-utterance mean {:.1}%), WER {:.1}%",
            e.step,
            100.0 * e.cer,
            100.0 * e.cer_per_utterance,
            100.0 * e.wer
        );
        if let Some(a) = e.lid_accuracy {
            out += &format!(", LID accuracy {:.1}%, macro-F1 {:.3}", 100.0 * a, e.lid_macro_f1.unwrap_or(0.0));
        }
        out += "\n";
    }
    out += "per language at end (utterances, CER, LID accuracy):\n";
    for (lang, (n, cer, acc)) in &s.last.per_language {
        out += &format!(
            "  {lang:<6} {n:>4}  {:>5.1}%  {}\n",
            100.0 * cer,
            acc.map(|a| format!("{:.1}%", 100.0 * a)).unwrap_or("-".into())
        );
    }
    out += &format!(
        "layer weights: {:?}\n",
        s.layer_weights.iter().map(|w| (w * 1000.0).round() / 1000.0).collect::<Vec<_>>()
    );
    out
}
