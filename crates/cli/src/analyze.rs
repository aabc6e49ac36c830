//! `speechtune analyze ...`: questions asked of trained runs. `layers`: the featurizer's learned
//! layer weights of one or many runs (e.g. one per language) as a CSV table and an SVG plot, as
//! seed 000's `analyze_layer_weights` does.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use speechtune_models::state::read_safetensors;
use speechtune_train::RunConfig;
use speechtune_train::checkpoint::{HEADS, resolve};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Layer weights of the featurizer, per run: CSV + SVG.
    Layers(LayersArgs),
    /// Trainable and total parameters, checkpoint size, peak memory and step time per method.
    Cost(CostArgs),
}

#[derive(clap::Args)]
pub struct CostArgs {
    /// A run configuration: its upstream, task, data and batch size are used.
    pub config: PathBuf,
    /// Methods to compare (each with its default settings).
    #[arg(long, value_delimiter = ',', default_value = "frozen,lora,adapter,conv_adapter,prefix,bitfit,full")]
    pub methods: Vec<String>,
    /// Training updates measured per method.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Override a setting of the config (as `train --set`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Where cost.csv goes.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}

#[derive(clap::Args)]
pub struct LayersArgs {
    /// Run folders (best/ is read, else the latest checkpoint) or checkpoint folders.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Output folder for layer_weights.csv and layer_weights.svg.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}

pub fn run(c: Command) -> Result<()> {
    match c {
        Command::Layers(a) => layers(a),
        Command::Cost(a) => cost(a),
    }
}

/// A run's name: its folder, or the run folder above a `best/` or `checkpoints/step-N/`.
fn run_name(run: &Path) -> String {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "run".into());
    let n = name(run);
    if n == "best" || n.starts_with("step-") {
        let up = if n == "best" { run.parent() } else { run.parent().and_then(|p| p.parent()) };
        return up.map(name).unwrap_or(n);
    }
    n
}

/// Softmax-normalised layer weights of a checkpoint, one per hidden state (0 for a CNN output
/// the featurizer excluded).
pub fn layer_weights(checkpoint: &Path) -> Result<Vec<f32>> {
    let heads = read_safetensors(&checkpoint.join(HEADS))?;
    let Some((_, logits)) = heads.get("featurizer.weights") else {
        bail!("{}: no featurizer.weights", checkpoint.join(HEADS).display());
    };
    let cfg = RunConfig::load(&checkpoint.join("config.toml"), &[])?;
    let max = logits.iter().copied().fold(f32::MIN, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    let mut w: Vec<f32> = exp.iter().map(|e| e / sum).collect();
    if cfg.upstream.exclude_cnn {
        w.insert(0, 0.0);
    }
    Ok(w)
}

fn layers(a: LayersArgs) -> Result<()> {
    let mut runs = Vec::new();
    for r in &a.runs {
        let ckpt = resolve(r).with_context(|| format!("reading {}", r.display()))?;
        runs.push((run_name(&ckpt), layer_weights(&ckpt).with_context(|| format!("reading {}", ckpt.display()))?));
    }
    let csv_text = speechtune_analysis::layer_weights_csv(&runs);
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let csv = a.out.join("layer_weights.csv");
    crate::output::write_atomic(&csv, csv_text.as_bytes())?;
    let svg = a.out.join("layer_weights.svg");
    let tmp = a.out.join(".layer_weights.svg.tmp");
    speechtune_analysis::plot_layer_weights(&tmp, "featurizer layer weights", &runs).map_err(anyhow::Error::msg)?;
    std::fs::rename(&tmp, &svg).with_context(|| format!("writing {}", svg.display()))?;
    print!("{csv_text}");
    println!("wrote {} and {}", csv.display(), svg.display());
    Ok(())
}

/// Bytes of what a checkpoint keeps of the model (resume state and metadata excluded).
fn checkpoint_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .sum()
}

/// Each method trains `steps` updates in its own process (so that peak memory is its own);
/// the numbers come from the run's summary.json.
fn cost(a: CostArgs) -> Result<()> {
    let base = RunConfig::load(&a.config, &a.overrides)?;
    let tmp = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let mut rows =
        vec!["method,trainable,total,trainable_percent,checkpoint_bytes,seconds_per_step,peak_rss_bytes".to_string()];
    println!(
        "{:<13} {:>11} {:>11} {:>8} {:>12} {:>10} {:>10}",
        "method", "trainable", "total", "%", "checkpoint", "s/step", "peak RSS"
    );
    for method in &a.methods {
        let mut table: toml::Table = toml::from_str(&base.to_toml())?;
        let mut m = toml::Table::new();
        m.insert("kind".into(), toml::Value::String(method.clone()));
        table.insert("method".into(), toml::Value::Table(m));
        let out = tmp.path().join(method);
        table.insert("output_dir".into(), toml::Value::String(out.display().to_string()));
        let path = tmp.path().join(format!("{method}.toml"));
        std::fs::write(&path, toml::to_string(&table)?)?;
        let sets = [
            format!("train.steps={}", a.steps),
            "train.eval_every=0".to_string(),
            "train.checkpoint_every=0".to_string(),
            "train.early_stopping_patience=1000000".to_string(),
        ];
        RunConfig::load(&path, &sets).with_context(|| format!("method {method}"))?;
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("train").arg(&path);
        for s in &sets {
            cmd.arg("--set").arg(s);
        }
        let status = cmd.stdout(std::process::Stdio::null()).status()?;
        if !status.success() {
            bail!("training with method {method} failed");
        }
        let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json"))?)?;
        let n = |k: &str| summary[k].as_f64().unwrap_or(0.0);
        let (trainable, total) = (n("trainable_parameters"), n("total_parameters"));
        let bytes = checkpoint_bytes(&out.join(format!("checkpoints/step-{}", a.steps)));
        let rss = n("peak_rss_bytes");
        println!(
            "{method:<13} {trainable:>11} {total:>11} {:>7.2}% {:>9.2} MB {:>10.3} {:>7.0} MB",
            100.0 * trainable / total.max(1.0),
            bytes as f64 / 1e6,
            n("seconds_per_step"),
            rss / 1e6
        );
        rows.push(format!(
            "{method},{trainable},{total},{:.4},{bytes},{:.4},{rss}",
            100.0 * trainable / total.max(1.0),
            n("seconds_per_step")
        ));
    }
    std::fs::create_dir_all(&a.out)?;
    let csv = a.out.join("cost.csv");
    crate::output::write_atomic(&csv, (rows.join("\n") + "\n").as_bytes())?;
    println!("wrote {}", csv.display());
    Ok(())
}
