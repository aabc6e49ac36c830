//! `WhisperForConditionalGeneration`: the encoder and the decoder together, and decoding —
//! greedy and beam search with transformers' `generate` semantics (forced prefix, suppressed
//! tokens, tokens suppressed at the first step, end token, padding of finished sequences,
//! length-normalised beam hypotheses with the `early_stopping=False` heuristic).

use burn::prelude::*;
use burn::tensor::{Int, TensorData};

use super::WhisperEncoder;
use super::decoder::{DecoderCache, WhisperDecoder, select_rows};
use crate::config::WhisperConfig;
use crate::weights::Weights;
use crate::{Error, Result};

/// Encoder + decoder of a Whisper checkpoint.
#[derive(Module, Debug)]
pub struct WhisperSeq2Seq {
    pub encoder: WhisperEncoder,
    pub decoder: WhisperDecoder,
    /// Where the checkpoint keeps both halves: `model.` (`WhisperForConditionalGeneration`) or
    /// nothing (`WhisperModel`); saved PEFT weights are named below it.
    #[module(skip)]
    pub prefix: String,
}

/// How to decode: the forced prefix (e.g. `<|startoftranscript|> <|en|> <|transcribe|>
/// <|notimestamps|>`) and what transformers' generation config says.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub prefix: Vec<u32>,
    pub max_new_tokens: usize,
    pub eos: u32,
    pub pad: u32,
    /// Never produced.
    pub suppress: Vec<u32>,
    /// Not produced as the first new token.
    pub begin_suppress: Vec<u32>,
    /// 1: greedy.
    pub beams: usize,
    /// Beam hypotheses are scored by sum of log-probabilities / (new tokens ^ length_penalty).
    pub length_penalty: f64,
}

impl WhisperSeq2Seq {
    /// Load both halves from a checkpoint (`model.encoder.` / `model.decoder.`). Projections
    /// are named below the model (`encoder.layers.0.self_attn.q_proj`,
    /// `decoder.layers.0.encoder_attn.q_proj`), as peft names them.
    pub fn load(cfg: &WhisperConfig, w: &mut Weights, device: &Device) -> Result<Self> {
        let prefix = w.select_prefix(&super::PREFIXES[..2], "conv1.weight")?.trim_end_matches("encoder.").to_string();
        let encoder = WhisperEncoder::load(cfg, w, device)?;
        w.select_prefix(&super::decoder::PREFIXES, "embed_tokens.weight")?;
        let decoder = WhisperDecoder::load(cfg, w, device)?;
        let mut model = Self { encoder, decoder, prefix };
        for (i, p) in model.projections_mut().into_iter().enumerate() {
            let half = if i < cfg.encoder_layers * 6 { "encoder" } else { "decoder" };
            p.name = format!("{half}.{}", p.name);
        }
        Ok(model)
    }

    /// The encoder's last hidden state, `[batch, frames / 2, d_model]`.
    pub fn encode(&self, features: Tensor<3>, unpadded: bool) -> Result<Tensor<3>> {
        let mut hidden = self.encoder.forward(features, unpadded)?;
        hidden.pop().ok_or_else(|| Error::Input("the encoder returned no hidden state".into()))
    }

    /// Teacher-forced logits `[batch, tokens, vocab]` (training and scoring).
    pub fn logits(&self, encoder_out: &Tensor<3>, tokens: Tensor<2, Int>) -> Result<Tensor<3>> {
        self.decoder.forward(tokens, encoder_out, &mut None)
    }

    /// Decode every item of the batch; each result starts with the prefix and stops after the
    /// end token (not included when the sequence ran out of room), like transformers' output
    /// rows with their padding removed.
    pub fn generate(&self, encoder_out: &Tensor<3>, o: &GenerateOptions) -> Result<Vec<Vec<u32>>> {
        if o.prefix.is_empty() {
            return Err(Error::Input("decoding needs a prefix (at least the start token)".into()));
        }
        let vocab = self.decoder.vocab_size() as u32;
        if let Some(t) = o.prefix.iter().chain([&o.eos]).find(|&&t| t >= vocab) {
            return Err(Error::Input(format!("token id {t} is outside the vocabulary of {vocab}")));
        }
        let room = self.decoder.max_positions().saturating_sub(o.prefix.len());
        let o = GenerateOptions { max_new_tokens: o.max_new_tokens.min(room), ..o.clone() };
        if o.beams <= 1 { self.greedy(encoder_out, &o) } else { self.beam_search(encoder_out, &o) }
    }

