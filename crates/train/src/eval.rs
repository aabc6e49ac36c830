//! Decoding and scoring: greedy CTC or prefix beam search, the language read from the first
//! token for joint ASR + LID, classification; CER/WER (corpus and per-utterance mean),
//! accuracy, macro-F1 and the confusion matrix, overall and per language.

use std::collections::{BTreeMap, BTreeSet};

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use serde::Serialize;
use speechtune_data::{BatchPlan, Loader, LoaderOptions, Vocab, plan_batches};
use speechtune_models::FrontEnd;
use speechtune_tasks::ctc::{greedy, prefix_beam_search};
use speechtune_tasks::metrics::{AsrScore, Confusion};

use crate::Result;
use crate::config::{RunConfig, TaskKind};
use crate::model::{TaskModel, TaskOutput};
use crate::prepare::{Prepared, class_of};

/// Scores of one evaluation.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct EvalReport {
    pub step: usize,
    pub utterances: usize,
    /// Corpus-level CER and WER (total edits / total reference units), and the per-utterance
    /// mean CER that ML-SUPERB's seed reports.
    pub cer: f64,
    pub cer_per_utterance: f64,
    pub wer: f64,
    /// Classification (language or label) accuracy and macro-F1.
    pub accuracy: Option<f64>,
    pub macro_f1: Option<f64>,
    /// Per language: utterances, CER, accuracy.
    pub per_language: BTreeMap<String, LanguageScore>,
    /// Rows: truth, columns: prediction, over `confusion_labels`.
    pub confusion_labels: Vec<String>,
    pub confusion: Vec<Vec<usize>>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct LanguageScore {
    pub utterances: usize,
    pub cer: Option<f64>,
    pub wer: Option<f64>,
    pub accuracy: Option<f64>,
}

/// What the model says about one utterance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub text: Option<String>,
    /// Predicted language or label (`<none>` when joint ASR + LID emitted no language token).
    pub class: Option<String>,
    /// Its probability, for classification heads.
    pub probability: Option<f32>,
}

fn row<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default()
}

/// Decode item `k` of a batch output. `beam` ≤ 1 decodes greedily.
pub fn decode(
    out: &TaskOutput,
    k: usize,
    kind: TaskKind,
    vocab: &Vocab,
    classes: &[String],
    beam: usize,
) -> Prediction {
    let mut p = Prediction { text: None, class: None, probability: None };
    if let Some(logits) = &out.ctc_logits {
        let [_, t, v] = logits.dims();
        let lp = row(log_softmax(logits.clone().narrow(0, k, 1), 2).narrow(1, 0, out.frame_lengths[k].clamp(1, t)));
        let mut ids =
            if beam > 1 { prefix_beam_search(&lp, v, vocab.blank(), beam).0 } else { greedy(&lp, v, vocab.blank()) };
        if kind == TaskKind::JointAsrLid {
            let lang_tokens: BTreeMap<u32, String> = vocab.languages().into_iter().collect();
            // ESPnet reads the language from the first token of the hypothesis. When the
            // hypothesis does not start with one, the language token with the largest summed
            // posterior over frames (its expected count) decides; `<none>` only for a
            // vocabulary without language tokens.
            let first = ids.first().and_then(|id| lang_tokens.get(id)).cloned();
            let frames = lp.len() / v.max(1);
            let most_probable = lang_tokens
                .iter()
                .map(|(&id, l)| {
                    let expected: f32 = (0..frames).map(|f| lp[f * v + id as usize].exp()).sum();
                    (expected, l)
                })
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, l)| l.clone());
            p.class = Some(first.or(most_probable).unwrap_or_else(|| "<none>".into()));
            ids.retain(|id| !lang_tokens.contains_key(id));
        }
        p.text = Some(vocab.decode(&ids));
    }
    if let Some(logits) = &out.class_logits {
        let probs = row(softmax(logits.clone().narrow(0, k, 1), 1));
        let (best, prob) = probs.iter().enumerate().fold((0, f32::MIN), |m, (j, &x)| if x > m.1 { (j, x) } else { m });
        p.class = classes.get(best).cloned();
        p.probability = Some(prob);
    }
    p
}

/// Evaluate `set` (any split) at `step`; `beam` ≤ 1 decodes greedily. Calls `each` with every
/// utterance's index and prediction.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &TaskModel,
    frontend: &FrontEnd,
    set: &Prepared,
    cfg: &RunConfig,
    vocab: &Vocab,
    classes: &[String],
    step: usize,
    beam: usize,
    device: &Device,
    mut each: impl FnMut(usize, &Prediction),
) -> Result<EvalReport> {
    let plan = plan_batches(&set.durations, &BatchPlan { shuffle: false, ..cfg.data.batch.clone() });
    let opts = LoaderOptions { workers: cfg.data.workers, prefetch: 2, cache: false };
    let kind = cfg.task.kind;
    let mut asr: BTreeMap<String, AsrScore> = BTreeMap::new();
    let mut overall = AsrScore::default();
    let mut cls: BTreeMap<String, Confusion> = BTreeMap::new();
    let mut cls_all = Confusion::default();
    for batch in Loader::new(set.utts.clone(), plan, &opts) {
        let batch = batch?;
        let waves: Vec<Vec<f32>> = batch.waves.iter().map(|w| w.as_ref().clone()).collect();
        let out = model.forward(frontend.prepare(&waves, device)?, None, false)?;
        for (k, &i) in batch.indices.iter().enumerate() {
            let u = &set.utts[i];
            let lang = u.lang.clone().unwrap_or_else(|| "-".into());
            let p = decode(&out, k, kind, vocab, classes, beam);
            if let Some(hyp) = &p.text {
                overall.add(hyp, &set.texts[i]);
                asr.entry(lang.clone()).or_default().add(hyp, &set.texts[i]);
            }
            if let Some(predicted) = &p.class {
                let truth = class_of(u, kind);
                cls_all.add(&truth, predicted);
                cls.entry(lang.clone()).or_default().add(&truth, predicted);
            }
            each(i, &p);
        }
    }
    let has_cls = cls_all.total() > 0;
    let mut per_language = BTreeMap::new();
    for lang in asr.keys().chain(cls.keys()).collect::<BTreeSet<_>>() {
        let a = asr.get(lang);
        let c = cls.get(lang);
        per_language.insert(
            lang.clone(),
            LanguageScore {
                utterances: a.map(|s| s.cer.utterances).or_else(|| c.map(|c| c.total())).unwrap_or(0),
                cer: a.map(|s| s.cer.corpus()),
                wer: a.map(|s| s.wer.corpus()),
                accuracy: c.map(|c| c.accuracy()),
            },
        );
    }
    let (confusion_labels, confusion) = if has_cls { cls_all.matrix() } else { (Vec::new(), Vec::new()) };
    Ok(EvalReport {
        step,
        utterances: set.utts.len(),
        cer: overall.cer.corpus(),
        cer_per_utterance: overall.cer.per_utterance_mean(),
        wer: overall.wer.corpus(),
        accuracy: has_cls.then(|| cls_all.accuracy()),
        macro_f1: has_cls.then(|| cls_all.macro_f1()),
        per_language,
        confusion_labels,
        confusion,
    })
}

impl EvalReport {
    /// The value of `metric` (None when this task does not classify; the config's validation
    /// keeps CER and WER to tasks with CTC).
    pub fn metric(&self, metric: crate::config::Metric) -> Option<f64> {
        use crate::config::Metric::*;
        match metric {
            Cer => Some(self.cer),
            Wer => Some(self.wer),
            Accuracy => self.accuracy,
            MacroF1 => self.macro_f1,
        }
    }
}
