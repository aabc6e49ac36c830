//! `speechtune demo`. The full demo (joint ASR + LID fine-tuning with LoRA on the embedded demo
//! corpus) needs the training engine, which is not built yet. Until then this runs what exists:
//! it loads the bundled tiny wav2vec2 checkpoint, prints its architecture and extracts hidden
//! states of a bundled recording, and says plainly that training is not available yet.

use std::path::PathBuf;

use anyhow::{Context, Result};
use speechtune_models::Upstream;

#[derive(clap::Args)]
pub struct Args {
    /// Repository root (where tests/fixtures lives).
    #[arg(long, default_value = ".")]
    pub root: PathBuf,
    /// cpu, cuda or cuda:N (default: the first GPU in a `cuda` build, else the CPU).
    #[arg(long)]
    pub device: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let model_dir = args.root.join("tests/fixtures/wav2vec2-xlsr");
    let audio = args.root.join("tests/fixtures/audio/mono16k.wav");
    let device = speechtune_models::parse_device(args.device.as_deref())?;
    let up = Upstream::load(&model_dir, &device).with_context(|| {
        format!("loading the bundled model (run from the repository root or pass --root): {}", model_dir.display())
    })?;
    println!("speechtune demo — upstream stage only\n");
    println!("model {}:\n{}", model_dir.display(), crate::inspect::describe(&up));
    let wave = speechtune_audio::load_mono_16k(&audio)?;
    let out = up.forward_waves(std::slice::from_ref(&wave), &device)?;
    println!(
        "audio {} ({:.2} s) → {} hidden states:",
        audio.display(),
        wave.len() as f64 / 16000.0,
        out.hidden_states.len()
    );
    for (i, h) in out.hidden_states.iter().enumerate() {
        let v = h.clone().into_data().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let rms = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        println!("  hidden_states.{i}: {:?}, rms {rms:.3}", h.dims());
    }
    println!("\nNot yet available: fine-tuning (joint ASR + LID with LoRA on the demo corpus), evaluation and");
    println!("the layer-weights plot. They arrive with the training engine; this demo will then run them.");
    Ok(())
}
