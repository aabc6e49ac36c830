//! A pretrained Whisper directory ready to use: the model, its tokenizer, its front-end and its
//! `generation_config.json`; transcription or translation of audio and zero-shot language
//! identification (the distribution over language tokens at the first decoding step).

use std::path::Path;

use burn::prelude::*;
use serde::Deserialize;

use super::decoder::select_rows;
use super::seq2seq::{GenerateOptions, WhisperSeq2Seq};
use super::tokenizer::{Task, WhisperTokenizer};
use crate::augment::Perturb;
use crate::config::ModelConfig;
use crate::frontend::{FrontEnd, ModelInput};
use crate::weights::Weights;
use crate::{Error, Result};

/// The fields of `generation_config.json` decoding uses (absent file or fields: none).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationConfig {
    #[serde(default)]
    pub suppress_tokens: Vec<u32>,
    #[serde(default)]
    pub begin_suppress_tokens: Vec<u32>,
    pub max_length: Option<usize>,
}

/// How to decode one batch.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// A language (Whisper code, English name or ISO 639-3); `None`: detected per file.
    pub language: Option<String>,
    pub task: Task,
    pub beams: usize,
    pub max_new_tokens: usize,
}

/// One decoded file.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    pub text: String,
    /// Whisper's language code, and whether it was detected (and its probability).
    pub language: String,
    pub detected_probability: Option<f64>,
    pub tokens: Vec<u32>,
}

/// A pretrained Whisper: the model and what turns audio and text into its inputs and its
/// outputs into text.
pub struct Whisper {
    pub model: WhisperSeq2Seq,
    pub processor: WhisperProcessor,
}

/// Everything of a Whisper directory but the weights (as transformers' `WhisperProcessor`, plus
/// the generation config): the tokenizer, the log-mel front-end and `generation_config.json`.
/// Its methods take the model, so a model being fine-tuned decodes with them too.
#[derive(Clone)]
pub struct WhisperProcessor {
    pub tokenizer: WhisperTokenizer,
    pub frontend: FrontEnd,
    pub generation: GenerationConfig,
}

impl Whisper {
    /// Load a `WhisperForConditionalGeneration` directory (config, weights, tokenizer,
    /// preprocessor and generation configs).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = ModelConfig::from_dir(dir)?;
        let ModelConfig::Whisper(cfg) = &config else {
            return Err(Error::Unsupported {
                path: dir.join("config.json"),
                what: "a model other than Whisper for sequence-to-sequence decoding".into(),
            });
        };
        let mut weights = Weights::open_dir(dir)?;
        let model = WhisperSeq2Seq::load(cfg, &mut weights, device)?;
        let processor = WhisperProcessor::load(dir, &config)?;
        if processor.tokenizer.vocab_size() > model.decoder.vocab_size() {
            return Err(Error::Input(format!(
                "{}: the tokenizer has {} tokens, the model's vocabulary {}",
                dir.display(),
                processor.tokenizer.vocab_size(),
                model.decoder.vocab_size()
            )));
        }
        Ok(Self { model, processor })
    }

    /// See [`WhisperProcessor::encode`].
    pub fn encode(&self, waves: &[Vec<f32>], device: &Device) -> Result<Tensor<3>> {
        self.processor.encode(&self.model, waves, device)
    }

    /// See [`WhisperProcessor::identify`].
    pub fn identify(&self, encoder_out: &Tensor<3>, only: &[String]) -> Result<Vec<Vec<(String, f64)>>> {
        self.processor.identify(&self.model, encoder_out, only)
    }

    /// See [`WhisperProcessor::transcribe`].
    pub fn transcribe(&self, waves: &[Vec<f32>], o: &DecodeOptions, device: &Device) -> Result<Vec<Transcript>> {
        self.processor.transcribe(&self.model, waves, o, device)
    }
}

impl WhisperProcessor {
    /// The tokenizer, front-end and generation config of a Whisper directory.
    pub fn load(dir: &Path, config: &ModelConfig) -> Result<Self> {
        let tokenizer = WhisperTokenizer::load(dir)?;
        let frontend = FrontEnd::from_dir(dir, config)?;
        let gen_path = dir.join("generation_config.json");
        let generation = if gen_path.is_file() {
            let text = std::fs::read(&gen_path).map_err(|source| Error::Io { path: gen_path.clone(), source })?;
            serde_json::from_slice(&text).map_err(|source| Error::Config { path: gen_path.clone(), source })?
        } else {
            GenerationConfig::default()
        };
        Ok(Self { tokenizer, frontend, generation })
    }

    /// The encoder output of `model` for a batch of 16-kHz waveforms.
    pub fn encode(&self, model: &WhisperSeq2Seq, waves: &[Vec<f32>], device: &Device) -> Result<Tensor<3>> {
        self.encode_perturbed(model, waves, device, None)
    }

