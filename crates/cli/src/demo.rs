//! `speechtune demo`: joint ASR + LID with LoRA on the embedded demo corpus, on the built-in
//! pretrained tiny upstream (`builtin:tiny-pretrained`, see models/tiny-pretrained), then
//! evaluation and a plot of the learned layer weights. Runs in minutes on two CPU cores, from
//! any directory: the corpus and the model are part of the program.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use speechtune_train::RunConfig;

/// The demo's settings (also in configs/demo_joint_asr_lid_lora.toml).
const CONFIG: &str = include_str!("../../../configs/demo_joint_asr_lid_lora.toml");

mod corpus {
    include!(concat!(env!("OUT_DIR"), "/demo_corpus.rs"));
}

#[derive(clap::Args)]
pub struct Args {
    /// Use this copy of the demo corpus instead of the one built into the program.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Run folder.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Override a setting of the demo config, e.g. --set train.steps=100 or
    /// --set upstream.model=builtin:tiny (random weights).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let corpus = match args.corpus {
        Some(dir) => dir,
        None => extract_corpus()?,
    };
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("demo.toml");
    std::fs::write(&path, CONFIG)?;
    let mut overrides =
        vec![format!("data.root={}", toml_string(&corpus)), format!("output_dir={}", toml_string(&args.out))];
    overrides.extend(args.overrides);
    let cfg = RunConfig::load(&path, &overrides)?;
    let random = cfg.upstream.model == speechtune_models::builtin::TINY;
    println!(
        "speechtune demo: joint ASR + LID, LoRA r=8 on q/v, upstream {}{}, corpus {}",
        cfg.upstream.model,
        if random { " (random weights)" } else { "" },
        corpus.display()
    );
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
    if random {
        println!(
            "The upstream is random: these numbers show the pipeline learns, not what a pretrained model reaches."
        );
    }
    Ok(())
}

/// The cache folder: `$SPEECHTUNE_CACHE`, else `$XDG_CACHE_HOME/speechtune`, else
/// `~/.cache/speechtune`, else the system's temporary folder.
fn cache_dir() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("SPEECHTUNE_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("speechtune")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/speechtune")))
        .unwrap_or_else(|| std::env::temp_dir().join("speechtune"))
}

/// Write the embedded corpus once into the cache (a folder named by its fingerprint, filled
/// under a temporary name and renamed, so a killed extraction never leaves a partial corpus).
fn extract_corpus() -> Result<PathBuf> {
    let dir = cache_dir().join(format!("demo-corpus-{}", corpus::FINGERPRINT));
    if dir.is_dir() {
        return Ok(dir);
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".demo-corpus-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a folder in {}", parent.display()))?;
    for (rel, bytes) in corpus::FILES {
        let path = tmp.path().join(rel);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    let tmp = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another demo extracted the same corpus meanwhile.
        if !dir.is_dir() {
            return Err(e).with_context(|| format!("moving the demo corpus to {}", dir.display()));
        }
    }
    Ok(dir)
}

fn toml_string(p: &std::path::Path) -> String {
    format!("{:?}", p.display().to_string())
}
