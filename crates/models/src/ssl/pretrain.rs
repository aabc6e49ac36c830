//! wav2vec 2.0 pre-training, as transformers' `Wav2Vec2ForPreTraining` and fairseq's `Wav2Vec2Model`
//! define it: span masks over the transformer input, a Gumbel-softmax product quantizer of the
//! (layer-normalised) CNN features, distractors drawn from the masked frames of the same
//! utterance, the contrastive loss over cosine similarities, the diversity loss from the
//! perplexity of the averaged code distribution, and fairseq's feature penalty.
//!
//! Checkpoint names are transformers': the base model under `wav2vec2.`, then `quantizer.*`,
//! `project_hid.*` and `project_q.*`.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Int, TensorData};
use speechtune_data::Rng;

use super::SslModel;
use crate::config::SslConfig;
use crate::layers::load_linear;
use crate::peft::{NamedTensor, values};
use crate::ssl::PosConv;
use crate::weights::Weights;
use crate::{Error, Result};

/// `Wav2Vec2GumbelVectorQuantizer`: `groups` codebooks of `vars` entries each; the code vector of
/// a frame is the concatenation of one entry per group.
#[derive(Module, Debug)]
pub struct Quantizer {
    /// `[1, groups * vars, codevector_dim / groups]`
    pub codevectors: Param<Tensor<3>>,
    /// CNN channels → `groups * vars` logits.
    pub weight_proj: Linear,
    pub groups: usize,
    pub vars: usize,
}

/// How the quantizer picks codes.
pub enum Quantize<'a> {
    /// The largest logit, no gradient into the logits (transformers in eval mode).
    Argmax,
    /// Gumbel-softmax at `temperature`: a hard one-hot in the forward pass, the gradient of the
    /// soft distribution (straight-through), noise drawn from `rng`.
    Gumbel { temperature: f64, rng: &'a mut Rng },
}

/// `Wav2Vec2ForPreTraining`.
#[derive(Module, Debug)]
pub struct PretrainModel {
    pub wav2vec2: SslModel,
    pub quantizer: Quantizer,
    pub project_hid: Linear,
    pub project_q: Linear,
    pub contrastive_temperature: f64,
}

/// What one forward pass gives. Losses are sums over the masked frames, as transformers returns
/// them; `loss` divides by the masked frames (fairseq's normalisation by `sample_size`).
pub struct PretrainOutput {
    /// Cross-entropy of picking the positive among the distractors, summed over masked frames.
    pub contrastive_sum: Tensor<1>,
    /// `(codes - perplexity) / codes × masked frames` (transformers' `diversity_loss`).
    pub diversity_sum: Tensor<1>,
    /// Mean square of the CNN features (fairseq's `features_pen`).
    pub feature_pen: Tensor<1>,
    pub masked: usize,
    /// Masked frames whose positive has the largest logit (ties of all logits excluded).
    pub correct: usize,
    /// Perplexity of the hard codes of the masked frames (fairseq's `code_perplexity`).
    pub code_perplexity: f64,
    /// Perplexity of the averaged soft code distribution (fairseq's `prob_perplexity`; the
    /// hard one in argmax mode, as transformers computes it in eval mode).
    pub prob_perplexity: f64,
}

impl PretrainOutput {
    /// `(contrastive + diversity_weight · diversity) / masked + feature_pen_weight · pen`.
    pub fn loss(&self, diversity_weight: f64, feature_pen_weight: f64) -> Tensor<1> {
        let n = self.masked.max(1) as f64;
        let mut loss = (self.contrastive_sum.clone() + self.diversity_sum.clone() * diversity_weight) / n;
        if feature_pen_weight != 0.0 {
            loss = loss + self.feature_pen.clone() * feature_pen_weight;
        }
        loss
    }
}

/// The names of the pre-training parts that a `Wav2Vec2ForPreTraining` checkpoint adds.
pub const QUANTIZER_PROBE: &str = "quantizer.codevectors";