    /// [`WhisperProcessor::encode`] for training: SpecAugment on the log-mel input (time masks
    /// within each item's audio, mel-bin masks) and LayerDrop of encoder layers, as `perturb`
    /// draws them.
    pub fn encode_perturbed(
        &self,
        model: &WhisperSeq2Seq,
        waves: &[Vec<f32>],
        device: &Device,
        perturb: Option<&mut Perturb>,
    ) -> Result<Tensor<3>> {
        // One window per file: longer audio would be cut silently by the front-end.
        if let FrontEnd::LogMel { config, .. } = &self.frontend
            && let Some(n) = config.n_samples
            && let Some(long) = waves.iter().find(|w| w.len() > n)
        {
            return Err(Error::Input(format!(
                "audio of {:.1} s is longer than Whisper's {:.0}-s window; split it first (e.g. `speechtune preprocess segment`)",
                long.len() as f64 / 16000.0,
                n as f64 / 16000.0
            )));
        }
        let ModelInput::LogMel { features, lengths } = self.frontend.prepare(waves, device)? else {
            return Err(Error::Input("Whisper takes log-mel input".into()));
        };
        let unpadded = matches!(&self.frontend, FrontEnd::LogMel { config, .. } if config.n_samples.is_none());
        let Some(perturb) = perturb else { return model.encode(features, unpadded) };
        let hop = match &self.frontend {
            FrontEnd::LogMel { config, .. } => config.hop_length,
            FrontEnd::Waveform { .. } => 160,
        };
        let mel_lengths: Vec<usize> = lengths.iter().map(|&l| l.div_ceil(hop)).collect();
        let mut hidden = model.encoder.forward_perturbed(features, unpadded, &mel_lengths, Some(perturb))?;
        hidden.pop().ok_or_else(|| Error::Input("the encoder returned no hidden state".into()))
    }

    /// Zero-shot language identification: per item, the languages (Whisper code, probability)
    /// from most to least likely, the softmax over the language tokens' logits after
    /// `<|startoftranscript|>`; `only` restricts it to those languages (any spelling
    /// [`WhisperTokenizer::language`] accepts).
    pub fn identify(
        &self,
        model: &WhisperSeq2Seq,
        encoder_out: &Tensor<3>,
        only: &[String],
    ) -> Result<Vec<Vec<(String, f64)>>> {
        let candidates: Vec<(String, u32)> = if only.is_empty() {
            self.tokenizer.languages().to_vec()
        } else {
            let mut c = Vec::new();
            for name in only {
                let id = self.tokenizer.language(name)?;
                // `de,deu` name one language: it is one candidate.
                if c.iter().any(|(_, known)| *known == id) {
                    continue;
                }
                c.push((self.tokenizer.language_code(id).unwrap_or_default().to_string(), id));
            }
            c
        };
        if candidates.is_empty() {
            return Err(Error::Input("no language tokens to choose from".into()));
        }
        let sot = self.tokenizer.special("<|startoftranscript|>")?;
        let log_probs = model.next_token_log_probs(encoder_out, &[sot])?;
        Ok(log_probs
            .into_iter()
            .map(|lp| {
                let max = candidates.iter().map(|c| lp[c.1 as usize] as f64).fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = candidates.iter().map(|c| (lp[c.1 as usize] as f64 - max).exp()).sum();
                let mut p: Vec<(String, f64)> =
                    candidates.iter().map(|c| (c.0.clone(), (lp[c.1 as usize] as f64 - max).exp() / sum)).collect();
                p.sort_by(|a, b| b.1.total_cmp(&a.1));
                p
            })
            .collect())
    }

    /// Transcribe (or translate) a batch of 16-kHz waveforms with `model`.
    pub fn transcribe(
        &self,
        model: &WhisperSeq2Seq,
        waves: &[Vec<f32>],
        o: &DecodeOptions,
        device: &Device,
    ) -> Result<Vec<Transcript>> {
        let enc = self.encode(model, waves, device)?;
        // The language of each item (Whisper code, token id, detection probability): given, or detected.
        let langs: Vec<(String, u32, Option<f64>)> = match &o.language {
            Some(name) => {
                let id = self.tokenizer.language(name)?;
                let code = self.tokenizer.language_code(id).unwrap_or_default().to_string();
                vec![(code, id, None); waves.len()]
            }
            None => {
                let mut out = Vec::with_capacity(waves.len());
                for p in self.identify(model, &enc, &[])? {
                    let id = self.tokenizer.language(&p[0].0)?;
                    out.push((p[0].0.clone(), id, Some(p[0].1)));
                }
                out
            }
        };
        let eos = self.tokenizer.special("<|endoftext|>")?;
        // Items with the same language decode together (they share the forced prefix).
        let mut order: Vec<usize> = (0..waves.len()).collect();
        order.sort_by_key(|&i| langs[i].1);
        let mut results: Vec<Option<Transcript>> = vec![None; waves.len()];
        for group in order.chunk_by(|&a, &b| langs[a].1 == langs[b].1) {
            let prefix = self.tokenizer.prefix(Some(langs[group[0]].1), Some(o.task), false)?;
            let g = GenerateOptions {
                prefix: prefix.clone(),
                max_new_tokens: o.max_new_tokens,
                eos,
                pad: eos,
                suppress: self.generation.suppress_tokens.clone(),
                begin_suppress: self.generation.begin_suppress_tokens.clone(),
                beams: o.beams.max(1),
                length_penalty: 1.0,
            };
            let seqs = model.generate(&select_rows(enc.clone(), group), &g)?;
            for (&i, seq) in group.iter().zip(seqs) {
                let text = self.tokenizer.decode(&seq[prefix.len()..], true)?.trim().to_string();
                let (language, _, detected_probability) = langs[i].clone();
                results[i] = Some(Transcript { text, language, detected_probability, tokens: seq });
            }
        }
        // Every item is in exactly one group.
        Ok(results.into_iter().flatten().collect())
    }
}
