//! wav2vec 2.0 pre-training against transformers' `Wav2Vec2ForPreTraining` (eval mode, argmax
//! quantizer) on the fixtures of `scripts/make_pretrain_fixtures.py`: the losses, the perplexity,
//! fairseq's feature penalty and the gradient of every parameter, for both layouts; and the
//! Gumbel path's statistics.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::fixtures;
use speechtune_data::Rng;
use speechtune_models::burn::prelude::*;
use speechtune_models::burn::tensor::TensorData;
use speechtune_models::config::ModelConfig;
use speechtune_models::ssl::pretrain::{PretrainModel, Quantize, Read};
use speechtune_models::weights::Weights;

/// Every tensor of a reference file, as (shape, values as f64) whatever its dtype.
fn reference(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let v: Vec<f64> = match view.dtype() {
                safetensors::Dtype::F32 => {
                    view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect()
                }
                safetensors::Dtype::I64 => {
                    view.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect()
                }
                d => panic!("{name}: unexpected dtype {d:?}"),
            };
            (name, (view.shape().to_vec(), v))
        })
        .collect()
}

fn load(dir: &Path, device: &Device) -> (PretrainModel, speechtune_models::config::SslConfig) {
    let ModelConfig::Ssl(cfg) = ModelConfig::from_dir(dir).unwrap() else { panic!("wav2vec2 config") };
    let mut w = Weights::open_dir(dir).unwrap();
    (PretrainModel::load(&cfg, &mut w, device).unwrap(), cfg)
}

/// The reference's audio, mask and distractor indices.
fn inputs(r: &HashMap<String, (Vec<usize>, Vec<f64>)>, device: &Device) -> (Tensor<2>, Vec<bool>, Vec<usize>) {
    let (xs, x) = &r["input_values"];
    let x: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let samples = Tensor::<2>::from_data(TensorData::new(x, [xs[0], xs[1]]), device);
    let mask: Vec<bool> = r["mask_time_indices"].1.iter().map(|&v| v != 0.0).collect();
    let neg: Vec<usize> = r["sampled_negative_indices"].1.iter().map(|&v| v as usize).collect();
    (samples, mask, neg)
}

fn rel(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-6)
}

fn parity(name: &str) {
    let dir = fixtures().join(name);
    let r = reference(&dir.join("reference.safetensors"));
    let device = Device::flex().autodiff();
    let (model, cfg) = load(&dir, &device);
    let (samples, mask, neg) = inputs(&r, &device);
    let out = model.forward(samples, &mask, &neg, Quantize::Argmax, 1.0).unwrap();
    assert_eq!(out.masked, mask.iter().filter(|&&m| m).count());
    let loss = out.contrastive_sum.clone() + out.diversity_sum.clone() * cfg.diversity_loss_weight;
    let scalar = |t: &Tensor<1>| t.clone().into_scalar::<f32>() as f64;
    for (key, got) in [
        ("loss", scalar(&loss)),
        ("contrastive_loss", scalar(&out.contrastive_sum)),
        ("diversity_loss", scalar(&out.diversity_sum)),
        ("codevector_perplexity", out.prob_perplexity),
        ("feature_pen", scalar(&out.feature_pen)),
    ] {
        let want = r[key].1[0];
        assert!(rel(got, want) < 1e-4, "{name} {key}: {got} vs transformers {want}");
    }
    // Eval mode: the code perplexity of the hard codes is what transformers reports.
    assert!(rel(out.code_perplexity, r["codevector_perplexity"].1[0]) < 1e-4);

    let grads = loss.backward();
    let ours: HashMap<String, (Vec<usize>, Vec<f32>)> =
        model.hf_tensors(Read::Grads(&grads)).unwrap().into_iter().map(|(n, s, v)| (n, (s, v))).collect();
    let theirs: Vec<&String> = r.keys().filter(|k| k.starts_with("grad.")).collect();
    assert_eq!(ours.len(), theirs.len(), "{name}: gradients computed for {:?}", ours.keys().collect::<Vec<_>>());
    // Each tensor compared relative to its own largest value. The key biases are the
    // exception: their true gradient is zero (softmax ignores a shift shared by all keys), so
    // both sides hold rounding noise there, which must stay at rounding level.
    let global = theirs.iter().flat_map(|k| r[*k].1.iter()).fold(0.0f64, |m, v| m.max(v.abs()));
    let mut worst = (0.0f64, String::new());
    for key in theirs {
        let pname = &key["grad.".len()..];
        let (shape, want) = &r[key];
        let (s, got) = ours.get(pname).unwrap_or_else(|| panic!("{name}: no gradient for {pname}"));
        assert_eq!(s, shape, "{pname}");
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-6);
        let diff = got.iter().zip(want).fold(0.0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
        if pname.ends_with("k_proj.bias") {
            let ours = got.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
            assert!(scale.max(ours) < 1e-5 * global, "{name} {pname}: {scale:.2e} / {ours:.2e} is not zero");
            continue;
        }
        if std::env::var_os("PRETRAIN_PARITY_DEBUG").is_some() {
            eprintln!("{pname}: max |grad| {scale:.3e}, max diff {diff:.3e} (global {global:.3e})");
        }
        if diff / scale > worst.0 {
            worst = (diff / scale, pname.to_string());
        }
    }
    assert!(worst.0 < 1e-4, "{name}: gradient of {} differs by {:.2e} of its largest value", worst.1, worst.0);
    // transformers' eval-mode quantizer takes an argmax: no gradient reaches its logits.
    assert!(!ours.contains_key("quantizer.weight_proj.weight"));
}

