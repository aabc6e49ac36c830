//! Batches sized by audio seconds rather than by count, with length bucketing.

use crate::rng::Rng;

/// How to form batches.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchPlan {
    /// Padded seconds per batch: longest item × number of items. This is what memory scales
    /// with; an item longer than the budget forms a batch of its own.
    pub max_seconds: f64,
    /// Group similar lengths together (less padding).
    pub bucket: bool,
    /// Shuffle (items, or batch order when bucketing) with `seed`.
    pub shuffle: bool,
    pub seed: u64,
}

impl Default for BatchPlan {
    fn default() -> Self {
        Self { max_seconds: 60.0, bucket: true, shuffle: true, seed: 0 }
    }
}

/// Split item indices into batches by padded duration.
pub fn plan_batches(durations: &[f64], plan: &BatchPlan) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..durations.len()).collect();
    let mut rng = Rng::new(plan.seed);
    if plan.shuffle {
        rng.shuffle(&mut order);
    }
    if plan.bucket {
        // Stable sort after the shuffle: equal lengths stay in random order.
        order.sort_by(|&a, &b| durations[a].total_cmp(&durations[b]));
    }
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut longest = 0.0f64;
    for i in order {
        let d = durations[i];
        let longest_with = longest.max(d);
        if !current.is_empty() && longest_with * (current.len() + 1) as f64 > plan.max_seconds {
            batches.push(std::mem::take(&mut current));
            longest = 0.0;
        }
        longest = longest.max(d);
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    if plan.bucket && plan.shuffle {
        rng.shuffle(&mut batches);
    }
    batches
}

/// A decoded batch: 16-kHz waveforms and their labels.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Positions of the items in the loader's utterance list.
    pub indices: Vec<usize>,
    pub ids: Vec<String>,
    pub waves: Vec<std::sync::Arc<Vec<f32>>>,
    pub texts: Vec<Option<String>>,
    pub langs: Vec<Option<String>>,
    pub labels: Vec<Option<String>>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Samples per item.
    pub fn lengths(&self) -> Vec<usize> {
        self.waves.iter().map(|w| w.len()).collect()
    }

    /// Zero-padded `[batch, max_len]` samples and the matching mask (true = real sample).
    pub fn padded(&self) -> (Vec<f32>, Vec<bool>, usize) {
        let max = self.lengths().into_iter().max().unwrap_or(0);
        let mut data = vec![0.0; self.len() * max];
        let mut mask = vec![false; self.len() * max];
        for (i, w) in self.waves.iter().enumerate() {
            data[i * max..i * max + w.len()].copy_from_slice(w);
            mask[i * max..i * max + w.len()].iter_mut().for_each(|m| *m = true);
        }
        (data, mask, max)
    }

    /// Seconds of real audio in the batch.
    pub fn seconds(&self) -> f64 {
        self.waves.iter().map(|w| w.len()).sum::<usize>() as f64 / speechtune_audio::SAMPLE_RATE as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_the_padded_budget_and_cover_every_item_once() {
        let durations: Vec<f64> = (0..100).map(|i| 1.0 + (i * 37 % 23) as f64 * 0.5).collect();
        for bucket in [true, false] {
            let plan = BatchPlan { max_seconds: 20.0, bucket, shuffle: true, seed: 3 };
            let batches = plan_batches(&durations, &plan);
            let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
            seen.sort();
            assert_eq!(seen, (0..100).collect::<Vec<_>>());
            for b in &batches {
                let longest = b.iter().map(|&i| durations[i]).fold(0.0, f64::max);
                assert!(longest * b.len() as f64 <= 20.0 || b.len() == 1, "{b:?}");
            }
            assert_eq!(plan_batches(&durations, &plan), batches, "deterministic");
        }
    }

    #[test]
    fn bucketing_reduces_padding() {
        let durations: Vec<f64> = (0..200).map(|i| 1.0 + (i * 37 % 29) as f64 * 0.4).collect();
        let padding = |bucket| {
            let plan = BatchPlan { max_seconds: 30.0, bucket, shuffle: true, seed: 1 };
            plan_batches(&durations, &plan)
                .iter()
                .map(|b| {
                    let longest = b.iter().map(|&i| durations[i]).fold(0.0, f64::max);
                    b.iter().map(|&i| longest - durations[i]).sum::<f64>()
                })
                .sum::<f64>()
        };
        assert!(padding(true) < 0.25 * padding(false), "{} vs {}", padding(true), padding(false));
    }

    #[test]
    fn an_item_longer_than_the_budget_is_alone() {
        let b =
            plan_batches(&[5.0, 50.0, 5.0], &BatchPlan { max_seconds: 12.0, bucket: true, shuffle: false, seed: 0 });
        assert_eq!(b, vec![vec![0, 2], vec![1]]);
    }
}
