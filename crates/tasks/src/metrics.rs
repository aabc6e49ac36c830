//! CER and WER (corpus-level and per-utterance mean), accuracy, macro-F1 and confusion
//! matrices, overall and per language.

use std::collections::BTreeMap;

/// Levenshtein distance (substitutions, insertions, deletions all cost 1).
pub fn edit_distance<T: PartialEq>(hyp: &[T], reference: &[T]) -> usize {
    let mut prev: Vec<usize> = (0..=reference.len()).collect();
    let mut cur = vec![0; reference.len() + 1];
    for (i, h) in hyp.iter().enumerate() {
        cur[0] = i + 1;
        for (j, r) in reference.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(h != r)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[reference.len()]
}

/// An error rate accumulated over utterances, reported two ways: corpus-level (total edits /
/// total reference units, what most papers mean) and the mean of per-utterance rates (what the
/// ML-SUPERB PEFT study's notebook reports).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ErrorRate {
    pub edits: usize,
    pub reference_units: usize,
    pub utterances: usize,
    per_utterance_sum: f64,
}

impl ErrorRate {
    pub fn add<T: PartialEq>(&mut self, hyp: &[T], reference: &[T]) {
        let e = edit_distance(hyp, reference);
        self.edits += e;
        self.reference_units += reference.len();
        self.utterances += 1;
        // An empty reference: 0 if the hypothesis is empty too, else every unit is an error.
        self.per_utterance_sum +=
            if reference.is_empty() { f64::from(u8::from(e > 0)) } else { e as f64 / reference.len() as f64 };
    }

    /// Total edits / total reference units.
    pub fn corpus(&self) -> f64 {
        if self.reference_units == 0 { 0.0 } else { self.edits as f64 / self.reference_units as f64 }
    }

    /// Mean over utterances of each one's rate.
    pub fn per_utterance_mean(&self) -> f64 {
        if self.utterances == 0 { 0.0 } else { self.per_utterance_sum / self.utterances as f64 }
    }

    pub fn merge(&mut self, other: &ErrorRate) {
        self.edits += other.edits;
        self.reference_units += other.reference_units;
        self.utterances += other.utterances;
        self.per_utterance_sum += other.per_utterance_sum;
    }
}

/// CER and WER of one text pair, added to running totals. Characters include spaces (as
/// jiwer's `cer`); words are whitespace-separated tokens.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct AsrScore {
    pub cer: ErrorRate,
    pub wer: ErrorRate,
}

impl AsrScore {
    pub fn add(&mut self, hyp: &str, reference: &str) {
        let (h, r): (Vec<char>, Vec<char>) = (hyp.chars().collect(), reference.chars().collect());
        self.cer.add(&h, &r);
        let (h, r): (Vec<&str>, Vec<&str>) = (hyp.split_whitespace().collect(), reference.split_whitespace().collect());
        self.wer.add(&h, &r);
    }
}

/// Counts of (true label, predicted label).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Confusion {
    pub counts: BTreeMap<String, BTreeMap<String, usize>>,
}

impl Confusion {
    pub fn add(&mut self, truth: &str, predicted: &str) {
        *self.counts.entry(truth.to_string()).or_default().entry(predicted.to_string()).or_default() += 1;
    }

    pub fn total(&self) -> usize {
        self.counts.values().flat_map(|r| r.values()).sum()
    }

    pub fn accuracy(&self) -> f64 {
        let correct: usize = self.counts.iter().map(|(t, r)| r.get(t).copied().unwrap_or(0)).sum();
        if self.total() == 0 { 0.0 } else { correct as f64 / self.total() as f64 }
    }

    /// Every label seen as truth or prediction, sorted.
    pub fn labels(&self) -> Vec<String> {
        let mut l: Vec<String> =
            self.counts.keys().cloned().chain(self.counts.values().flat_map(|r| r.keys().cloned())).collect();
        l.sort();
        l.dedup();
        l
    }

