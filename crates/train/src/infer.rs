//! Using a model a user names: transcribe or identify audio with any trained run (CTC, LID,
//! joint ASR + LID, classifiers, a `train --per-language` folder) or Whisper (a pretrained folder
//! or a `seq2seq_asr` run), and score a run on a split of its corpus. The CLI (`transcribe`,
//! `identify`, `eval`) and the Python package are both thin layers over this module.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use serde::Serialize;
use speechtune_data::Split;
use speechtune_models::Precision;
use speechtune_models::whisper::pipeline::{DecodeOptions, Whisper};
use speechtune_models::whisper::tokenizer::Task;

use crate::checkpoint::{self, Loaded};
use crate::config::TaskKind;
use crate::eval::{EvalReport, decode};
use crate::prepare::{class_of, prepare, read_split};
use crate::{Error, Result, RunConfig, seq2seq};

/// `languages.json` of a `train --per-language` folder: the languages with a run below it.
pub const LANGUAGES: &str = "languages.json";

/// What to produce for each file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Text (and, for joint ASR + LID or Whisper, the language).
    Transcribe,
    /// The language or class, with its probability.
    Identify,
}

/// How to decode. Fields a model does not use must keep their defaults (a clear error otherwise).
#[derive(Clone, Debug)]
pub struct Options {
    /// Beam search with this many beams (CTC prefix beam search, or Whisper's); 1: greedy.
    pub beam: usize,
    /// Whisper: the spoken language (code, English name or ISO 639-3); `None`: detected.
    pub language: Option<String>,
    /// Whisper: transcribe, or translate into English.
    pub task: Task,
    /// Whisper: detect among these languages only.
    pub languages: Vec<String>,
    /// Whisper: at most this many new tokens per file.
    pub max_new_tokens: usize,
    /// A `train --per-language` folder: use this language's model for every file.
    pub lang: Option<String>,
    /// A `train --per-language` folder: pick each file's language with this LID run.
    pub lid: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            beam: 1,
            language: None,
            task: Task::Transcribe,
            languages: Vec::new(),
            max_new_tokens: 440,
            lang: None,
            lid: None,
        }
    }
}

/// The answer for one file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Output {
    /// The transcript (`Transcribe`).
    pub text: Option<String>,
    /// The language or class: predicted by the model, detected by Whisper, or the language whose
    /// model transcribed the file in a per-language folder.
    pub label: Option<String>,
    /// Its probability, where the model gives one.
    pub probability: Option<f64>,
    /// Whisper: the generated tokens (with the special tokens, ending in end-of-text).
    pub tokens: Vec<u32>,
}

enum Kind {
    Whisper(Box<Whisper>),
    Run(Box<Loaded>),
    PerLanguage { languages: Vec<String>, models: HashMap<String, Loaded>, lid: Option<(PathBuf, Box<Loaded>)> },
}

/// A model ready to transcribe or identify: see [`Recognizer::open`].
pub struct Recognizer {
    dir: PathBuf,
    kind: Kind,
    precision: Precision,
}

/// A pretrained Whisper folder (not a training run): config.json says whisper.
fn is_whisper_dir(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else { return false };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return false };
    v.get("model_type").and_then(|t| t.as_str()) == Some("whisper") && !dir.join("config.toml").is_file()
}

/// Whether `run` is a fine-tuned Whisper (`seq2seq_asr`) run or checkpoint.
pub fn is_seq2seq_run(run: &Path) -> bool {
    let Ok(dir) = checkpoint::resolve(run) else { return false };
    RunConfig::load(&dir.join("config.toml"), &[]).is_ok_and(|c| c.task.kind == TaskKind::Seq2seqAsr)
}

/// The languages of a per-language folder, if `run` is one.
pub fn per_language(run: &Path) -> Result<Option<Vec<String>>> {
    let path = run.join(LANGUAGES);
    if !path.is_file() {
        return Ok(None);
    }
    let bad = |reason: String| Error::Config { path: path.clone(), reason };
    let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
    Ok(Some(serde_json::from_str(&text).map_err(|e| bad(format!("expected a list of languages: {e}")))?))
}

impl Recognizer {
    /// A run folder (its `best/`, else its latest checkpoint), a checkpoint folder, a
    /// `train --per-language` folder, a pretrained Whisper folder or a Hub id of one.
    /// The frozen projections' products run in `precision`.
    pub fn open(run: &Path, device: &Device, precision: Precision) -> Result<Self> {
        let dir = speechtune_models::hub::resolve(run)?;
        let kind = if is_whisper_dir(&dir) {
            let mut w = Whisper::load(&dir, device)?;
            w.model.set_precision(precision);
            Kind::Whisper(Box::new(w))
        } else if is_seq2seq_run(&dir) {
            let mut w = seq2seq::load(&dir, device, true)?.1;
            w.model.set_precision(precision);
            Kind::Whisper(Box::new(w))
        } else if let Some(languages) = per_language(&dir)? {
            Kind::PerLanguage { languages, models: HashMap::new(), lid: None }
        } else {
            Kind::Run(Box::new(checkpoint::load_for_inference(&dir, device, precision)?))
        };
        Ok(Self { dir, kind, precision })
    }

