//! CTC decoding over per-frame log-probabilities `[frames][vocab]` (row-major).

use std::collections::HashMap;

fn log_add(a: f32, b: f32) -> f32 {
    if a == f32::NEG_INFINITY {
        return b;
    }
    if b == f32::NEG_INFINITY {
        return a;
    }
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    hi + (lo - hi).exp().ln_1p()
}

/// Best path: the most likely token per frame, repeats merged, blanks removed.
pub fn greedy(log_probs: &[f32], vocab: usize, blank: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut prev = None;
    for frame in log_probs.chunks_exact(vocab) {
        let best =
            frame.iter().enumerate().fold((0, f32::NEG_INFINITY), |m, (i, &v)| if v > m.1 { (i, v) } else { m }).0
                as u32;
        if best != blank && Some(best) != prev {
            out.push(best);
        }
        prev = Some(best);
    }
    out
}

/// CTC prefix beam search (Hannun et al., 2014) without a language model: the most likely
/// labelling, summing over all its alignments. Returns the labelling and its log-probability.
pub fn prefix_beam_search(log_probs: &[f32], vocab: usize, blank: u32, beam: usize) -> (Vec<u32>, f32) {
    // prefix → (log p ending in blank, log p ending in a non-blank)
    let mut beams: Vec<(Vec<u32>, (f32, f32))> = vec![(Vec::new(), (0.0, f32::NEG_INFINITY))];
    for frame in log_probs.chunks_exact(vocab) {
        let mut next: HashMap<Vec<u32>, (f32, f32)> = HashMap::new();
        for (prefix, (pb, pnb)) in &beams {
            let total = log_add(*pb, *pnb);
            for (c, &p) in frame.iter().enumerate() {
                let c = c as u32;
                if c == blank {
                    let e = next.entry(prefix.clone()).or_insert((f32::NEG_INFINITY, f32::NEG_INFINITY));
                    e.0 = log_add(e.0, total + p);
                    continue;
                }
                let mut extended = prefix.clone();
                extended.push(c);
                if prefix.last() == Some(&c) {
                    // A repeat extends the prefix only across a blank; otherwise it merges.
                    let e = next.entry(extended).or_insert((f32::NEG_INFINITY, f32::NEG_INFINITY));
                    e.1 = log_add(e.1, pb + p);
                    let same = next.entry(prefix.clone()).or_insert((f32::NEG_INFINITY, f32::NEG_INFINITY));
                    same.1 = log_add(same.1, pnb + p);
                } else {
                    let e = next.entry(extended).or_insert((f32::NEG_INFINITY, f32::NEG_INFINITY));
                    e.1 = log_add(e.1, total + p);
                }
            }
        }
        let mut ranked: Vec<(Vec<u32>, (f32, f32))> = next.into_iter().collect();
        // Ties broken by the prefix itself, so results never depend on hash order.
        ranked.sort_by(|a, b| log_add(b.1.0, b.1.1).total_cmp(&log_add(a.1.0, a.1.1)).then_with(|| a.0.cmp(&b.0)));
        ranked.truncate(beam.max(1));
        beams = ranked;
    }
    let (prefix, (pb, pnb)) = beams.into_iter().next().expect("the beam is never empty");
    (prefix, log_add(pb, pnb))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(p: &[&[f32]]) -> Vec<f32> {
        p.iter().flat_map(|f| f.iter().map(|v| v.ln())).collect()
    }

    #[test]
    fn greedy_merges_repeats_and_drops_blanks() {
        // frames: a a _ a b b _  → a a b
        let lp = logs(&[
            &[0.1, 0.8, 0.1],
            &[0.1, 0.8, 0.1],
            &[0.8, 0.1, 0.1],
            &[0.1, 0.8, 0.1],
            &[0.1, 0.1, 0.8],
            &[0.1, 0.1, 0.8],
            &[0.8, 0.1, 0.1],
        ]);
        assert_eq!(greedy(&lp, 3, 0), vec![1, 1, 2]);
    }

    #[test]
    fn beam_search_finds_the_labelling_greedy_misses() {
        // Best path is blank-blank (0.36), but "a" has three alignments: 0.24 + 0.24 + 0.16.
        let lp = logs(&[&[0.6, 0.4], &[0.6, 0.4]]);
        assert_eq!(greedy(&lp, 2, 0), Vec::<u32>::new());
        let (best, score) = prefix_beam_search(&lp, 2, 0, 4);
        assert_eq!(best, vec![1]);
        assert!((score.exp() - 0.64).abs() < 1e-5, "{}", score.exp());
    }

    #[test]
    fn wide_beam_search_equals_brute_force() {
        let lp = logs(&[&[0.5, 0.3, 0.2], &[0.2, 0.5, 0.3], &[0.3, 0.3, 0.4]]);
        let (best, score) = prefix_beam_search(&lp, 3, 0, 100);
        // Brute force: the probability of every labelling is the sum over its 3-frame paths.
        let mut totals: HashMap<Vec<u32>, f32> = HashMap::new();
        for x in 0..3u32 {
            for y in 0..3u32 {
                for z in 0..3u32 {
                    let p = lp[x as usize].exp() * lp[3 + y as usize].exp() * lp[6 + z as usize].exp();
                    let path = [x, y, z];
                    let mut lab = Vec::new();
                    let mut prev = None;
                    for &s in &path {
                        if s != 0 && Some(s) != prev {
                            lab.push(s);
                        }
                        prev = Some(s);
                    }
                    *totals.entry(lab).or_default() += p;
                }
            }
        }
        let (brute_best, brute_p) = totals.iter().max_by(|a, b| a.1.total_cmp(b.1)).unwrap();
        assert_eq!(&best, brute_best);
        assert!((score.exp() - brute_p).abs() < 1e-5);
    }
}
