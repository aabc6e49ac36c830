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
    /// Layer Utilization Rate by integrated gradients: the share of each layer's neurons that
    /// matter for the predicted characters (CTC runs). CSV + SVG.
    Lur(LurArgs),
    /// Similarity of S3-Router masks across runs (e.g. one per language): cosine and IoU
    /// matrices as CSV, heatmaps (PNG + labelled SVG), optional correlation with distances.
    Masks(MasksArgs),
    /// Curves of a `speechtune pretrain` run (loss, accuracy of picking the true quantized
    /// frame, code and prob perplexity against updates; training smoothed, validation as dots):
    /// pretrain_curves.svg + pretrain_curves.csv.
    Pretrain(PretrainArgs),
}

#[derive(clap::Args)]
pub struct PretrainArgs {
    /// A pre-training run folder (with metrics.jsonl).
    pub run: PathBuf,
    /// Output folder.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Moving-average window over training updates.
    #[arg(long, default_value_t = 25)]
    pub smooth: usize,
}

#[derive(clap::Args)]
pub struct LurArgs {
    /// CTC run folders (asr, joint_asr_lid, ctc_plus_lid) or checkpoint folders.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Split of each run's corpus to analyse.
    #[arg(long, default_value = "dev")]
    pub split: String,
    /// Utterances analysed per run (the first of the split).
    #[arg(long, default_value_t = 5)]
    pub utterances: usize,
    /// Integration steps m (log-spaced path). The report gives how far the attributions are from
    /// complete; deep pre-LN stacks may need 256 (4× the time).
    #[arg(long, default_value_t = 64)]
    pub steps: usize,
    /// Output folder for lur.csv and lur.svg.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}

#[derive(clap::Args)]
pub struct MasksArgs {
    /// S3-Router run folders, checkpoint folders, or a `train --per-language` folder (all its
    /// languages).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// A language distance matrix (CSV: header `name,l1,l2,...`, one row per language) to
    /// correlate with the mask similarity (e.g. phonetic distances).
    #[arg(long)]
    pub distances: Option<PathBuf>,
    /// Output folder.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}

#[derive(clap::Args)]
pub struct CostArgs {
    /// A run configuration: its upstream, task, data and batch size are used.
    pub config: PathBuf,
    /// Methods to compare (each with its default settings).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "frozen,lora,adapter,conv_adapter,prefix,bitfit,s3_router,full"
    )]
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
        Command::Masks(a) => masks(a),
        Command::Lur(a) => lur(a),
        Command::Pretrain(a) => pretrain_curves(a),
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

/// One mask per run: every masked weight of the checkpoint's `masks.safetensors`, in name order.
fn read_masks(ckpt: &Path) -> Result<(Vec<String>, Vec<bool>)> {
    let path = ckpt.join(speechtune_train::checkpoint::MASKS);
    if !path.is_file() {
        bail!("{}: no {} (is this an s3_router run?)", ckpt.display(), speechtune_train::checkpoint::MASKS);
    }
    let w = speechtune_models::weights::Weights::open_safetensors(std::slice::from_ref(&path))?;
    let mut names: Vec<String> = w.names().map(str::to_string).collect();
    names.sort();
    let mut bits = Vec::new();
    for n in &names {
        let shape = w.shape(n).unwrap_or_default();
        bits.extend(w.values(n, &shape)?.into_iter().map(|v| v > 0.5));
    }
    Ok((names, bits))
}

fn masks(a: MasksArgs) -> Result<()> {
    let mut runs = Vec::new();
    for r in &a.runs {
        match speechtune_train::infer::per_language(r)? {
            Some(langs) => runs.extend(langs.into_iter().map(|l| r.join(l))),
            None => runs.push(r.clone()),
        }
    }
    let mut masks = Vec::new();
    let mut layout: Option<(PathBuf, Vec<String>)> = None;
    for r in &runs {
        let ckpt = resolve(r).with_context(|| format!("reading {}", r.display()))?;
        let (names, bits) = read_masks(&ckpt)?;
        match &layout {
            Some((first, n)) if *n != names => {
                bail!("{} masks other layers than {}: not over the same model", ckpt.display(), first.display())
            }
            None => layout = Some((ckpt.clone(), names)),
            _ => {}
        }
        let kept = bits.iter().filter(|&&b| b).count();
        println!(
            "{}: {kept} of {} weights kept ({:.2}% sparsity)",
            run_name(&ckpt),
            bits.len(),
            100.0 * (1.0 - kept as f64 / bits.len().max(1) as f64)
        );
        masks.push((run_name(&ckpt), bits));
    }
    let s = speechtune_analysis::mask_similarity(&masks).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    for (key, title, m) in [
        ("cosine", "mask similarity: cosine", &s.cosine),
        ("iou", "mask similarity: IoU of kept weights", &s.iou),
        ("iou_pruned", "mask similarity: IoU of pruned weights", &s.iou_pruned),
    ] {
        let csv = speechtune_analysis::matrix_csv(&s.names, m);
        crate::output::write_atomic(&a.out.join(format!("masks_{key}.csv")), csv.as_bytes())?;
        println!("{title}\n{csv}");
        for ext in ["png", "svg"] {
            let dst = a.out.join(format!("masks_{key}.{ext}"));
            let tmp = a.out.join(format!(".masks_{key}.{ext}.tmp"));
            if ext == "png" {
                speechtune_analysis::heatmap_png(&tmp, m, 48).map_err(anyhow::Error::msg)?;
            } else {
                speechtune_analysis::heatmap_svg(&tmp, title, &s.names, m).map_err(anyhow::Error::msg)?;
            }
            std::fs::rename(&tmp, &dst).with_context(|| format!("writing {}", dst.display()))?;
        }
    }
    if let Some(d) = &a.distances {
        let text = std::fs::read_to_string(d).with_context(|| format!("reading {}", d.display()))?;
        let (names, dist) =
            speechtune_analysis::read_matrix_csv(&text).map_err(|e| anyhow::anyhow!("{}: {e}", d.display()))?;
        let mut lines = vec!["similarity,pearson,spearman,pairs".to_string()];
        for (key, m) in [("cosine", &s.cosine), ("iou", &s.iou), ("iou_pruned", &s.iou_pruned)] {
            match speechtune_analysis::matrix_correlation(&s.names, m, &names, &dist) {
                Some((p, r, n)) => {
                    println!(
                        "{key} vs {}: Pearson {p:.3}, Spearman {r:.3} over {n} pairs (negative: closer languages share more)",
                        d.display()
                    );
                    lines.push(format!("{key},{p:.6},{r:.6},{n}"));
                }
                None => {
                    bail!("{}: fewer than 3 language pairs shared with the runs ({})", d.display(), s.names.join(", "))
                }
            }
        }
        crate::output::write_atomic(&a.out.join("masks_vs_distance.csv"), (lines.join("\n") + "\n").as_bytes())?;
    }
    println!("wrote masks_{{cosine,iou,iou_pruned}}.{{csv,png,svg}} to {}", a.out.display());
    Ok(())
}

fn lur(a: LurArgs) -> Result<()> {
    let split = crate::eval::parse_split(&a.split)?;
    let device = speechtune_models::parse_device(Some("cpu"))?.autodiff();
    let mut runs = Vec::new();
    let mut rows = vec!["run,layer,lur_percent".to_string()];
    for r in &a.runs {
        let loaded = speechtune_train::checkpoint::load_without_dropout(r, &device)
            .with_context(|| format!("loading {}", r.display()))?;
        let mut utts = speechtune_train::prepare::read_split(split, &loaded.cfg)?;
        utts.truncate(a.utterances);
        if utts.is_empty() {
            bail!("{}: no {} utterances in {}", r.display(), a.split, loaded.cfg.data.root.display());
        }
        let waves = utts.iter().map(speechtune_data::load_audio).collect::<std::result::Result<Vec<_>, _>>()?;
        let name = run_name(&loaded.dir);
        let bar = indicatif::ProgressBar::new(waves.len() as u64);
        bar.set_message(name.clone());
        let blank = loaded.vocab.blank() as usize;
        let report = speechtune_train::lur::layer_utilization(
            &loaded.model,
            &loaded.frontend,
            &waves,
            blank,
            a.steps,
            &device,
            |n| bar.set_position(n as u64),
        )
        .with_context(|| format!("layer utilization of {}", r.display()))?;
        bar.finish_and_clear();
        println!(
            "{name}: {} utterances, {} characters over {} frames, m = {}, attributions complete within {:.2e} (relative)",
            report.utterances, report.characters, report.frames, report.steps, report.completeness_error
        );
        for (l, p) in report.layers.iter().zip(&report.percent) {
            println!("  layer {l:>2}: LUR {p:.1}%");
            rows.push(format!("{name},{l},{p:.4}"));
        }
        if report.completeness_error > 0.05 {
            println!("  (attributions are more than 5% from complete: raise --steps)");
        }
        runs.push((name, report.percent.iter().map(|&p| p as f32).collect::<Vec<f32>>()));
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let csv = a.out.join("lur.csv");
    crate::output::write_atomic(&csv, (rows.join("\n") + "\n").as_bytes())?;
    let svg = a.out.join("lur.svg");
    let tmp = a.out.join(".lur.svg.tmp");
    speechtune_analysis::plot_per_layer(
        &tmp,
        "Layer Utilization Rate (integrated gradients)",
        ("layer", "% of neurons relevant"),
        1,
        &runs,
    )
    .map_err(anyhow::Error::msg)?;
    std::fs::rename(&tmp, &svg).with_context(|| format!("writing {}", svg.display()))?;
    println!("wrote {} and {}", csv.display(), svg.display());
    Ok(())
}

/// Training columns and validation columns of `analyze pretrain`, as metrics.jsonl names them.
const TRAIN_KEYS: [&str; 5] = ["loss", "accuracy", "code_perplexity", "prob_perplexity", "temperature"];
const VALID_KEYS: [&str; 3] = ["loss", "accuracy", "code_perplexity"];

fn pretrain_curves(a: PretrainArgs) -> Result<()> {
    use speechtune_analysis::{Panel, Series, moving_average, plot_panels};
    let path = a.run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    // Per update: the training values; per evaluation: the validation values.
    let mut train: Vec<(f64, [f64; 5])> = Vec::new();
    let mut valid: Vec<(f64, [f64; 3])> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}: not JSON", path.display(), n + 1))?;
        let get = |o: &serde_json::Value, k: &str| o.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
        if let Some(e) = v.get("eval") {
            valid.push((get(e, "step"), VALID_KEYS.map(|k| get(e, k))));
        } else if v.get("accuracy").is_some() && v.get("step").is_some() {
            train.push((get(&v, "step"), TRAIN_KEYS.map(|k| get(&v, k))));
        }
    }
    if train.is_empty() {
        bail!("{}: no pre-training updates (is this a `speechtune pretrain` run?)", path.display());
    }
    let column = |i: usize| -> Vec<(f64, f64)> { train.iter().map(|(s, v)| (*s, v[i])).collect() };
    let smooth = |name: &str, i: usize| Series {
        name: format!("{name} (training, mean of {})", a.smooth),
        points: moving_average(&column(i), a.smooth),
        dots: false,
    };
    let dots = |name: &str, i: usize| Series {
        name: format!("{name} (validation)"),
        points: valid.iter().map(|(s, v)| (*s, v[i])).collect(),
        dots: true,
    };
    let panels = vec![
        Panel { y_desc: "loss".into(), series: vec![smooth("loss", 0), dots("loss", 0)] },
        Panel { y_desc: "accuracy".into(), series: vec![smooth("accuracy", 1), dots("accuracy", 1)] },
        Panel {
            y_desc: "perplexity".into(),
            series: vec![smooth("code perplexity", 2), smooth("prob perplexity", 3), dots("code perplexity", 2)],
        },
    ];
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let svg = a.out.join("pretrain_curves.svg");
    let title = format!("pre-training: {}", run_name(&a.run));
    plot_panels(&svg, &title, "update", &panels).map_err(anyhow::Error::msg)?;
    let mut csv = format!("update,{},valid_{}\n", TRAIN_KEYS.join(","), VALID_KEYS.join(",valid_"));
    let mut evals = valid.iter().peekable();
    for (step, v) in &train {
        // An evaluation at update N is written on the row of update N (update 0 has no row).
        let e = evals.next_if(|(s, _)| s <= step).map(|(_, e)| *e);
        let e = e.map_or(",,".to_string(), |e| e.map(|x| format!("{x}")).join(","));
        csv += &format!("{step},{},{e}\n", v.map(|x| format!("{x}")).join(","));
    }
    crate::output::write_atomic(&a.out.join("pretrain_curves.csv"), csv.as_bytes())?;
    let fmt = |e: &(f64, [f64; 3])| format!("update {}: loss {:.3}, accuracy {:.1}%", e.0, e.1[0], 100.0 * e.1[1]);
    println!("{} updates, {} evaluations", train.len(), valid.len());
    if let (Some(f), Some(l)) = (valid.first(), valid.last()) {
        println!("validation: {} -> {}", fmt(f), fmt(l));
    }
    println!("wrote {} and {}", svg.display(), a.out.join("pretrain_curves.csv").display());
    Ok(())
}