impl PretrainModel {
    /// Build from `w`: a `Wav2Vec2ForPreTraining` checkpoint, or a random source
    /// ([`Weights::transformers_init`]) for pre-training from scratch.
    pub fn load(cfg: &SslConfig, w: &mut Weights, device: &Device) -> Result<Self> {
        if cfg.model_type != "wav2vec2" {
            return Err(Error::Input(format!(
                "pre-training needs a wav2vec2 model, this config has model_type \"{}\"",
                cfg.model_type
            )));
        }
        let (g, v) = (cfg.num_codevector_groups, cfg.num_codevectors_per_group);
        if g == 0 || !cfg.codevector_dim.is_multiple_of(g) {
            return Err(Error::Input(format!(
                "codevector_dim {} must be a multiple of num_codevector_groups {g}",
                cfg.codevector_dim
            )));
        }
        w.select_prefix(&["", "wav2vec2."], QUANTIZER_PROBE)?;
        w.select_prefix(&["wav2vec2.", ""], "feature_extractor.conv_layers.0.conv.weight")?;
        let wav2vec2 = SslModel::load(cfg, w, device)?;
        if wav2vec2.masked_spec_embed.is_none() || wav2vec2.feature_norm.is_none() {
            return Err(Error::Input("pre-training needs masked_spec_embed and feature_projection.layer_norm".into()));
        }
        w.select_prefix(&[""], QUANTIZER_PROBE)?;
        let c = *cfg.conv_dim.last().expect("config validated: at least one conv layer");
        let (d, p) = (cfg.hidden_size, cfg.proj_codevector_dim);
        Ok(Self {
            wav2vec2,
            quantizer: Quantizer {
                codevectors: Param::from_tensor(w.tensor(
                    "quantizer.codevectors",
                    [1, g * v, cfg.codevector_dim / g],
                    device,
                )?),
                weight_proj: load_linear(w, "quantizer.weight_proj", c, g * v, true, device)?,
                groups: g,
                vars: v,
            },
            project_hid: load_linear(w, "project_hid", d, p, true, device)?,
            project_q: load_linear(w, "project_q", cfg.codevector_dim, p, true, device)?,
            contrastive_temperature: cfg.contrastive_logits_temperature,
        })
    }

    /// Frames the CNN gives for `samples` samples.
    pub fn frames_for(&self, samples: usize) -> usize {
        self.wav2vec2.frames_for(samples)
    }