    /// Log-softmax of the first decoding step's logits after `prefix`, per item (zero-shot
    /// language identification reads the language tokens' probabilities here).
    pub fn next_token_log_probs(&self, encoder_out: &Tensor<3>, prefix: &[u32]) -> Result<Vec<Vec<f32>>> {
        let b = encoder_out.dims()[0];
        let mut cache = None;
        let rows = vec![prefix.to_vec(); b];
        let logits = self.decoder.forward(ids(&rows, &encoder_out.device()), encoder_out, &mut cache)?;
        Ok(last_logits(logits)?.into_iter().map(|l| log_softmax(&l)).collect())
    }

    fn greedy(&self, encoder_out: &Tensor<3>, o: &GenerateOptions) -> Result<Vec<Vec<u32>>> {
        let b = encoder_out.dims()[0];
        let device = encoder_out.device();
        let mut seqs = vec![o.prefix.clone(); b];
        let mut done = vec![false; b];
        let mut cache: Option<DecoderCache> = None;
        let mut input = seqs.clone();
        for step in 0..o.max_new_tokens {
            let logits = last_logits(self.decoder.forward(ids(&input, &device), encoder_out, &mut cache)?)?;
            for (i, mut l) in logits.into_iter().enumerate() {
                suppress(&mut l, o, step);
                let next = if done[i] { o.pad } else { argmax(&l) };
                seqs[i].push(next);
                done[i] |= next == o.eos;
            }
            if done.iter().all(|&d| d) {
                break;
            }
            input = seqs.iter().map(|s| vec![*s.last().expect("non-empty")]).collect();
        }
        Ok(seqs.into_iter().map(|s| trim(s, o)).collect())
    }

    fn beam_search(&self, encoder_out: &Tensor<3>, o: &GenerateOptions) -> Result<Vec<Vec<u32>>> {
        let (b, k) = (encoder_out.dims()[0], o.beams);
        let device = encoder_out.device();
        let prompt = o.prefix.len();
        // Every item's encoder output repeated once per beam (rows i·k .. i·k + k).
        let rows: Vec<usize> = (0..b).flat_map(|i| std::iter::repeat_n(i, k)).collect();
        let enc = select_rows(encoder_out.clone(), &rows);
        let mut beams: Vec<Vec<u32>> = vec![o.prefix.clone(); b * k];
        // Only the first beam is live at the start (transformers: the others at -1e9).
        let mut scores: Vec<f32> = (0..b * k).map(|r| if r % k == 0 { 0.0 } else { -1e9 }).collect();
        let mut hyps: Vec<Hypotheses> = (0..b).map(|_| Hypotheses::new(k, o.length_penalty)).collect();
        let mut done = vec![false; b];
        let mut cache: Option<DecoderCache> = None;
        let mut input = beams.clone();
        for step in 0..o.max_new_tokens {
            let logits = last_logits(self.decoder.forward(ids(&input, &device), &enc, &mut cache)?)?;
            let vocab = logits[0].len();
            // Length the scores are computed on, prefix included (transformers' cur_len).
            let cur_len = prompt + step + 1;
            let mut next_beams = Vec::with_capacity(b * k);
            let mut next_scores = Vec::with_capacity(b * k);
            let mut reorder = Vec::with_capacity(b * k);
            for item in 0..b {
                if done[item] {
                    for _ in 0..k {
                        let mut s = beams[item * k].clone();
                        s.push(o.pad);
                        next_beams.push(s);
                        next_scores.push(0.0);
                        reorder.push(item * k);
                    }
                    continue;
                }
                // All candidates of this item's beams: beam score + processed log-probability.
                let mut cand: Vec<(f32, usize)> = Vec::with_capacity(k * vocab);
                for j in 0..k {
                    let r = item * k + j;
                    let mut lp = log_softmax(&logits[r]);
                    suppress(&mut lp, o, step);
                    cand.extend(lp.iter().enumerate().map(|(t, &v)| (v + scores[r], j * vocab + t)));
                }
                // torch.topk(2k, sorted): largest first; equal scores keep the lower index first.
                cand.sort_by(|a, c| c.0.total_cmp(&a.0).then(a.1.cmp(&c.1)));
                cand.truncate(2 * k);
                let mut kept = 0;
                for (rank, &(score, flat)) in cand.iter().enumerate() {
                    let (j, token) = (flat / vocab, (flat % vocab) as u32);
                    let r = item * k + j;
                    if token == o.eos {
                        if rank >= k {
                            continue;
                        }
                        hyps[item].add(beams[r].clone(), score as f64, cur_len - prompt);
                    } else {
                        let mut s = beams[r].clone();
                        s.push(token);
                        next_beams.push(s);
                        next_scores.push(score);
                        reorder.push(r);
                        kept += 1;
                    }
                    if kept == k {
                        break;
                    }
                }
                if kept < k {
                    return Err(Error::Input(format!("beam search kept {kept} of {k} beams")));
                }
                let best = cand.iter().map(|c| c.0).fold(f32::NEG_INFINITY, f32::max);
                done[item] = hyps[item].is_done(best as f64, cur_len - prompt);
            }
            beams = next_beams;
            scores = next_scores;
            if done.iter().all(|&d| d) {
                break;
            }
            cache = cache.map(|c| c.select(&reorder));
            input = beams.iter().map(|s| vec![*s.last().expect("non-empty")]).collect();
        }
        // Unfinished items: their live beams become hypotheses too.
        let mut out = Vec::with_capacity(b);
        for item in 0..b {
            if !done[item] {
                for j in 0..k {
                    let r = item * k + j;
                    hyps[item].add(beams[r].clone(), scores[r] as f64, beams[r].len() - prompt);
                }
            }
            let mut best = hyps[item].best().ok_or_else(|| Error::Input("beam search found no hypothesis".into()))?;
            if best.len() < prompt + o.max_new_tokens {
                best.push(o.eos);
            }
            out.push(best);
        }
        Ok(out)
    }
}

