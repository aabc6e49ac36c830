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
use speechtune_train::checkpoint;
use speechtune_train::eval::decode;

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
    /// For a run trained with `train --per-language` (one model per language, e.g. S3-Router
    /// masks over shared weights): use this language's model for every file.
    #[arg(long, conflicts_with = "lid")]
    pub lang: Option<String>,
    /// For a per-language run: pick each file's language with this LID run (a run folder of a
    /// `lid`, `ctc_plus_lid` or `joint_asr_lid` model).
    #[arg(long)]
    pub lid: Option<PathBuf>,
}

/// `languages.json` of a `train --per-language` folder: the languages with a run below it.
pub const LANGUAGES: &str = "languages.json";

/// The languages of a per-language folder, if `run` is one.
pub fn per_language(run: &std::path::Path) -> Result<Option<Vec<String>>> {
    let path = run.join(LANGUAGES);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?))
}

#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    Transcribe,
    Identify,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum WhisperTask {
    Transcribe,
    Translate,
}

/// A pretrained Whisper folder (not a training run): config.json says whisper, and it has a
/// decoder to generate with.
fn is_whisper_dir(dir: &std::path::Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else { return false };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return false };
    v.get("model_type").and_then(|t| t.as_str()) == Some("whisper") && !dir.join("config.toml").is_file()
}

/// Whether `run` is a fine-tuned Whisper (`seq2seq_asr`) run or checkpoint.
pub fn is_seq2seq_run(run: &std::path::Path) -> bool {
    let Ok(dir) = checkpoint::resolve(run) else { return false };
    speechtune_train::RunConfig::load(&dir.join("config.toml"), &[])
        .is_ok_and(|c| c.task.kind == speechtune_train::config::TaskKind::Seq2seqAsr)
}

