//! `speechtune transcribe RUN_DIR AUDIO...` and `speechtune identify RUN_DIR AUDIO...`: run a
//! trained model on audio files (any format the decoder reads, any rate, mixed to mono 16 kHz).
//! One tab-separated line per file: the path, then the transcript (and the language read from
//! the first token for joint ASR + LID), or the predicted class and its probability. A pretrained
//! Whisper folder (`WhisperForConditionalGeneration` with its tokenizer) works directly: it
//! decodes (greedy or beam search) and identifies languages zero-shot, and so does a Whisper
//! fine-tuned by a `seq2seq_asr` run.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use speechtune_models::whisper::tokenizer::Task;
pub use speechtune_train::infer::Mode;
use speechtune_train::infer::{Options, Recognizer};

#[derive(clap::Args)]
pub struct Args {
    /// A run folder (uses best/, else the latest checkpoint), a checkpoint folder, or a
    /// pretrained Whisper folder (config.json, weights, tokenizer).
    pub run: PathBuf,
    #[arg(required = true)]
    pub audio: Vec<PathBuf>,
    /// Beam search with this many beams (CTC prefix beam search, or Whisper's); 1: greedy.
    #[arg(long, default_value_t = 1)]
    pub beam: usize,
    /// Whisper: the spoken language (a code such as `de`, a name, or ISO 639-3 such as `deu`);
    /// without it, detected per file.
    #[arg(long)]
    pub language: Option<String>,
    /// Whisper: transcribe, or translate into English.
    #[arg(long, value_enum, default_value = "transcribe")]
    pub task: WhisperTask,
    /// Whisper `identify`: choose among these languages only (comma-separated, e.g. eng,deu,fra).
    #[arg(long, value_delimiter = ',')]
    pub languages: Vec<String>,
    /// Whisper: at most this many new tokens per file.
    #[arg(long, default_value_t = 440)]
    pub max_new_tokens: usize,
    /// Whisper: files decoded together.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Whisper `transcribe`: also write the decoder's logits along each transcript (teacher
    /// forced on the generated tokens: `logits.N` `[tokens, vocab]` and `tokens.N` for the N-th
    /// file) to this safetensors file, to compare with transformers' `model(input_features,
    /// decoder_input_ids=tokens).logits`.
    #[arg(long)]
    pub logits: Option<PathBuf>,
    /// cpu; cuda / cuda:N or vulkan / vulkan:N in a build with that feature (default: its GPU).
    #[arg(long)]
    pub device: Option<String>,
    /// Mixed precision: `bf16` runs the frozen projections' matrix products with bf16 inputs and
    /// f32 sums (fast on CPUs with AMX or AVX512_BF16), `f32` (the default) runs everything in f32.
    #[arg(long, default_value = "f32")]
    pub precision: speechtune_models::Precision,
    /// For a run trained with `train --per-language` (one model per language, e.g. S3-Router
    /// masks over shared weights): use this language's model for every file.
    #[arg(long, conflicts_with = "lid")]
    pub lang: Option<String>,
    /// For a per-language run: pick each file's language with this LID run (a run folder of a
    /// `lid`, `ctc_plus_lid` or `joint_asr_lid` model).
    #[arg(long)]
    pub lid: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum WhisperTask {
    Transcribe,
    Translate,
}

pub fn run(args: Args, mode: Mode) -> Result<()> {
    let device: Device = speechtune_models::parse_device(args.device.as_deref())?;
    let mut model = Recognizer::open(&args.run, &device, args.precision)
        .with_context(|| format!("loading {}", args.run.display()))?;
    if args.logits.is_some() && mode == Mode::Identify {
        bail!("--logits is for `speechtune transcribe` (the logits along each transcript)");
    }
    if args.logits.is_some() && model.whisper().is_none() {
        bail!("--logits is for Whisper (a pretrained folder or a seq2seq_asr run); {} is neither", args.run.display());
    }
    let options = Options {
        beam: args.beam,
        language: args.language.clone(),
        task: match args.task {
            WhisperTask::Transcribe => Task::Transcribe,
            WhisperTask::Translate => Task::Translate,
        },
        languages: args.languages.clone(),
        max_new_tokens: args.max_new_tokens,
        lang: args.lang.clone(),
        lid: args.lid.clone(),
    };
    // Whisper decodes `--batch` files together (it pads every file to its window); a trained
    // run goes file by file.
    let batch = if model.whisper().is_some() { args.batch.max(1) } else { 1 };
    let mut logits = Vec::new();
    for paths in args.audio.chunks(batch) {
        let mut waves = Vec::with_capacity(paths.len());
        for path in paths {
            waves.push(speechtune_audio::load_mono_16k(path).with_context(|| format!("reading {}", path.display()))?);
        }
        let outputs = model.run(mode, &waves, &options, &device)?;
        if args.logits.is_some() {
            let whisper = model.whisper().expect("checked above");
            whisper_logits(whisper, &waves, &outputs, &mut logits, &device)?;
        }
        for (path, o) in paths.iter().zip(outputs) {
            let mut line = vec![path.display().to_string()];
            match mode {
                Mode::Transcribe => {
                    line.push(o.text.unwrap_or_default());
                    line.extend(o.label);
                }
                Mode::Identify => {
                    line.push(o.label.unwrap_or_default());
                    line.extend(o.probability.map(|x| format!("{x:.3}")));
                }
            }
            println!("{}", line.join("\t"));
        }
    }
    if let Some(path) = &args.logits {
        speechtune_models::weights::write_safetensors(path, &logits, Default::default())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The decoder's logits along each generated transcript (teacher forced on its tokens), as
/// `logits.N` and `tokens.N` for the N-th file.
fn whisper_logits(
    whisper: &speechtune_models::whisper::pipeline::Whisper,
    waves: &[Vec<f32>],
    outputs: &[speechtune_train::infer::Output],
    logits: &mut Vec<(String, Vec<usize>, Vec<f32>)>,
    device: &Device,
) -> Result<()> {
    let enc = whisper.encode(waves, device)?;
    for (k, t) in outputs.iter().enumerate() {
        let n = logits.len() / 2;
        let tokens = &t.tokens[..t.tokens.len() - 1];
        let ids: Vec<i64> = tokens.iter().map(|&x| x as i64).collect();
        let ids =
            Tensor::<2, burn::tensor::Int>::from_data(burn::tensor::TensorData::new(ids, [1, tokens.len()]), device);
        let l = whisper.model.logits(&enc.clone().narrow(0, k, 1), ids)?;
        let [_, t_len, v] = l.dims();
        let values = l.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        logits.push((format!("logits.{n}"), vec![t_len, v], values));
        logits.push((format!("tokens.{n}"), vec![tokens.len()], tokens.iter().map(|&x| x as f32).collect()));
    }
    Ok(())
}
