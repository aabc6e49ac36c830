//! `speechtune pretrain CONFIG.toml [--set key=value ...] [--resume]`

use std::path::PathBuf;

use anyhow::{Context, Result};
use speechtune_train::pretrain::{PretrainConfig, PretrainReport, PretrainSummary, pretrain};

#[derive(clap::Args)]
pub struct Args {
    /// Pre-training configuration (see configs/pretrain_*.toml).
    pub config: PathBuf,
    /// Override a setting, e.g. --set train.lr=5e-4 --set objective.num_negatives=50 (TOML values).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Continue the run in output_dir from its latest checkpoint (after a kill or a time limit).
    #[arg(long)]
    pub resume: bool,
    /// Data-parallel on these devices, one process each (same as train.devices), e.g.
    /// `--devices cpu,cpu` or `--devices vulkan:0,vulkan:1`: started through `mpirun`.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let overrides = crate::launch::with_devices(&args.overrides, &args.devices);
    let cfg = PretrainConfig::load(&args.config, &overrides)?;
    if crate::launch::needs_processes(&cfg.train) {
        return crate::launch::one_process_per_device(&cfg.train);
    }
    let summary =
        pretrain(&cfg, true, args.resume).with_context(|| format!("pre-training {}", args.config.display()))?;
    if speechtune_train::distributed::comm().is_root() {
        print!("{}", report(&summary));
    }
    Ok(())
}

fn scores(r: &PretrainReport) -> String {
    format!(
        "loss {:.3} (contrastive {:.3}, diversity {:.3}), accuracy {:.1}%, code perplexity {:.1}",
        r.loss,
        r.contrastive,
        r.diversity,
        100.0 * r.accuracy,
        r.code_perplexity
    )
}

/// The end-of-run report.
pub fn report(s: &PretrainSummary) -> String {
    let mut out = format!(
        "run {}: {} updates in {:.0} s ({:.2} s per update, {} skipped{}), {} parameters, {} training / {} valid utterances\n",
        s.run_dir.display(),
        s.steps,
        s.seconds,
        s.seconds_per_step,
        s.skipped_steps,
        s.resumed_from.map(|r| format!(", resumed at update {r}")).unwrap_or_default(),
        s.parameters,
        s.training_utterances,
        s.valid_utterances
    );
    if s.dropped_too_short > 0 || !s.unreadable.is_empty() || s.skipped_batches > 0 {
        out += &format!(
            "{} utterances too short, {} unreadable, {} batches without a masked frame\n",
            s.dropped_too_short,
            s.unreadable.len(),
            s.skipped_batches
        );
    }
    for u in &s.unreadable {
        out += &format!("  unreadable: {u}\n");
    }
    if s.rollbacks > 0 {
        out += &format!("{} rollbacks to an earlier checkpoint\n", s.rollbacks);
    }
    for (label, r) in [("start", &s.first), ("end", &s.last), ("best", &s.best)] {
        out += &format!("valid at {label} (update {}): {}\n", r.step, scores(r));
    }
    out += &format!("best checkpoint (a Hugging Face Wav2Vec2ForPreTraining directory): {}\n", s.best_dir.display());
    out
}
