//! `speechtune demo`: joint ASR + LID with LoRA on the embedded demo corpus, on the built-in
//! tiny upstream (random weights: no pretrained default is committed yet), then evaluation and a plot of the
//! learned layer weights. Runs in minutes on two CPU cores.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use speechtune_train::RunConfig;

/// The demo's settings (also in configs/demo_joint_asr_lid_lora.toml).
const CONFIG: &str = include_str!("../../../configs/demo_joint_asr_lid_lora.toml");

#[derive(clap::Args)]
pub struct Args {
    /// Repository root (where data/demo lives).
    #[arg(long, default_value = ".")]
    pub root: PathBuf,
    /// Run folder.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Override a setting of the demo config, e.g. --set train.steps=100.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let corpus = args.root.join("data/demo");
    if !corpus.is_dir() {
        bail!("the demo corpus is not at {} (run from the repository root or pass --root)", corpus.display());
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("demo.toml");
    std::fs::write(&path, CONFIG)?;
    let mut overrides =
        vec![format!("data.root={}", toml_string(&corpus)), format!("output_dir={}", toml_string(&args.out))];
    overrides.extend(args.overrides);
    let cfg = RunConfig::load(&path, &overrides)?;
    println!("speechtune demo: joint ASR + LID, LoRA r=8 on q/v, built-in tiny upstream (random weights), data/demo");
    let opts = speechtune_train::TrainOptions { progress: true, resume: false };
    if cfg.output_dir.join("config.toml").is_file() {
        // The demo always starts over (in a folder a previous demo or run wrote).
        std::fs::remove_dir_all(&cfg.output_dir).with_context(|| format!("clearing {}", cfg.output_dir.display()))?;
    }
    let summary = speechtune_train::train(&cfg, &opts).context("training the demo")?;
    print!("{}", crate::train::report(&summary));
    let runs = vec![("demo".to_string(), summary.layer_weights.clone())];
    let csv = summary.run_dir.join("layer_weights.csv");
    crate::output::write_atomic(&csv, speechtune_analysis::layer_weights_csv(&runs).as_bytes())?;
    let svg = summary.run_dir.join("layer_weights.svg");
    speechtune_analysis::plot_layer_weights(&svg, "demo: featurizer layer weights", &runs)
        .map_err(anyhow::Error::msg)?;
    println!("layer weights: {} and {}", csv.display(), svg.display());
    println!("The upstream is random: these numbers show the pipeline learns, not what a pretrained model reaches.");
    Ok(())
}

fn toml_string(p: &std::path::Path) -> String {
    format!("{:?}", p.display().to_string())
}
