//! Export: a pruned or LoRA-adapted upstream written as a Hugging Face model directory loads
//! back to the same outputs, with exact zeros where masks drop weights; magnitude pruning keeps
//! the requested fraction per layer or overall.

mod common;

use common::{fixtures, reference, values};
use speechtune_models::Upstream;
use speechtune_models::burn::module::Param;
use speechtune_models::burn::prelude::*;
use speechtune_models::export::{Source, export_hf};
use speechtune_models::weights::Weights;
use speechtune_peft::{LoraConfig, PruneScope, mask::kept};

fn last_hidden(up: &Upstream, wave: &[f32], device: &Device) -> Vec<f32> {
    values(up.forward_waves(&[wave.to_vec()], device).unwrap().hidden_states.last().unwrap())
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Export `up` (built from `source`), load the folder back, compare outputs; returns the folder's
/// weights and masks.
fn round_trip(source: &Source, up: &Upstream, wave: &[f32], out: &std::path::Path) -> (Weights, Option<Weights>) {
    let device = Device::flex();
    let layers = export_hf(source, &up.model, out).unwrap();
    let back = Upstream::load(out, &device).unwrap();
    let d = max_diff(&last_hidden(up, wave, &device), &last_hidden(&back, wave, &device));
    assert!(d < 1e-5, "{}: exported model differs by {d}", out.display());
    let masks = out.join("masks.safetensors");
    assert_eq!(masks.is_file(), !layers.is_empty());
    let weights = Weights::open_safetensors(&[out.join("model.safetensors")]).unwrap();
    (weights, masks.is_file().then(|| Weights::open_safetensors(&[masks]).unwrap()))
}

#[test]
fn magnitude_pruned_models_export_with_zeros_where_masked() {
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    for name in ["wav2vec2-base", "whisper"] {
        let dir = fixtures().join(name);
        let r = reference(&dir.join("reference.safetensors"));
        let wave = r["single.raw"].1.clone();
        let source = Source::Dir(dir.clone());
        let mut up = Upstream::load(&dir, &device).unwrap();
        let names = up.model.prune_magnitude(0.7, PruneScope::Layer, false);
        assert_eq!(names.len(), up.model.projections().len());
        let out = tmp.path().join(format!("{name}-pruned"));
        let (weights, masks) = round_trip(&source, &up, &wave, &out);
        let masks = masks.expect("masks written");
        let prefix = up.prefix.clone();
        for p in up.model.projections() {
            let key = format!("{prefix}{}.weight", p.name);
            let shape = [p.d_out(), p.d_in()];
            let m = masks.values(&key, &shape).unwrap();
            let w = weights.values(&key, &shape).unwrap();
            let n = m.len();
            assert_eq!(m.iter().filter(|&&x| x == 1.0).count(), kept(n, 0.7), "{key}: kept count");
            assert!(w.iter().zip(&m).all(|(w, m)| *m == 1.0 || *w == 0.0), "{key}: pruned weights are zero");
            // Kept weights are the largest in magnitude.
            let kept_min = w.iter().zip(&m).filter(|(_, m)| **m == 1.0).map(|(w, _)| w.abs()).fold(f32::MAX, f32::min);
            let orig = Weights::open_dir(&dir).unwrap().values(&key, &shape).unwrap();
            let dropped_max = orig.iter().zip(&m).filter(|(_, m)| **m == 0.0).map(|(w, _)| w.abs()).fold(0.0, f32::max);
            assert!(dropped_max <= kept_min, "{key}: dropped {dropped_max} > kept {kept_min}");
        }
        // Everything that is not a projection weight is copied unchanged.
        let orig = Weights::open_dir(&dir).unwrap();
        let mut copied = 0;
        for name in weights.names().filter(|n| !names.iter().any(|p| *n == format!("{prefix}{p}.weight"))) {
            let shape = weights.shape(name).unwrap();
            assert_eq!(weights.values(name, &shape).unwrap(), orig.values(name, &shape).unwrap(), "{name}");
            copied += 1;
        }
        assert!(copied > 10, "{name}: {copied} tensors copied");
    }
}

#[test]
fn global_pruning_hits_the_overall_fraction_and_lora_merges() {
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    let wave: Vec<f32> = (0..8000).map(|i| ((i as f32) * 0.013).sin() * 0.5).collect();
    let source = Source::Tiny(3);
    let (mut up, _) = source.open(&device).unwrap();
    up.model.prune_magnitude(0.6, PruneScope::Global, true);
    let masked: Vec<_> = up.model.projections().into_iter().filter(|p| p.mask.is_some()).collect();
    assert_eq!(masked.len(), 8, "fix_attn: the two feed-forward projections of 4 layers");
    let (_, masks) = round_trip(&source, &up, &wave, &tmp.path().join("global"));
    let masks = masks.unwrap();
    let (mut n, mut k) = (0, 0);
    for name in masks.names() {
        let shape = masks.shape(name).unwrap();
        let m = masks.values(name, &shape).unwrap();
        n += m.len();
        k += m.iter().filter(|&&x| x == 1.0).count();
    }
    assert_eq!(k, kept(n, 0.6), "global: {k} of {n}");

    // LoRA with a non-zero update merges into the exported weights.
    let (mut up, _) = source.open(&device).unwrap();
    let cfg = LoraConfig { r: 4, ..LoraConfig::default() };
    up.model.attach_lora(&cfg, &device).unwrap();
    for p in up.model.projections_mut() {
        if let Some(l) = p.lora.as_mut() {
            let [r, o] = l.b.dims();
            l.b = Param::from_tensor(Tensor::random(
                [r, o],
                speechtune_models::burn::tensor::Distribution::Normal(0.0, 0.1),
                &device,
            ));
        }
    }
    let (weights, masks) = round_trip(&source, &up, &wave, &tmp.path().join("lora"));
    assert!(masks.is_none());
    assert!(weights.names().all(|n| !n.contains("lora")));
}
