//! `speechtune export` and `speechtune prune`: an adapted upstream as a Hugging Face model
//! directory (projections as the model computes them: S3-Router masks applied, LoRA merged),
//! with the binary masks and a per-layer sparsity report; and one-shot magnitude pruning of a
//! pretrained model, the baseline for S3-Router.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use speechtune_models::export::{LayerSparsity, Source, export_hf};
use speechtune_peft::PruneScope;
use speechtune_train::Method;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A run folder (its best checkpoint) or a checkpoint folder, trained with frozen, lora or
    /// s3_router.
    pub run: PathBuf,
    /// Output model directory (config.json, model.safetensors, masks.safetensors, sparsity.csv).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args)]
pub struct PruneArgs {
    /// A Hugging Face model directory, or builtin:tiny.
    pub model: String,
    /// Fraction of weights KEPT, as S3-Router's prune_rate (0.7 = 30% sparsity).
    #[arg(long)]
    pub keep: f64,
    /// layer: every projection keeps that fraction; global: one magnitude threshold for all.
    #[arg(long, value_enum, default_value = "layer")]
    pub scope: Scope,
    /// Leave attention projections unpruned (feed-forward layers only).
    #[arg(long)]
    pub fix_attn: bool,
    /// Seed of builtin:tiny.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output model directory.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Scope {
    Layer,
    Global,
}

fn report(layers: &[LayerSparsity], out: &std::path::Path) {
    let (n, k): (usize, usize) = layers.iter().fold((0, 0), |(n, k), l| (n + l.weights, k + l.kept));
    if n > 0 {
        println!(
            "{} masked projections, {k} of {n} weights kept ({:.2}% sparsity); per layer: {}",
            layers.len(),
            100.0 * (1.0 - k as f64 / n as f64),
            out.join("sparsity.csv").display()
        );
    }
    println!("wrote {}", out.display());
}

pub fn export(a: ExportArgs) -> Result<()> {
    let device = burn::prelude::Device::flex();
    let loaded = speechtune_train::checkpoint::load(&a.run, &device)?;
    match loaded.cfg.method {
        Method::Frozen | Method::Lora(_) | Method::S3Router(_) => {}
        ref m => bail!(
            "{}: export writes frozen, lora and s3_router runs (whose upstream differs from the source only in its \
             projections); this run used {}",
            loaded.dir.display(),
            m.name()
        ),
    }
    let source = Source::parse(&loaded.cfg.upstream.model, loaded.cfg.upstream.seed);
    let layers =
        export_hf(&source, &loaded.model.upstream, &a.out).with_context(|| format!("exporting {}", a.run.display()))?;
    report(&layers, &a.out);
    Ok(())
}

pub fn prune(a: PruneArgs) -> Result<()> {
    if !(a.keep > 0.0 && a.keep <= 1.0) {
        bail!("--keep is the fraction of weights kept, in (0, 1]; got {}", a.keep);
    }
    let device = burn::prelude::Device::flex();
    let source = Source::parse(&a.model, a.seed);
    let (mut upstream, _) = source.open(&device)?;
    let scope = match a.scope {
        Scope::Layer => PruneScope::Layer,
        Scope::Global => PruneScope::Global,
    };
    upstream.model.prune_magnitude(a.keep, scope, a.fix_attn);
    let layers = export_hf(&source, &upstream.model, &a.out)?;
    report(&layers, &a.out);
    Ok(())
}
