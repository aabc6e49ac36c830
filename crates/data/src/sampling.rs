//! Deterministic subsets: ML-SUPERB-style duration budgets per language, few-shot languages,
//! and the training-length limit. The same seed always selects the same utterances.

use std::collections::BTreeMap;

use crate::item::Utterance;
use crate::rng::Rng;

/// Settings for [`subset_by_duration`] and [`few_shot`], as run configs name them.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SampleOptions {
    /// Seconds of training audio per language (600 for ML-SUPERB's 10-min setting, 3600 for 1 h).
    pub seconds_per_language: Option<f64>,
    /// Languages limited to `few_shot_count` utterances.
    pub few_shot_languages: Vec<String>,
    pub few_shot_count: usize,
    /// Training clips longer than this are dropped (ML-SUPERB: 20 s).
    pub max_seconds: f64,
    pub seed: u64,
}

impl Default for SampleOptions {
    fn default() -> Self {
        Self {
            seconds_per_language: None,
            few_shot_languages: Vec::new(),
            few_shot_count: 5,
            max_seconds: 20.0,
            seed: 0,
        }
    }
}

/// Drop utterances longer than `max_seconds` (unknown durations are kept); returns how many went.
pub fn drop_longer_than(utts: &mut Vec<Utterance>, max_seconds: f64) -> usize {
    let before = utts.len();
    utts.retain(|u| u.seconds().is_none_or(|s| s <= max_seconds));
    before - utts.len()
}

fn by_language(utts: Vec<Utterance>) -> BTreeMap<String, Vec<Utterance>> {
    let mut m: BTreeMap<String, Vec<Utterance>> = BTreeMap::new();
    for u in utts {
        m.entry(u.lang.clone().unwrap_or_default()).or_default().push(u);
    }
    m
}

/// Per language, a random selection of utterances whose durations add up to at most `seconds`.
/// Input order does not matter: utterances are sorted by id before the seeded shuffle.
pub fn subset_by_duration(utts: Vec<Utterance>, seconds: f64, seed: u64) -> Vec<Utterance> {
    let mut out = Vec::new();
    for (lang, mut group) in by_language(utts) {
        group.sort_by(|a, b| a.id.cmp(&b.id));
        let mut rng = Rng::new(seed ^ hash(&lang));
        rng.shuffle(&mut group);
        let mut total = 0.0;
        for u in group {
            let d = u.seconds().unwrap_or(0.0);
            if total + d <= seconds {
                total += d;
                out.push(u);
            }
        }
    }
    out
}

/// Keep `n` random utterances of each language in `langs`; other languages are untouched.
pub fn few_shot(utts: Vec<Utterance>, langs: &[String], n: usize, seed: u64) -> Vec<Utterance> {
    let mut out = Vec::new();
    for (lang, mut group) in by_language(utts) {
        if langs.contains(&lang) {
            group.sort_by(|a, b| a.id.cmp(&b.id));
            Rng::new(seed ^ hash(&lang)).shuffle(&mut group);
            group.truncate(n);
        }
        out.extend(group);
    }
    out
}

/// FNV-1a, so each language draws its own stream from one seed.
fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::AudioSource;

    fn utts() -> Vec<Utterance> {
        let mut v = Vec::new();
        for lang in ["de", "en"] {
            for i in 0..40 {
                let mut u =
                    Utterance::new(format!("{lang}_{i:03}"), AudioSource::File(format!("{lang}{i}.wav").into()));
                u.lang = Some(lang.into());
                u.duration = Some(1.0 + (i % 7) as f64 * 3.5);
                v.push(u);
            }
        }
        v
    }

    #[test]
    fn duration_budget_per_language_is_respected_and_seeded() {
        let a = subset_by_duration(utts(), 60.0, 7);
        for lang in ["de", "en"] {
            let total: f64 = a.iter().filter(|u| u.lang.as_deref() == Some(lang)).map(|u| u.duration.unwrap()).sum();
            assert!(total <= 60.0 && total > 50.0, "{lang}: {total}");
        }
        let mut shuffled = utts();
        shuffled.reverse();
        assert_eq!(subset_by_duration(shuffled, 60.0, 7), a, "input order must not matter");
        assert_ne!(subset_by_duration(utts(), 60.0, 8), a);
    }

    #[test]
    fn few_shot_and_length_limit() {
        let v = few_shot(utts(), &["de".into()], 5, 1);
        assert_eq!(v.iter().filter(|u| u.lang.as_deref() == Some("de")).count(), 5);
        assert_eq!(v.iter().filter(|u| u.lang.as_deref() == Some("en")).count(), 40);
        let mut v = utts();
        let dropped = drop_longer_than(&mut v, 20.0);
        assert_eq!(dropped, 2 * 5); // i % 7 == 6 (22 s): ids 6, 13, 20, 27, 34 in each language
        assert!(v.iter().all(|u| u.duration.unwrap() <= 20.0));
    }
}