    /// One pass over `samples` (`[batch, samples]`, no padding). `mask` is `[batch × frames]`
    /// (true = masked), `negatives` `[batch × frames × K]` indices into the flattened
    /// `batch × frames` positions (as `_sample_negative_indices` returns them; read only at masked
    /// frames). `feature_grad_mult` scales the gradient into the CNN (fairseq's option; 1 is
    /// transformers').
    pub fn forward(
        &self,
        samples: Tensor<2>,
        mask: &[bool],
        negatives: &[usize],
        quantize: Quantize,
        feature_grad_mult: f64,
    ) -> Result<PretrainOutput> {
        let device = samples.device();
        let features = self.wav2vec2.extract_features(samples);
        let [b, t, _] = features.dims();
        if mask.len() != b * t {
            return Err(Error::Input(format!("mask of {} values for {b} × {t} frames", mask.len())));
        }
        let masked_at: Vec<usize> = (0..b * t).filter(|&i| mask[i]).collect();
        let n = masked_at.len();
        let k = if n > 0 { negatives.len() / (b * t) } else { 0 };
        if n > 0 && (k == 0 || negatives.len() != b * t * k) {
            return Err(Error::Input(format!("{} negative indices for {b} × {t} frames", negatives.len())));
        }
        let features = if feature_grad_mult != 1.0 && features.is_require_grad() {
            features.clone() * feature_grad_mult + features.detach() * (1.0 - feature_grad_mult)
        } else {
            features
        };
        let feature_pen = features.clone().powf_scalar(2.0).mean();
        let normed = self.wav2vec2.normalize_features(features);
        let m: Vec<f32> = mask.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect();
        let m = Tensor::<3>::from_data(TensorData::new(m, [b, t, 1]), &device);
        let x = self.wav2vec2.mask_frames(self.wav2vec2.projection.forward(normed.clone()), m);
        let hidden = self.wav2vec2.encoder.forward(x, None, &[]);
        let last = hidden.into_iter().last().expect("the encoder returns its output");
        let (codes, code_ppl, prob_ppl) = self.quantizer.forward(normed, &masked_at, quantize);
        let c = self.project_hid.forward(last);
        let f = c.dims()[2];
        let y = self.project_q.forward(codes).reshape([b * t, f]);

        if n == 0 {
            let zero = Tensor::<1>::zeros([1], &device);
            return Ok(PretrainOutput {
                contrastive_sum: zero.clone(),
                diversity_sum: zero,
                feature_pen,
                masked: 0,
                correct: 0,
                code_perplexity: code_ppl,
                prob_perplexity: scalar(prob_ppl.clone()),
            });
        }
        let rows = |idx: Vec<usize>| -> Tensor<1, Int> {
            let len = idx.len();
            let v: Vec<i64> = idx.into_iter().map(|i| i as i64).collect();
            Tensor::from_data(TensorData::new(v, [len]), &device)
        };
        let unit = |x: Tensor<2>| {
            let norm = x.clone().powf_scalar(2.0).sum_dim(1).sqrt().clamp_min(1e-8);
            x / norm
        };
        let neg_idx: Vec<usize> = masked_at.iter().flat_map(|&i| negatives[i * k..(i + 1) * k].to_vec()).collect();
        if let Some(&bad) = neg_idx.iter().find(|&&j| j >= b * t) {
            return Err(Error::Input(format!("negative index {bad} outside {b} × {t} frames")));
        }
        // A distractor equal to its positive (the same codes) is masked out, as transformers does.
        let y_data = values(y.clone());
        let same = |i: usize, j: usize| y_data[i * f..(i + 1) * f] == y_data[j * f..(j + 1) * f];
        let mut neg_is_pos = vec![false; n * (k + 1)];
        for (r, &i) in masked_at.iter().enumerate() {
            for q in 0..k {
                neg_is_pos[r * (k + 1) + 1 + q] = same(i, neg_idx[r * k + q]);
            }
        }
        let cn = unit(c.reshape([b * t, f]).select(0, rows(masked_at.clone())));
        let yn = unit(y);
        let pos = yn.clone().select(0, rows(masked_at.clone())).reshape([n, 1, f]);
        let neg = yn.select(0, rows(neg_idx)).reshape([n, k, f]);
        let targets = Tensor::cat(vec![pos, neg], 1);
        let logits = cn.unsqueeze_dim::<3>(1).matmul(targets.swap_dims(1, 2)).reshape([n, k + 1]);
        let logits = logits / self.contrastive_temperature;
        let fill = Tensor::<2, Bool>::from_data(TensorData::new(neg_is_pos, [n, k + 1]), &device);
        let logits = logits.mask_fill(fill, -1e9);
        let l = values(logits.clone());
        let correct = (0..n)
            .filter(|&r| {
                let row = &l[r * (k + 1)..(r + 1) * (k + 1)];
                let max = row.iter().cloned().fold(f32::MIN, f32::max);
                let min = row.iter().cloned().fold(f32::MAX, f32::min);
                row[0] == max && max != min
            })
            .count();
        let contrastive_sum = log_softmax(logits, 1).narrow(1, 0, 1).sum().neg();
        let total = (self.quantizer.groups * self.quantizer.vars) as f64;
        let prob_perplexity = scalar(prob_ppl.clone());
        let diversity_sum = (prob_ppl.neg() + total) * (n as f64 / total);
        Ok(PretrainOutput {
            contrastive_sum,
            diversity_sum,
            feature_pen,
            masked: n,
            correct,
            code_perplexity: code_ppl,
            prob_perplexity,
        })
    }

    /// Every tensor (or its gradient) under its `Wav2Vec2ForPreTraining` name, in PyTorch's
    /// layouts.
    pub fn hf_tensors(&self, read: Read) -> Result<Vec<NamedTensor>> {
        let mut out = self.wav2vec2.hf_tensors("wav2vec2.", read)?;
        let q = &self.quantizer;
        named(&mut out, read, "quantizer.codevectors", q.codevectors.val());
        linear_tensors(&mut out, read, "quantizer.weight_proj", &q.weight_proj);
        linear_tensors(&mut out, read, "project_hid", &self.project_hid);
        linear_tensors(&mut out, read, "project_q", &self.project_q);
        Ok(out)
    }
}

