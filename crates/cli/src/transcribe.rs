//! `speechtune transcribe RUN_DIR AUDIO...` and `speechtune identify RUN_DIR AUDIO...`: run a
//! trained model on audio files (any format the decoder reads, any rate, mixed to mono 16 kHz).
//! One tab-separated line per file: the path, then the transcript (and the language read from
//! the first token for joint ASR + LID), or the predicted class and its probability.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use speechtune_train::checkpoint;
use speechtune_train::eval::decode;

#[derive(clap::Args)]
pub struct Args {
    /// A run folder (uses best/, else the latest checkpoint) or a checkpoint folder.
    pub run: PathBuf,
    #[arg(required = true)]
    pub audio: Vec<PathBuf>,
    /// CTC prefix beam search with this many beams (1: greedy).
    #[arg(long, default_value_t = 1)]
    pub beam: usize,
    /// cpu, or cuda / cuda:N in a build with the `cuda` feature.
    #[arg(long)]
    pub device: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    Transcribe,
    Identify,
}

pub fn run(args: Args, mode: Mode) -> Result<()> {
    let device: Device = speechtune_models::parse_device(args.device.as_deref())?;
    let loaded = checkpoint::load(&args.run, &device).with_context(|| format!("loading {}", args.run.display()))?;
    let kind = loaded.cfg.task.kind;
    match mode {
        Mode::Transcribe if !kind.has_ctc() => bail!("this run ({kind:?}) has no CTC head: use `speechtune identify`"),
        Mode::Identify if kind == speechtune_train::config::TaskKind::Asr => {
            bail!("this run (asr) has no language or class output: use `speechtune transcribe`")
        }
        _ => {}
    }
    for path in &args.audio {
        let wave = speechtune_audio::load_mono_16k(path).with_context(|| format!("reading {}", path.display()))?;
        let out = loaded.model.forward(loaded.frontend.prepare(&[wave], &device)?, None, false)?;
        let p = decode(&out, 0, kind, &loaded.vocab, &loaded.classes, args.beam);
        let mut line = vec![path.display().to_string()];
        match mode {
            Mode::Transcribe => {
                line.push(p.text.unwrap_or_default());
                line.extend(p.class);
            }
            Mode::Identify => {
                line.push(p.class.unwrap_or_default());
                line.extend(p.probability.map(|x| format!("{x:.3}")));
            }
        }
        println!("{}", line.join("\t"));
    }
    Ok(())
}
