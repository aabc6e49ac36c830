//! `speechtune features MODEL_DIR AUDIO... (--out FILE | --out-dir DIR)`

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use speechtune_models::Upstream;
use speechtune_models::burn::prelude::*;

use crate::output::write_safetensors;

#[derive(clap::Args)]
pub struct Args {
    /// Hugging Face model directory (config.json + model.safetensors), or builtin:tiny-pretrained.
    pub model_dir: PathBuf,
    /// Audio files (wav, flac, ogg, mp3, m4a); resampled to 16 kHz mono.
    #[arg(required = true)]
    pub audio: Vec<PathBuf>,
    /// Output file, for a single audio file.
    #[arg(long, conflicts_with = "out_dir")]
    pub out: Option<PathBuf>,
    /// Output folder: one `STEM.safetensors` per audio file.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Whisper only: features of the audio alone instead of a padded 30-s window (non-standard;
    /// the model was trained on padded windows).
    #[arg(long)]
    pub unpadded: bool,
    /// Whose `output_hidden_states` to reproduce: transformers 4 (the default; the last hidden
    /// state of a pre-LN encoder — wav2vec2-large/XLS-R, HuBERT-large, WavLM-large — after the
    /// final layer norm) or 5 (before it). Other models are the same under both.
    #[arg(long, default_value_t = 4)]
    pub transformers: u32,
    /// cpu; cuda / cuda:N or vulkan / vulkan:N in a build with that feature (default: its GPU).
    #[arg(long)]
    pub device: Option<String>,
    /// Mixed precision: `bf16` runs the frozen projections' matrix products with bf16 inputs and
    /// f32 sums (fast on CPUs with AMX or AVX512_BF16), `f32` (the default) runs everything in f32.
    #[arg(long, default_value = "f32")]
    pub precision: speechtune_models::Precision,
}

pub fn run(args: Args) -> Result<()> {
    let targets: Vec<(PathBuf, PathBuf)> = match (&args.out, &args.out_dir) {
        (Some(out), None) => {
            if args.audio.len() != 1 {
                bail!("--out takes one audio file; use --out-dir DIR for {} files", args.audio.len());
            }
            vec![(args.audio[0].clone(), out.clone())]
        }
        (None, Some(dir)) => {
            let mut seen = HashMap::new();
            let mut targets = Vec::new();
            for a in &args.audio {
                let stem = a.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "audio".into());
                if let Some(prev) = seen.insert(stem.clone(), a.clone()) {
                    bail!("{} and {} would both write {stem}.safetensors", prev.display(), a.display());
                }
                targets.push((a.clone(), dir.join(format!("{stem}.safetensors"))));
            }
            targets
        }
        _ => bail!("give --out FILE.safetensors (one audio file) or --out-dir DIR"),
    };
    let device = speechtune_models::parse_device(args.device.as_deref())?;
    let mut up = Upstream::open(&args.model_dir, &device)
        .with_context(|| format!("loading model from {}", args.model_dir.display()))?;
    up.model.hidden_states_like_transformers(args.transformers)?;
    up.model.set_precision(args.precision);
    if args.unpadded {
        up.frontend = up.frontend.clone().unpadded();
    }
    for (audio, out) in &targets {
        extract(&up, &args.model_dir, audio, out, &device)?;
    }
    Ok(())
}

fn extract(up: &Upstream, model_dir: &Path, audio: &Path, out: &Path, device: &Device) -> Result<()> {
    let wave = speechtune_audio::load_mono_16k(audio)?;
    let output = up
        .forward_waves(std::slice::from_ref(&wave), device)
        .with_context(|| format!("running on {}", audio.display()))?;
    let frames = output.frame_lengths[0];
    let mut tensors = Vec::with_capacity(output.hidden_states.len());
    for (i, h) in output.hidden_states.iter().enumerate() {
        let [_, _, dim] = h.dims();
        let v: Vec<f32> =
            h.clone().narrow(1, 0, frames).into_data().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        tensors.push((format!("hidden_states.{i}"), vec![frames, dim], v));
    }
    let metadata = HashMap::from([
        ("model_dir".to_string(), model_dir.display().to_string()),
        ("model_type".to_string(), up.config.model_type().to_string()),
        ("audio".to_string(), audio.display().to_string()),
        ("samples_16k".to_string(), wave.len().to_string()),
        ("samples_per_frame".to_string(), up.model.downsampling().to_string()),
    ]);
    write_safetensors(out, &tensors, metadata)?;
    eprintln!(
        "{} → {} ({} hidden states, {} frames × {})",
        audio.display(),
        out.display(),
        tensors.len(),
        frames,
        tensors[0].1[1]
    );
    Ok(())
}