/// transformers' `BeamHypotheses`: the `k` best finished sequences by length-normalised score.
struct Hypotheses {
    k: usize,
    length_penalty: f64,
    beams: Vec<(f64, Vec<u32>)>,
    worst: f64,
}

impl Hypotheses {
    fn new(k: usize, length_penalty: f64) -> Self {
        Self { k, length_penalty, beams: Vec::new(), worst: 1e9 }
    }

    fn add(&mut self, seq: Vec<u32>, sum_logprobs: f64, generated: usize) {
        let score = sum_logprobs / (generated as f64).powf(self.length_penalty);
        if self.beams.len() < self.k || score > self.worst {
            self.beams.push((score, seq));
            if self.beams.len() > self.k {
                let mut order: Vec<(f64, usize)> = self.beams.iter().enumerate().map(|(i, b)| (b.0, i)).collect();
                order.sort_by(|a, b| a.0.total_cmp(&b.0));
                self.beams.remove(order[0].1);
                self.worst = order[1].0;
            } else {
                self.worst = self.worst.min(score);
            }
        }
    }

    /// `early_stopping=False`: no live beam can beat the worst kept hypothesis any more.
    fn is_done(&self, best_sum_logprobs: f64, generated: usize) -> bool {
        self.beams.len() >= self.k && self.worst >= best_sum_logprobs / (generated as f64).powf(self.length_penalty)
    }

    fn best(&self) -> Option<Vec<u32>> {
        // Python's sorted() is stable and pop() takes the last: among equal scores, the latest added.
        let mut best: Option<&(f64, Vec<u32>)> = None;
        for b in &self.beams {
            if best.is_none_or(|x| b.0 >= x.0) {
                best = Some(b);
            }
        }
        best.map(|b| b.1.clone())
    }
}

/// Greedy output rows: drop the padding after the end token.
fn trim(mut s: Vec<u32>, o: &GenerateOptions) -> Vec<u32> {
    if let Some(p) = s.iter().skip(o.prefix.len()).position(|&t| t == o.eos) {
        s.truncate(o.prefix.len() + p + 1);
    }
    s
}

fn suppress(scores: &mut [f32], o: &GenerateOptions, step: usize) {
    let begin = if step == 0 { o.begin_suppress.as_slice() } else { &[] };
    for &t in o.suppress.iter().chain(begin) {
        if let Some(s) = scores.get_mut(t as usize) {
            *s = f32::NEG_INFINITY;
        }
    }
}

fn argmax(v: &[f32]) -> u32 {
    // torch.argmax: the first of equal maxima.
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn log_softmax(v: &[f32]) -> Vec<f32> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = v.iter().map(|&x| (x - max).exp()).sum();
    let log_sum = sum.ln() + max;
    v.iter().map(|&x| x - log_sum).collect()
}

fn ids(rows: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let t = rows.first().map_or(0, |r| r.len());
    let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().map(|&x| x as i64)).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), t]), device)
}

/// The last position's logits of each row, on the host.
fn last_logits(logits: Tensor<3>) -> Result<Vec<Vec<f32>>> {
    let [b, t, v] = logits.dims();
    let last = logits.narrow(1, t - 1, 1).reshape([b, v]);
    let data = crate::peft::values(last);
    Ok(data.chunks(v).map(|c| c.to_vec()).collect())
}