    /// The folder the model was read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The Whisper model, when this is one.
    pub fn whisper(&self) -> Option<&Whisper> {
        match &self.kind {
            Kind::Whisper(w) => Some(w),
            _ => None,
        }
    }

    /// One output per waveform (16 kHz mono).
    pub fn run(&mut self, mode: Mode, waves: &[Vec<f32>], o: &Options, device: &Device) -> Result<Vec<Output>> {
        let dir = self.dir.display().to_string();
        let refuse = |what: &str, why: String| Err(Error::Unsupported(format!("{what}: {why}")));
        let whisper_only = o.language.is_some() || !o.languages.is_empty() || o.task != Task::Transcribe;
        let precision = self.precision;
        match &mut self.kind {
            Kind::Whisper(w) => {
                if o.lang.is_some() || o.lid.is_some() {
                    return refuse(
                        "lang and lid (--lang, --lid)",
                        "they choose among the runs of a `train --per-language` folder; for Whisper give language (--language)".into(),
                    );
                }
                whisper(w, mode, waves, o, device)
            }
            _ if whisper_only => refuse(
                "language, languages and task (--language, --languages, --task)",
                format!("they are for Whisper (a pretrained folder or a seq2seq_asr run); {dir} is a training run"),
            ),
            Kind::PerLanguage { languages, models, lid } => {
                if mode == Mode::Identify {
                    return refuse(
                        "identify",
                        format!("{dir} holds one model per language: identify with a LID run instead"),
                    );
                }
                let mut out = Vec::with_capacity(waves.len());
                for wave in waves {
                    let lang = match (&o.lang, &o.lid) {
                        (Some(l), _) => l.clone(),
                        (None, Some(path)) => {
                            if lid.as_ref().is_none_or(|(p, _)| p != path) {
                                *lid = Some((
                                    path.clone(),
                                    Box::new(checkpoint::load_for_inference(path, device, precision)?),
                                ));
                            }
                            let m = &lid.as_ref().expect("just loaded").1;
                            one(m, wave, 1, device)?.label.ok_or_else(|| {
                                Error::Unsupported(format!("{}: the LID run gave no language", path.display()))
                            })?
                        }
                        (None, None) => {
                            return refuse(
                                &dir,
                                format!(
                                    "holds one model per language ({}): choose one with lang (--lang) or a LID run with lid (--lid)",
                                    languages.join(", ")
                                ),
                            );
                        }
                    };
                    if !languages.contains(&lang) {
                        return refuse(&dir, format!("no model for language {lang} (it has {})", languages.join(", ")));
                    }
                    if !models.contains_key(&lang) {
                        let dir = self.dir.join(&lang);
                        models.insert(lang.clone(), checkpoint::load_for_inference(&dir, device, precision)?);
                    }
                    let mut p = one(&models[&lang], wave, o.beam, device)?;
                    p.label = Some(lang);
                    out.push(p);
                }
                Ok(out)
            }
            _ if o.lang.is_some() || o.lid.is_some() => refuse(
                "lang and lid (--lang, --lid)",
                format!("they choose among the runs of a `train --per-language` folder; {dir} is one run"),
            ),
            Kind::Run(m) => {
                let kind = m.cfg.task.kind;
                match mode {
                    Mode::Transcribe if !kind.has_ctc() => {
                        return refuse(
                            &dir,
                            format!("this run ({kind:?}) has no CTC head: identify instead of transcribing"),
                        );
                    }
                    Mode::Identify if kind == TaskKind::Asr => {
                        return refuse(
                            &dir,
                            "this run (asr) has no language or class output: transcribe instead of identifying".into(),
                        );
                    }
                    _ => {}
                }
                let mut out = Vec::with_capacity(waves.len());
                for wave in waves {
                    let mut p = one(m, wave, o.beam, device)?;
                    if mode == Mode::Identify {
                        p.text = None;
                    }
                    out.push(p);
                }
                Ok(out)
            }
        }
    }
}

/// A trained run on one file.
fn one(m: &Loaded, wave: &[f32], beam: usize, device: &Device) -> Result<Output> {
    let out = m.model.forward(m.frontend.prepare(&[wave.to_vec()], device)?, None, false)?;
    let p = decode(&out, 0, m.cfg.task.kind, &m.vocab, &m.classes, beam);
    Ok(Output { text: p.text, label: p.class, probability: p.probability.map(f64::from), tokens: Vec::new() })
}