impl Quantizer {
    /// Code vectors `[batch, frames, codevector_dim]` of `features` (`[batch, frames, channels]`),
    /// the hard-code perplexity and the (differentiable) probability perplexity, both over the
    /// frames in `over` (all frames when empty).
    pub fn forward(&self, features: Tensor<3>, over: &[usize], quantize: Quantize) -> (Tensor<3>, f64, Tensor<1>) {
        let [b, t, _] = features.dims();
        let (g, v) = (self.groups, self.vars);
        let device = features.device();
        let logits = self.weight_proj.forward(features).reshape([b * t * g, v]);
        let raw = values(logits.clone());
        let argmax = |x: &[f32]| x.iter().enumerate().fold(0, |best, (i, &a)| if a > x[best] { i } else { best });
        let rows: Vec<usize> = if over.is_empty() { (0..b * t).collect() } else { over.to_vec() };
        // Marginal distribution over the selected frames, per group, and its perplexity.
        let hard_codes: Vec<usize> = (0..b * t * g).map(|r| argmax(&raw[r * v..(r + 1) * v])).collect();
        let mut counts = vec![0.0f64; g * v];
        for &i in &rows {
            for gi in 0..g {
                counts[gi * v + hard_codes[i * g + gi]] += 1.0;
            }
        }
        let code_ppl: f64 = (0..g)
            .map(|gi| {
                let h: f64 = counts[gi * v..(gi + 1) * v]
                    .iter()
                    .map(|&c| {
                        let p = c / rows.len().max(1) as f64;
                        -p * (p + 1e-7).ln()
                    })
                    .sum();
                h.exp()
            })
            .sum();
        let one_hot = |codes: &[usize]| {
            let mut h = vec![0.0f32; b * t * g * v];
            for (r, &c) in codes.iter().enumerate() {
                h[r * v + c] = 1.0;
            }
            Tensor::<2>::from_data(TensorData::new(h, [b * t * g, v]), &device)
        };
        let select_rows = |x: Tensor<3>| {
            if over.is_empty() {
                x
            } else {
                let idx: Vec<i64> = rows.iter().map(|&i| i as i64).collect();
                let len = idx.len();
                x.select(0, Tensor::<1, Int>::from_data(TensorData::new(idx, [len]), &device))
            }
        };
        let perplexity = |probs: Tensor<3>| {
            // transformers' _compute_perplexity: exp(entropy of the mean) per group, summed.
            let marginal = select_rows(probs).mean_dim(0); // [1, g, v]
            let entropy = (marginal.clone() * (marginal + 1e-7).log()).sum_dim(2).neg(); // [1, g, 1]
            entropy.exp().sum().reshape([1])
        };
        let (probs, prob_ppl) = match quantize {
            Quantize::Argmax => {
                let hard = one_hot(&hard_codes);
                let ppl = perplexity(hard.clone().reshape([b * t, g, v]));
                (hard, ppl)
            }
            Quantize::Gumbel { temperature, rng } => {
                let noise: Vec<f32> = (0..b * t * g * v)
                    .map(|_| {
                        let u = rng.uniform().clamp(1e-10, 1.0 - 1e-10);
                        -((-(u.ln())).ln()) as f32
                    })
                    .collect();
                let noisy: Vec<f32> = raw.iter().zip(&noise).map(|(a, n)| a + n).collect();
                let codes: Vec<usize> = (0..b * t * g).map(|r| argmax(&noisy[r * v..(r + 1) * v])).collect();
                let noise = Tensor::<2>::from_data(TensorData::new(noise, [b * t * g, v]), &device);
                let soft = softmax((logits.clone() + noise) / temperature, 1);
                let hard = one_hot(&codes) + soft.clone() - soft.detach();
                let ppl = perplexity(softmax(logits.reshape([b * t, g, v]), 2));
                (hard, ppl)
            }
        };
        // Code vector of each frame: per group, its one-hot row times that group's codebook.
        let dg = self.codevectors.dims()[2];
        let book = self.codevectors.val().reshape([g, v, dg]);
        let codes = probs.reshape([b * t, g, v]).swap_dims(0, 1).matmul(book).swap_dims(0, 1);
        (codes.reshape([b, t, g * dg]), code_ppl, prob_ppl)
    }
}

fn scalar(t: Tensor<1>) -> f64 {
    let v: f32 = t.into_scalar();
    v as f64
}

/// What [`PretrainModel::hf_tensors`] reads of each parameter: its value, or its gradient
/// (parameters without one are left out).
#[derive(Clone, Copy)]
pub enum Read<'a> {
    Values,
    Grads(&'a burn::tensor::Gradients),
}

impl Read<'_> {
    fn get<const D: usize>(self, t: Tensor<D>) -> Option<Tensor<D>> {
        match self {
            Read::Values => Some(t),
            Read::Grads(g) => t.grad(g),
        }
    }
}

