//! From corpus utterances to training targets: normalised text, CTC token ids, class indices.

use std::collections::BTreeSet;
use std::sync::Arc;

use speechtune_data::corpus::{Layout, fill_durations};
use speechtune_data::text::normalize;
use speechtune_data::{Problems, Split, Utterance, Vocab};

use crate::Result;
use crate::config::{RunConfig, TaskKind};

/// Utterances with their training targets.
pub struct Prepared {
    pub utts: Arc<Vec<Utterance>>,
    /// Normalised transcripts.
    pub texts: Vec<String>,
    /// CTC token ids (with the `[lang]` token first for joint ASR + LID), or for `seq2seq_asr`
    /// the Whisper token sequence (prefix, text, end token).
    pub targets: Vec<Vec<u32>>,
    /// Index into the class list (languages, or labels for `classify`); None for a class the
    /// training data did not have.
    pub classes: Vec<Option<usize>>,
    pub durations: Vec<f64>,
    /// Utterances dropped because their audio gives fewer frames than CTC needs (for
    /// `seq2seq_asr`: because their token sequence is longer than the decoder's positions).
    pub dropped_too_short: usize,
    /// Characters not in the vocabulary (mapped to `<unk>`), and which.
    pub unknown_characters: usize,
    pub unknown_examples: BTreeSet<char>,
}

impl Prepared {
    /// No utterances yet.
    pub fn empty() -> Self {
        Self {
            utts: Arc::new(Vec::new()),
            texts: Vec::new(),
            targets: Vec::new(),
            classes: Vec::new(),
            durations: Vec::new(),
            dropped_too_short: 0,
            unknown_characters: 0,
            unknown_examples: BTreeSet::new(),
        }
    }
}

/// The class of an utterance: its language, or its label for `classify` ("-" when missing).
pub fn class_of(u: &Utterance, kind: TaskKind) -> String {
    let v = if kind == TaskKind::Classify { &u.label } else { &u.lang };
    v.clone().unwrap_or_else(|| "-".into())
}

/// The sorted class names of a training set.
pub fn class_names(utts: &[Utterance], kind: TaskKind) -> Vec<String> {
    utts.iter().map(|u| class_of(u, kind)).collect::<BTreeSet<_>>().into_iter().collect()
}

/// Normalised training transcripts.
pub fn texts(utts: &[Utterance], cfg: &RunConfig) -> Vec<String> {
    utts.iter().map(|u| normalize(u.text.as_deref().unwrap_or(""), &cfg.task.text)).collect()
}

/// Targets for `utts`; with `min_frames`, CTC tasks drop utterances too short for their target.
pub fn prepare(
    utts: Vec<Utterance>,
    cfg: &RunConfig,
    vocab: &Vocab,
    classes: &[String],
    min_frames: Option<&dyn Fn(f64) -> usize>,
) -> Prepared {
    let kind = cfg.task.kind;
    let joint = kind == TaskKind::JointAsrLid;
    let mut p = Prepared::empty();
    let mut keep = Vec::new();
    for u in utts {
        let text = normalize(u.text.as_deref().unwrap_or(""), &cfg.task.text);
        let lang = u.lang.clone().unwrap_or_else(|| "-".into());
        let (ids, unk) = vocab.encode(&text, joint.then_some(lang.as_str()));
        let seconds = u.seconds().unwrap_or(0.0);
        // CTC needs a frame per token plus one between repeated tokens.
        let needed = ids.len() + ids.windows(2).filter(|w| w[0] == w[1]).count();
        if kind.has_ctc() && min_frames.is_some_and(|f| f(seconds) < needed) {
            p.dropped_too_short += 1;
            continue;
        }
        if unk > 0 {
            p.unknown_characters += unk;
            p.unknown_examples.extend(text.chars().filter(|c| vocab.id(&c.to_string()).is_none() && *c != ' '));
        }
        let class = class_of(&u, kind);
        p.classes.push(classes.iter().position(|c| *c == class));
        p.texts.push(text);
        p.targets.push(ids);
        p.durations.push(seconds);
        keep.push(u);
    }
    p.utts = Arc::new(keep);
    p
}

/// One split of the configured corpus, with durations filled in.
pub fn read_split(split: Split, cfg: &RunConfig) -> Result<Vec<Utterance>> {
    let layout = Layout::detect(&cfg.data.root)?;
    let mut problems = Problems::new(false);
    let mut utts = layout.read_split(split, &cfg.data.duration, &mut problems)?;
    if !cfg.data.languages.is_empty() {
        utts.retain(|u| u.lang.as_ref().is_some_and(|l| cfg.data.languages.contains(l)));
    }
    if let Some(p) = fill_durations(&mut utts, cfg.data.workers).into_iter().next() {
        return Err(speechtune_data::Error::Bad(p).into());
    }
    Ok(utts)
}
