//! From per-chunk speech probabilities to training segments: hysteresis (speech starts at
//! `onset`, ends after `min_silence` below `offset`), padding, merging of close speech, splitting
//! of long speech at its quietest point, and a minimum length.

use serde::{Deserialize, Serialize};

use crate::vad::CHUNK;

/// Seconds per VAD decision.
pub const FRAME_SECONDS: f64 = CHUNK as f64 / 16_000.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SegmentConfig {
    /// Speech starts where the probability reaches this.
    pub onset: f32,
    /// ... and ends where it stays below this for `min_silence` seconds.
    pub offset: f32,
    pub min_silence: f64,
    /// Seconds added before and after each stretch of speech.
    pub pad: f64,
    /// Neighbouring speech closer than this is joined into one segment (while it fits `max_seconds`).
    pub merge_gap: f64,
    /// Segments shorter than this are dropped.
    pub min_seconds: f64,
    /// Longer speech is split at its quietest point.
    pub max_seconds: f64,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        Self {
            onset: 0.5,
            offset: 0.35,
            min_silence: 0.1,
            pad: 0.1,
            merge_gap: 1.0,
            min_seconds: 2.0,
            max_seconds: 30.0,
        }
    }
}

impl SegmentConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.onset) || !(0.0..=1.0).contains(&self.offset) || self.offset > self.onset {
            return Err(format!("need 0 ≤ offset ({}) ≤ onset ({}) ≤ 1", self.offset, self.onset));
        }
        if self.max_seconds < 2.0 * FRAME_SECONDS || self.min_seconds > self.max_seconds {
            return Err(format!("need min_seconds ({}) ≤ max_seconds ({})", self.min_seconds, self.max_seconds));
        }
        Ok(())
    }
}

/// A segment in seconds from the start of its file.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub start: f64,
    pub end: f64,
}

impl Segment {
    pub fn seconds(&self) -> f64 {
        self.end - self.start
    }
}

/// Speech frames `[start, end)` by hysteresis.
pub fn speech_frames(probs: &[f32], cfg: &SegmentConfig) -> Vec<(usize, usize)> {
    let hold = (cfg.min_silence / FRAME_SECONDS).ceil().max(1.0) as usize;
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut low = 0usize;
    for (i, &p) in probs.iter().enumerate() {
        match start {
            None if p >= cfg.onset => {
                start = Some(i);
                low = 0;
            }
            Some(s) => {
                if p < cfg.offset {
                    low += 1;
                    if low >= hold {
                        out.push((s, i + 1 - low));
                        start = None;
                    }
                } else {
                    low = 0;
                }
            }
            None => {}
        }
    }
    if let Some(s) = start {
        out.push((s, probs.len() - low));
    }
    out
}

/// Split `[a, b)` (frames) until no piece is longer than `max` frames, each time at the frame of
/// lowest probability that leaves at least `min` frames on both sides (or anywhere, if none does).
fn split(probs: &[f32], a: usize, b: usize, min: usize, max: usize, out: &mut Vec<(usize, usize)>) {
    if b - a <= max {
        out.push((a, b));
        return;
    }
    let (lo, hi) = if b - a >= 2 * min { (a + min, b - min) } else { (a + 1, b - 1) };
    // Only cut where the first piece fits in `max`, so the recursion ends.
    let hi = hi.min(a + max).max(lo);
    let cut = (lo..=hi).min_by(|&x, &y| probs[x].total_cmp(&probs[y]).then(x.cmp(&y))).unwrap_or(a + max);
    out.push((a, cut));
    split(probs, cut, b, min, max, out);
}

/// Segments of a file of `seconds` seconds, from its VAD probabilities; also returns how many
/// stretches of speech were dropped as shorter than `min_seconds`.
pub fn segments(probs: &[f32], seconds: f64, cfg: &SegmentConfig) -> (Vec<Segment>, usize) {
    let f = FRAME_SECONDS;
    let pad = (cfg.pad / f).round() as usize;
    let n = probs.len();
    // Pad, then join what overlaps or lies within merge_gap while it fits max_seconds.
    let mut joined: Vec<(usize, usize)> = Vec::new();
    let gap = (cfg.merge_gap / f).round() as usize;
    let max = ((cfg.max_seconds / f).floor() as usize).max(2);
    for (s, e) in speech_frames(probs, cfg) {
        let (s, e) = (s.saturating_sub(pad), (e + pad).min(n));
        match joined.last_mut() {
            Some(last) if s <= last.1 + gap && e - last.0 <= max => last.1 = last.1.max(e),
            Some(last) if s < last.1 => {
                // Overlapping padding but too long together: meet in the middle.
                let mid = (s + last.1) / 2;
                last.1 = mid;
                joined.push((mid, e));
            }
            _ => joined.push((s, e)),
        }
    }
    let min = (cfg.min_seconds / f).ceil() as usize;
    let mut pieces = Vec::new();
    for (s, e) in joined {
        split(probs, s, e, min.min(max / 2), max, &mut pieces);
    }
    let mut dropped = 0;
    let mut out = Vec::new();
    for (s, e) in pieces {
        let seg = Segment { start: s as f64 * f, end: (e as f64 * f).min(seconds) };
        if seg.seconds() + 1e-9 < cfg.min_seconds {
            dropped += 1;
        } else {
            out.push(seg);
        }
    }
    (out, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probs(pattern: &[(f32, usize)]) -> Vec<f32> {
        pattern.iter().flat_map(|&(p, n)| std::iter::repeat_n(p, n)).collect()
    }

    #[test]
    fn hysteresis_holds_through_short_dips() {
        let cfg = SegmentConfig { min_silence: 0.1, ..Default::default() }; // 4 frames
        let p = probs(&[(0.1, 5), (0.9, 10), (0.2, 2), (0.4, 3), (0.9, 5), (0.1, 10), (0.6, 3)]);
        // The 2-frame dip and the 0.4 plateau (above offset) do not end speech; the 10 low frames do.
        assert_eq!(speech_frames(&p, &cfg), vec![(5, 25), (35, 38)]);
    }

    #[test]
    fn padding_merging_minimum_and_splitting() {
        let f = FRAME_SECONDS;
        let cfg = SegmentConfig { pad: 0.0, merge_gap: 0.5, min_seconds: 1.0, max_seconds: 3.0, ..Default::default() };
        // 40 frames of speech (1.28 s), a 10-frame gap (0.32 s, merged), 40 more; then a long
        // pause and 20 frames (0.64 s, dropped as too short).
        let p = probs(&[(0.9, 40), (0.0, 10), (0.9, 40), (0.0, 60), (0.9, 20), (0.0, 10)]);
        let (segs, dropped) = segments(&p, p.len() as f64 * f, &cfg);
        assert_eq!(dropped, 1);
        assert_eq!(segs.len(), 1);
        assert!((segs[0].start - 0.0).abs() < 1e-9 && (segs[0].end - 90.0 * f).abs() < 1e-9, "{segs:?}");

        // 200 frames (6.4 s) of speech with its quietest frame at 120: split there, both ≤ 3 s...
        let mut p = vec![0.9f32; 200];
        p[120] = 0.6;
        p[60] = 0.7;
        let (segs, _) = segments(&p, 6.4, &cfg);
        assert!(segs.iter().all(|s| s.seconds() <= 3.0 + 1e-9 && s.seconds() >= 1.0 - 1e-9), "{segs:?}");
        let cuts: Vec<usize> = segs.iter().skip(1).map(|s| (s.start / f).round() as usize).collect();
        assert_eq!(cuts, vec![60, 120], "cut at the quietest frames that keep pieces within 3 s");
    }
}