fn named<const D: usize>(out: &mut Vec<NamedTensor>, read: Read, name: &str, t: Tensor<D>) {
    if let Some(t) = read.get(t) {
        out.push((name.to_string(), t.dims().to_vec(), values(t)));
    }
}

/// A burn `Linear` (`[in, out]`) as PyTorch's `weight` `[out, in]` and `bias`.
fn linear_tensors(out: &mut Vec<NamedTensor>, read: Read, path: &str, l: &Linear) {
    let [d_in, d_out] = l.weight.dims();
    if let Some(w) = read.get(l.weight.val()) {
        let w = values(w);
        let mut t = vec![0.0f32; w.len()];
        for i in 0..d_in {
            for o in 0..d_out {
                t[o * d_in + i] = w[i * d_out + o];
            }
        }
        out.push((format!("{path}.weight"), vec![d_out, d_in], t));
    }
    if let Some(b) = &l.bias {
        named(out, read, &format!("{path}.bias"), b.val());
    }
}

impl SslModel {
    /// Every tensor of a wav2vec2 model under its checkpoint name (after `prefix`), in
    /// PyTorch's layouts: what [`SslModel::load`] reads, written back. PEFT layers are not
    /// included; WavLM's and data2vec-audio's own parts are refused.
    pub fn hf_tensors(&self, prefix: &str, read: Read) -> Result<Vec<NamedTensor>> {
        let mut out = Vec::new();
        let o = &mut out;
        let p = |s: &str| format!("{prefix}{s}");
        for (i, layer) in self.feature_encoder.layers.iter().enumerate() {
            let c = format!("feature_extractor.conv_layers.{i}");
            named(o, read, &p(&format!("{c}.conv.weight")), layer.conv.weight.val());
            if let Some(bias) = &layer.conv.bias {
                named(o, read, &p(&format!("{c}.conv.bias")), bias.val());
            }
            if let Some(n) = &layer.group_norm {
                named(o, read, &p(&format!("{c}.layer_norm.weight")), n.weight.val());
                named(o, read, &p(&format!("{c}.layer_norm.bias")), n.bias.val());
            }
            if let Some(n) = &layer.layer_norm {
                norm_tensors(o, read, &p(&format!("{c}.layer_norm")), n);
            }
        }
        if let Some(n) = &self.feature_norm {
            norm_tensors(o, read, &p("feature_projection.layer_norm"), n);
        }
        linear_tensors(o, read, &p("feature_projection.projection"), &self.projection);
        if let Some(e) = &self.masked_spec_embed {
            named(o, read, &p("masked_spec_embed"), e.val());
        }
        let PosConv::WeightNorm(pc) = &self.encoder.pos_conv else {
            return Err(Error::Input("writing data2vec-audio's stacked positional convs is not supported".into()));
        };
        let pcn = p("encoder.pos_conv_embed.conv");
        named(o, read, &format!("{pcn}.parametrizations.weight.original0"), pc.weight_g.val());
        named(o, read, &format!("{pcn}.parametrizations.weight.original1"), pc.weight_v.val());
        named(o, read, &format!("{pcn}.bias"), pc.bias.val());
        norm_tensors(o, read, &p("encoder.layer_norm"), &self.encoder.layer_norm);
        for (i, l) in self.encoder.layers.iter().enumerate() {
            let a = &l.attention;
            if a.rel.is_some() {
                return Err(Error::Input("writing WavLM's relative position gates is not supported".into()));
            }
            for proj in [&a.q_proj, &a.k_proj, &a.v_proj, &a.out_proj, &l.intermediate_dense, &l.output_dense] {
                linear_tensors(o, read, &p(&proj.name), &proj.base);
            }
            norm_tensors(o, read, &p(&format!("encoder.layers.{i}.layer_norm")), &l.layer_norm);
            norm_tensors(o, read, &p(&format!("encoder.layers.{i}.final_layer_norm")), &l.final_layer_norm);
        }
        Ok(out)
    }
}

fn norm_tensors(out: &mut Vec<NamedTensor>, read: Read, path: &str, n: &crate::layers::LayerNorm) {
    if let Some(w) = &n.weight {
        named(out, read, &format!("{path}.weight"), w.val());
    }
    if let Some(b) = &n.bias {
        named(out, read, &format!("{path}.bias"), b.val());
    }
}