    /// Unweighted mean of per-label F1 over every label seen (scikit-learn's `average="macro"`
    /// with `zero_division=0`).
    pub fn macro_f1(&self) -> f64 {
        let labels = self.labels();
        if labels.is_empty() {
            return 0.0;
        }
        let f1: f64 = labels
            .iter()
            .map(|l| {
                let tp = self.counts.get(l).and_then(|r| r.get(l)).copied().unwrap_or(0) as f64;
                let predicted: usize = self.counts.values().filter_map(|r| r.get(l)).sum();
                let actual: usize = self.counts.get(l).map(|r| r.values().sum()).unwrap_or(0);
                let denom = (predicted + actual) as f64;
                if denom == 0.0 { 0.0 } else { 2.0 * tp / denom }
            })
            .sum();
        f1 / labels.len() as f64
    }

    /// The matrix as rows of counts over `labels()` (rows: truth, columns: prediction).
    pub fn matrix(&self) -> (Vec<String>, Vec<Vec<usize>>) {
        let labels = self.labels();
        let rows = labels
            .iter()
            .map(|t| labels.iter().map(|p| self.counts.get(t).and_then(|r| r.get(p)).copied().unwrap_or(0)).collect())
            .collect();
        (labels, rows)
    }
}

/// A metric overall and per language.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PerLanguage<M> {
    pub overall: M,
    pub languages: BTreeMap<String, M>,
}

impl<M: Default> PerLanguage<M> {
    /// Apply `f` to the overall metric and to the language's.
    pub fn update(&mut self, lang: &str, f: impl Fn(&mut M)) {
        f(&mut self.overall);
        f(self.languages.entry(lang.to_string()).or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_classics() {
        assert_eq!(edit_distance(&['k', 'i', 't', 't', 'e', 'n'], &['s', 'i', 't', 't', 'i', 'n', 'g']), 3);
        assert_eq!(edit_distance::<char>(&[], &['a', 'b']), 2);
        assert_eq!(edit_distance(&["a", "b"], &["a", "b"]), 0);
    }

    #[test]
    fn corpus_and_per_utterance_rates_differ_as_defined() {
        let mut s = AsrScore::default();
        s.add("HELLO WORLD", "HELLO WORLD"); // 0 / 11 chars, 0 / 2 words
        s.add("HALO", "HELLO"); // 2 edits / 5 chars; 1 / 1 words
        assert_eq!((s.cer.edits, s.cer.reference_units), (2, 16));
        assert!((s.cer.corpus() - 2.0 / 16.0).abs() < 1e-12);
        assert!((s.cer.per_utterance_mean() - (0.0 + 0.4) / 2.0).abs() < 1e-12);
        assert!((s.wer.corpus() - 1.0 / 3.0).abs() < 1e-12);
        assert!((s.wer.per_utterance_mean() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn accuracy_macro_f1_and_matrix() {
        let mut c = Confusion::default();
        for (t, p) in [("en", "en"), ("en", "en"), ("en", "de"), ("de", "de"), ("es", "en")] {
            c.add(t, p);
        }
        assert!((c.accuracy() - 0.6).abs() < 1e-12);
        // F1: de = 2*1/(2+1) = 0.667, en = 2*2/(3+3) = 0.667, es = 0 → mean 0.444
        assert!((c.macro_f1() - (2.0 / 3.0 + 2.0 / 3.0 + 0.0) / 3.0).abs() < 1e-12);
        let (labels, m) = c.matrix();
        assert_eq!(labels, ["de", "en", "es"]);
        assert_eq!(m, vec![vec![1, 0, 0], vec![1, 2, 0], vec![0, 1, 0]]);
        let mut per = PerLanguage::<Confusion>::default();
        per.update("x", |m| m.add("a", "a"));
        per.update("y", |m| m.add("a", "b"));
        assert_eq!((per.overall.total(), per.languages["y"].accuracy()), (2, 0.0));
    }
}
