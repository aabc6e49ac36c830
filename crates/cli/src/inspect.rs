//! `speechtune inspect MODEL_DIR`

use std::path::PathBuf;

use anyhow::{Context, Result};
use speechtune_models::{FrontEnd, ModelConfig, Upstream};

#[derive(clap::Args)]
pub struct Args {
    /// Hugging Face model directory (config.json + model.safetensors), or builtin:tiny-pretrained.
    pub model_dir: PathBuf,
    /// cpu; cuda / cuda:N or vulkan / vulkan:N in a build with that feature (default: its GPU).
    #[arg(long)]
    pub device: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let up = Upstream::open(&args.model_dir, &speechtune_models::parse_device(args.device.as_deref())?)
        .with_context(|| format!("loading model from {}", args.model_dir.display()))?;
    print!("{}", describe(&up));
    Ok(())
}

/// The report `inspect` prints.
pub fn describe(up: &Upstream) -> String {
    let mut s = String::new();
    let m = &up.model;
    let arch = match &up.config {
        ModelConfig::Ssl(c) => {
            let cnn = if c.layer_norm_convs() { "layer-norm CNN" } else { "group-norm CNN" };
            let tf = if c.do_stable_layer_norm { "pre-LN (stable layer norm)" } else { "post-LN" };
            let extra = if c.is_wavlm() { ", gated relative position bias" } else { "" };
            format!(
                "{} ({cnn}, {tf} transformer{extra}), {} heads, FFN {}",
                c.model_type, c.num_attention_heads, c.intermediate_size
            )
        }
        ModelConfig::Whisper(c) => format!(
            "whisper encoder ({} mel bins, {} positions), {} heads, FFN {}",
            c.num_mel_bins, c.max_source_positions, c.encoder_attention_heads, c.encoder_ffn_dim
        ),
    };
    let frontend = match &up.frontend {
        FrontEnd::Waveform { normalize } => {
            format!("16 kHz waveform, normalised: {}", if *normalize { "yes" } else { "no" })
        }
        FrontEnd::LogMel { config, .. } => format!(
            "log-mel, {} mels, n_fft {}, hop {}, window {}",
            config.n_mels,
            config.n_fft,
            config.hop_length,
            config.n_samples.map(|n| format!("{:.1} s", n as f64 / 16000.0)).unwrap_or("unpadded".into())
        ),
    };
    s += &format!("architecture   {arch}\n");
    s += &format!("layers         {} (hidden states: {})\n", m.num_layers(), m.num_layers() + 1);
    s += &format!("hidden size    {}\n", m.hidden_size());
    s += &format!(
        "frame rate     {} samples per frame ({:.1} frames/s)\n",
        m.downsampling(),
        16000.0 / m.downsampling() as f64
    );
    s += &format!("front-end      {frontend}\n");
    s += &format!("weights prefix {}\n", if up.prefix.is_empty() { "(none)" } else { &up.prefix });
    s += "parameters\n";
    let rows = m.parameter_breakdown();
    let total: usize = rows.iter().map(|r| r.1).sum();
    for (name, n) in &rows {
        s += &format!("  {name:<28} {n:>12}  {:>5.1}%\n", 100.0 * *n as f64 / total.max(1) as f64);
    }
    s += &format!("  {:<28} {total:>12}\n", "total");
    s
}