/// transformers' `_compute_mask_indices` for one batch: for each item of valid length `len`,
/// `max(min_masks, floor(prob · len / span + ε))` spans (ε one uniform draw for the batch,
/// capped so they fit) with distinct random starts in `0..=len - span`; `[batch × time]`.
pub fn compute_mask_indices(
    rng: &mut Rng,
    time: usize,
    lengths: &[usize],
    prob: f64,
    span: usize,
    min_masks: usize,
) -> Vec<bool> {
    let mut mask = vec![false; lengths.len() * time];
    if span == 0 || span > time {
        return mask;
    }
    let eps = rng.uniform();
    let spans_for = |len: usize| {
        let mut n = ((prob * len as f64 / span as f64 + eps) as usize).max(min_masks);
        if n * span > time {
            n = time / span;
        }
        (len + 1).saturating_sub(span).min(n)
    };
    for (b, &len) in lengths.iter().enumerate() {
        let len = len.min(time);
        let n = spans_for(len);
        let mut starts: Vec<usize> = (0..(len + 1).saturating_sub(span)).collect();
        // A partial Fisher-Yates shuffle: the first n are a uniform draw without replacement.
        for i in 0..n {
            let j = i + rng.below(starts.len() - i);
            starts.swap(i, j);
        }
        for &s in &starts[..n] {
            mask[b * time + s..b * time + s + span].iter_mut().for_each(|m| *m = true);
        }
    }
    mask
}

/// transformers' `_sample_negative_indices`: for every masked frame, `k` distractors drawn
/// uniformly from the other masked frames of the same item, as indices into the flattened
/// `batch × time` positions; `[batch × time × k]`, 0-based per item offset at unmasked frames.
/// An item with fewer than two masked frames has no distractors: its mask is cleared.
pub fn sample_negative_indices(rng: &mut Rng, time: usize, mask: &mut [bool], k: usize) -> Vec<usize> {
    let batch = mask.len() / time.max(1);
    // Unmasked frames point at their item's first frame (never read).
    let mut out: Vec<usize> = (0..batch * time * k).map(|i| i / (time * k) * time).collect();
    for b in 0..batch {
        let row = &mut mask[b * time..(b + 1) * time];
        let masked: Vec<usize> = (0..time).filter(|&t| row[t]).collect();
        if masked.len() < 2 {
            row.iter_mut().for_each(|m| *m = false);
            continue;
        }
        for (j, &t) in masked.iter().enumerate() {
            for q in 0..k {
                let mut s = rng.below(masked.len() - 1);
                if s >= j {
                    s += 1;
                }
                out[(b * time + t) * k + q] = b * time + masked[s];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_spans_follow_compute_mask_indices() {
        let mut rng = Rng::new(3);
        for _ in 0..50 {
            let m = compute_mask_indices(&mut rng, 100, &[100, 60, 5], 0.65, 10, 2);
            let covered = |b: usize| m[b * 100..(b + 1) * 100].iter().filter(|&&x| x).count();
            // floor(0.65 · 100 / 10 + ε) = 6 or 7 spans of 10 (overlapping), at least 10 frames.
            assert!((10..=70).contains(&covered(0)), "{}", covered(0));
            assert!(m[100 + 60..200].iter().all(|&x| !x), "frames past an item's length are never masked");
            assert!((10..=40).contains(&covered(1)), "{}", covered(1));
            assert_eq!(covered(2), 0, "an item shorter than a span gets no mask");
        }
        // min_masks applies when prob gives none.
        let m = compute_mask_indices(&mut rng, 50, &[50], 0.0, 5, 2);
        assert!((5..=10).contains(&m.iter().filter(|&&x| x).count()));
    }

    #[test]
    fn negatives_are_other_masked_frames_of_the_same_item() {
        let mut rng = Rng::new(5);
        let mut mask = compute_mask_indices(&mut rng, 40, &[40, 40, 40], 0.5, 4, 2);
        mask[80..120].iter_mut().for_each(|m| *m = false);
        mask[85] = true; // a single masked frame: no distractors possible
        let neg = sample_negative_indices(&mut rng, 40, &mut mask, 7);
        assert!(mask[80..120].iter().all(|&m| !m), "the item with one masked frame is unmasked");
        for b in 0..2 {
            for t in (0..40).filter(|&t| mask[b * 40 + t]) {
                for q in 0..7 {
                    let j = neg[(b * 40 + t) * 7 + q];
                    assert!(j / 40 == b && mask[j] && j != b * 40 + t, "item {b} frame {t}: {j}");
                }
            }
        }
    }
}