pub fn run(mut args: Args, mode: Mode) -> Result<()> {
    let device: Device = speechtune_models::parse_device(args.device.as_deref())?;
    args.run = speechtune_models::hub::resolve(&args.run)?;
    if is_whisper_dir(&args.run) {
        let whisper = speechtune_models::whisper::pipeline::Whisper::load(&args.run, &device)
            .with_context(|| format!("loading {}", args.run.display()))?;
        return run_whisper(&args, mode, &whisper, &device);
    }
    if is_seq2seq_run(&args.run) {
        let (_, whisper, _) = speechtune_train::seq2seq::load(&args.run, &device, true)
            .with_context(|| format!("loading {}", args.run.display()))?;
        return run_whisper(&args, mode, &whisper, &device);
    }
    if args.language.is_some() || !args.languages.is_empty() {
        bail!(
            "--language and --languages are for pretrained Whisper folders; {} is a training run",
            args.run.display()
        );
    }
    if args.logits.is_some() {
        bail!("--logits is for Whisper (a pretrained folder or a seq2seq_asr run); {} is neither", args.run.display());
    }
    if let Some(languages) = per_language(&args.run)? {
        return run_per_language(&args, mode, &languages, &device);
    }
    if args.lang.is_some() || args.lid.is_some() {
        bail!(
            "--lang and --lid choose among the runs of a `train --per-language` folder; {} is one run",
            args.run.display()
        );
    }
    let loaded = checkpoint::load_for_inference(&args.run, &device)
        .with_context(|| format!("loading {}", args.run.display()))?;
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

/// Transcribe with the model of each file's language: given (`--lang`) or identified (`--lid`).
fn run_per_language(args: &Args, mode: Mode, languages: &[String], device: &Device) -> Result<()> {
    if mode == Mode::Identify {
        bail!("{} holds one model per language: identify with a LID run instead", args.run.display());
    }
    let lid = match (&args.lang, &args.lid) {
        (None, None) => bail!(
            "{} holds one model per language ({}): pass --lang LANG or --lid LID_RUN",
            args.run.display(),
            languages.join(", ")
        ),
        (_, Some(dir)) => {
            Some(checkpoint::load_for_inference(dir, device).with_context(|| format!("loading {}", dir.display()))?)
        }
        (Some(_), None) => None,
    };
    let mut models: std::collections::HashMap<String, checkpoint::Loaded> = Default::default();
    for path in &args.audio {
        let wave = speechtune_audio::load_mono_16k(path).with_context(|| format!("reading {}", path.display()))?;
        let lang = match (&args.lang, &lid) {
            (Some(l), _) => l.clone(),
            (None, Some(m)) => {
                let out = m.model.forward(m.frontend.prepare(std::slice::from_ref(&wave), device)?, None, false)?;
                decode(&out, 0, m.cfg.task.kind, &m.vocab, &m.classes, 1)
                    .class
                    .with_context(|| format!("{}: the LID run gave no language", path.display()))?
            }
            (None, None) => unreachable!("checked above"),
        };
        if !languages.contains(&lang) {
            bail!(
                "{}: no model for language {lang} in {} (it has {})",
                path.display(),
                args.run.display(),
                languages.join(", ")
            );
        }
        if !models.contains_key(&lang) {
            let dir = args.run.join(&lang);
            let m =
                checkpoint::load_for_inference(&dir, device).with_context(|| format!("loading {}", dir.display()))?;
            models.insert(lang.clone(), m);
        }
        let m = &models[&lang];
        let out = m.model.forward(m.frontend.prepare(&[wave], device)?, None, false)?;
        let p = decode(&out, 0, m.cfg.task.kind, &m.vocab, &m.classes, args.beam);
        println!("{}\t{}\t{lang}", path.display(), p.text.unwrap_or_default());
    }
    Ok(())
}

/// Transcribe or identify with a pretrained or fine-tuned Whisper, `--batch` files at a time.
fn run_whisper(
    args: &Args,
    mode: Mode,
    whisper: &speechtune_models::whisper::pipeline::Whisper,
    device: &Device,
) -> Result<()> {
    use speechtune_models::whisper::pipeline::DecodeOptions;
    use speechtune_models::whisper::tokenizer::Task;
    if args.lang.is_some() || args.lid.is_some() {
        bail!("--lang and --lid are for `train --per-language` folders; for Whisper use --language");
    }
    if args.logits.is_some() && mode == Mode::Identify {
        bail!("--logits is for `speechtune transcribe` (the logits along each transcript)");
    }
    let task = match args.task {
        WhisperTask::Transcribe => Task::Transcribe,
        WhisperTask::Translate => Task::Translate,
    };
    let options =
        DecodeOptions { language: args.language.clone(), task, beams: args.beam, max_new_tokens: args.max_new_tokens };
    let mut logits = Vec::new();
    // Files are decoded in batches (Whisper pads every file to its window, so lengths may differ).
    for paths in args.audio.chunks(args.batch.max(1)) {
        let mut waves = Vec::with_capacity(paths.len());
        for path in paths {
            waves.push(speechtune_audio::load_mono_16k(path).with_context(|| format!("reading {}", path.display()))?);
        }
        let lines: Vec<String> = match mode {
            Mode::Identify => {
                let enc = whisper.encode(&waves, device)?;
                let found = whisper.identify(&enc, &args.languages)?;
                paths.iter().zip(found).map(|(p, l)| format!("{}\t{}\t{:.3}", p.display(), l[0].0, l[0].1)).collect()
            }
            Mode::Transcribe => {
                let transcripts = if options.language.is_none() && !args.languages.is_empty() {
                    // Detect among the given languages only, then decode each file in its own.
                    let enc = whisper.encode(&waves, device)?;
                    let found = whisper.identify(&enc, &args.languages)?;
                    let mut out = Vec::with_capacity(paths.len());
                    for (wave, l) in waves.iter().cloned().zip(found) {
                        let o = DecodeOptions { language: Some(l[0].0.clone()), ..options.clone() };
                        out.push(whisper.transcribe(&[wave], &o, device)?.remove(0));
                    }
                    out
                } else {
                    whisper.transcribe(&waves, &options, device)?
                };
                if args.logits.is_some() {
                    let enc = whisper.encode(&waves, device)?;
                    for (k, t) in transcripts.iter().enumerate() {
                        let n = logits.len() / 2;
                        let tokens = &t.tokens[..t.tokens.len() - 1];
                        let ids: Vec<i64> = tokens.iter().map(|&x| x as i64).collect();
                        let ids = Tensor::<2, burn::tensor::Int>::from_data(
                            burn::tensor::TensorData::new(ids, [1, tokens.len()]),
                            device,
                        );
                        let l = whisper.model.logits(&enc.clone().narrow(0, k, 1), ids)?;
                        let [_, t_len, v] = l.dims();
                        let values = l
                            .into_data()
                            .convert::<f32>()
                            .try_into_vec::<f32>()
                            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                        logits.push((format!("logits.{n}"), vec![t_len, v], values));
                        logits.push((
                            format!("tokens.{n}"),
                            vec![tokens.len()],
                            tokens.iter().map(|&x| x as f32).collect(),
                        ));
                    }
                }
                paths
                    .iter()
                    .zip(transcripts)
                    .map(|(p, t)| format!("{}\t{}\t{}", p.display(), t.text, t.language))
                    .collect()
            }
        };
        for line in lines {
            println!("{line}");
        }
    }
    if let Some(path) = &args.logits {
        speechtune_models::weights::write_safetensors(path, &logits, Default::default())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