/// Whisper on a batch of files.
fn whisper(w: &Whisper, mode: Mode, waves: &[Vec<f32>], o: &Options, device: &Device) -> Result<Vec<Output>> {
    let options =
        DecodeOptions { language: o.language.clone(), task: o.task, beams: o.beam, max_new_tokens: o.max_new_tokens };
    let found = |found: Vec<Vec<(String, f64)>>| found.into_iter().map(|mut l| l.swap_remove(0));
    Ok(match mode {
        Mode::Identify => found(w.identify(&w.encode(waves, device)?, &o.languages)?)
            .map(|(l, p)| Output { text: None, label: Some(l), probability: Some(p), tokens: Vec::new() })
            .collect(),
        Mode::Transcribe => {
            let transcripts = if o.language.is_none() && !o.languages.is_empty() {
                // Detect among the given languages only, then decode each file in its own.
                let enc = w.encode(waves, device)?;
                let mut out = Vec::with_capacity(waves.len());
                for (wave, (l, _)) in waves.iter().cloned().zip(found(w.identify(&enc, &o.languages)?)) {
                    let o = DecodeOptions { language: Some(l), ..options.clone() };
                    out.push(w.transcribe(&[wave], &o, device)?.remove(0));
                }
                out
            } else {
                w.transcribe(waves, &options, device)?
            };
            transcripts
                .into_iter()
                .map(|t| Output {
                    text: Some(t.text),
                    label: Some(t.language),
                    probability: t.detected_probability,
                    tokens: t.tokens,
                })
                .collect()
        }
    })
}

/// The result of [`evaluate`]: the scores and where they were written.
pub struct Evaluation {
    /// The checkpoint folder scored.
    pub dir: PathBuf,
    pub report: EvalReport,
    /// `eval_{split}.json` (the report) and `predictions_{split}.tsv` (one line per utterance).
    pub json: PathBuf,
    pub predictions: PathBuf,
    /// Characters of the references outside the vocabulary (scored as `<unk>`), and examples.
    pub unknown_characters: usize,
    pub unknown_examples: String,
}

/// Score a run (or checkpoint) on `split` of its corpus, or of the corpus in `data`; writes
/// `eval_{split}.json` and `predictions_{split}.tsv` next to the checkpoint.
/// The frozen projections' products run in `precision`.
pub fn evaluate(
    run: &Path,
    split: Split,
    data: Option<&Path>,
    beam: usize,
    device: &Device,
    precision: Precision,
) -> Result<Evaluation> {
    let reading = |cfg: &RunConfig, e: Error| Error::Config {
        path: cfg.data.root.clone(),
        reason: format!("reading the {} split: {e}", split.name()),
    };
    let mut rows = Vec::new();
    let (dir, report, unknown) = if is_seq2seq_run(run) {
        let (mut cfg, mut whisper, dir) = seq2seq::load(run, device, true)?;
        whisper.model.set_precision(precision);
        if let Some(d) = data {
            cfg.data.root = d.to_path_buf();
        }
        let set = seq2seq::read_prepared(split, &cfg, &whisper).map_err(|e| reading(&cfg, e))?;
        rows.push("id\tlang\treference\thypothesis".to_string());
        let report = seq2seq::evaluate(&whisper.model, &whisper.processor, &set, &cfg, 0, beam, device, |i, hyp| {
            let u = &set.utts[i];
            rows.push(format!("{}\t{}\t{}\t{hyp}", u.id, u.lang.as_deref().unwrap_or("-"), set.texts[i]));
        })?;
        (dir, report, (set.unknown_characters, set.unknown_examples.iter().collect()))
    } else {
        let loaded = checkpoint::load_for_inference(run, device, precision)?;
        let mut cfg = loaded.cfg.clone();
        if let Some(d) = data {
            cfg.data.root = d.to_path_buf();
        }
        let utts = read_split(split, &cfg).map_err(|e| reading(&cfg, e))?;
        let set = prepare(utts, &cfg, &loaded.vocab, &loaded.classes, None);
        rows.push("id\tlang\treference\thypothesis\tclass\tpredicted".to_string());
        let kind = cfg.task.kind;
        let report = crate::eval::evaluate(
            &loaded.model,
            &loaded.frontend,
            &set,
            &cfg,
            &loaded.vocab,
            &loaded.classes,
            0,
            beam,
            device,
            |i, p| {
                let u = &set.utts[i];
                rows.push(format!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    u.id,
                    u.lang.as_deref().unwrap_or("-"),
                    set.texts[i],
                    p.text.as_deref().unwrap_or(""),
                    class_of(u, kind),
                    p.class.as_deref().unwrap_or("")
                ));
            },
        )?;
        (loaded.dir, report, (set.unknown_characters, set.unknown_examples.iter().collect()))
    };
    let json = dir.join(format!("eval_{}.json", split.name()));
    let text = serde_json::to_string_pretty(&report).map_err(|e| Error::Unsupported(e.to_string()))?;
    speechtune_models::weights::write_atomic(&json, text.as_bytes())?;
    let predictions = dir.join(format!("predictions_{}.tsv", split.name()));
    speechtune_models::weights::write_atomic(&predictions, (rows.join("\n") + "\n").as_bytes())?;
    Ok(Evaluation { dir, report, json, predictions, unknown_characters: unknown.0, unknown_examples: unknown.1 })
}