#[test]
fn base_layout_matches_transformers() {
    parity("pretrain-base");
}

#[test]
fn large_layout_matches_transformers() {
    parity("pretrain-xlsr");
}

#[test]
fn written_checkpoint_reads_back_identically() {
    let dir = fixtures().join("pretrain-base");
    let device = Device::flex();
    let (model, _) = load(&dir, &device);
    let ours = model.hf_tensors(Read::Values).unwrap();
    let file = speechtune_models::state::read_safetensors(&dir.join("model.safetensors")).unwrap();
    assert_eq!(ours.len(), file.len(), "every tensor of the checkpoint is written, nothing else");
    for (n, s, v) in &ours {
        let (fs, fv) = file.get(n).unwrap_or_else(|| panic!("{n} is not a checkpoint name"));
        assert_eq!((s, v), (fs, fv), "{n}");
    }
}

#[test]
fn gumbel_codes_are_hard_one_hot_with_a_soft_gradient() {
    let dir = fixtures().join("pretrain-base");
    let r = reference(&dir.join("reference.safetensors"));
    let device = Device::flex().autodiff();
    let (model, cfg) = load(&dir, &device);
    let (samples, mask, neg) = inputs(&r, &device);
    let mut rng = Rng::new(1);
    let gumbel = Quantize::Gumbel { temperature: 2.0, rng: &mut rng };
    let out = model.forward(samples.clone(), &mask, &neg, gumbel, 1.0).unwrap();
    // The soft perplexity lies between 1 per group and the codebook size, and the loss is finite.
    let (g, v) = (cfg.num_codevector_groups as f64, cfg.num_codevectors_per_group as f64);
    assert!(out.prob_perplexity > g && out.prob_perplexity < g * v, "{}", out.prob_perplexity);
    let loss = out.loss(cfg.diversity_loss_weight, 0.0);
    assert!(loss.clone().into_scalar::<f32>().is_finite());
    // Straight-through: the quantizer's logits get a gradient, unlike the argmax path.
    let grads = loss.backward();
    let w = model.quantizer.weight_proj.weight.val().grad(&grads).expect("a gradient into weight_proj");
    let gw: Vec<f32> = w.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    assert!(gw.iter().any(|x| x.abs() > 0.0) && gw.iter().all(|x| x.is_finite()));
    // Hard forward: every frame's code vector is one codebook entry per group, exactly.
    let normed = model.wav2vec2.normalize_features(model.wav2vec2.extract_features(samples));
    let mut rng = Rng::new(9);
    let (codes, _, _) = model.quantizer.forward(normed, &[], Quantize::Gumbel { temperature: 2.0, rng: &mut rng });
    let [b, t, d] = codes.dims();
    let codes: Vec<f32> = codes.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    let book: Vec<f32> = model.quantizer.codevectors.val().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    let (gi, vi) = (cfg.num_codevector_groups, cfg.num_codevectors_per_group);
    let dg = d / gi;
    let mut used = std::collections::HashSet::new();
    for f in 0..b * t {
        for g in 0..gi {
            let got = &codes[f * d + g * dg..f * d + (g + 1) * dg];
            // Straight-through arithmetic (hard + soft - soft) may leave a rounding error.
            let close = |e: usize| {
                let row = &book[(g * vi + e) * dg..(g * vi + e + 1) * dg];
                row.iter().zip(got).all(|(a, b)| (a - b).abs() <= 1e-6 * a.abs().max(1.0))
            };
            let entry = (0..vi).find(|&e| close(e));
            used.insert((g, entry.unwrap_or_else(|| panic!("frame {f} group {g}: not a codebook entry"))));
        }
    }
    assert!(used.len() > gi, "the noise spreads frames over several entries: {used:?}");
}
