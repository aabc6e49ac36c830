//! Five AdamW steps of LoRA + CTC against PyTorch + peft (scripts/make_train_reference.py): same
//! tiny wav2vec2-base fixture, same initial LoRA and head weights, same padded batch and targets.
//! The loss before each step and after the last must match within 1e-3 relative; with
//! mixed precision (bf16 products of the frozen weights) within 2 %.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorData;
use speechtune_models::{ModelInput, Precision, Upstream, UpstreamModel};
use speechtune_peft::LoraConfig;
use speechtune_tasks::{LinearHead, ctc_loss};

fn fixtures() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo")).join("../../tests/fixtures")
}

#[derive(Module, Debug)]
struct Model {
    upstream: UpstreamModel,
    head: LinearHead,
}

/// The six losses (before each of five steps, after the last) and PyTorch's.
fn five_steps(precision: Precision) -> (Vec<f64>, Vec<f64>) {
    let device = Device::flex().autodiff();
    let reference = common::read_reference(&fixtures().join("train-lora-ctc/reference.safetensors"));
    let inputs = common::read_reference(&fixtures().join("wav2vec2-base/reference.safetensors"));
    let f32s = |k: &str, r: &HashMap<String, (Vec<usize>, Vec<f64>)>| -> (Vec<usize>, Vec<f32>) {
        let (s, v) = &r[k];
        (s.clone(), v.iter().map(|&x| x as f32).collect())
    };

    let up = Upstream::load(&fixtures().join("wav2vec2-base"), &device).unwrap();
    let mut upstream = up.model.no_grad();
    let cfg = LoraConfig { r: 4, lora_alpha: 8.0, ..LoraConfig::default() };
    upstream.attach_lora(&cfg, &device).unwrap();
    let lora: HashMap<String, (Vec<usize>, Vec<f32>)> = reference
        .keys()
        .filter_map(|k| k.strip_prefix("lora.").map(|name| (name.to_string(), f32s(k, &reference))))
        .collect();
    assert_eq!(lora.len(), 8, "q and v of 2 layers, A and B");
    upstream.load_lora_state(&up.prefix, &lora).unwrap();

    // torch's Linear keeps [out, in]; burn's [in, out].
    let (ws, w) = f32s("head.weight", &reference);
    let (vocab, hidden) = (ws[0], ws[1]);
    let mut wt = vec![0.0f32; w.len()];
    for o in 0..vocab {
        for i in 0..hidden {
            wt[i * vocab + o] = w[o * hidden + i];
        }
    }
    let mut head = LinearHead::new(hidden, vocab, &device);
    head.out.weight = Param::from_data(TensorData::new(wt, [hidden, vocab]), &device);
    head.out.bias = Some(Param::from_data(TensorData::new(f32s("head.bias", &reference).1, [vocab]), &device));
    let mut model = Model { upstream, head };
    let switched = model.upstream.set_precision(precision);
    assert_eq!(
        switched,
        if precision == Precision::Bf16 { 2 * 6 + 2 } else { 0 },
        "2 layers' projections, the CNN, the positional convolution"
    );

    let (shape, samples) = f32s("batch.input_values", &inputs);
    let mask = &inputs["batch.attention_mask"].1;
    let lengths: Vec<usize> = mask.chunks(shape[1]).map(|m| m.iter().filter(|&&x| x > 0.5).count()).collect();
    let targets: Vec<u32> = reference["targets"].1.iter().map(|&t| t as u32).collect();
    let target_lengths: Vec<usize> = reference["target_lengths"].1.iter().map(|&t| t as usize).collect();
    let targets = vec![targets[..target_lengths[0]].to_vec(), targets[target_lengths[0]..].to_vec()];
    let want = &reference["losses"].1;

    let loss_of = |model: &Model| {
        let input = ModelInput::Waveform {
            samples: Tensor::from_data(TensorData::new(samples.clone(), [shape[0], shape[1]]), &device),
            lengths: lengths.clone(),
        };
        let out = model.upstream.forward(input).unwrap();
        let frames: Vec<f64> = out.frame_lengths.iter().map(|&f| f as f64).collect();
        assert_eq!(frames, reference["frames"].1, "frame lengths");
        let logits = model.head.forward(out.hidden_states.last().unwrap().clone());
        ctc_loss(logits, &out.frame_lengths, &targets, 0).mean()
    };
    let mut optim = speechtune_train::optim::adamw(1e-8, 0.01);
    let mut got = Vec::new();
    for _ in 0..5 {
        let loss = loss_of(&model);
        got.push(loss.clone().into_scalar::<f32>() as f64);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(5e-3, model, grads);
    }
    got.push(loss_of(&model).into_scalar::<f32>() as f64);
    eprintln!("speechtune ({precision}) {got:?}\npytorch (f32)    {want:?}");
    assert!(want[5] < 0.6 * want[0], "the reference must have learned something: {want:?}");
    (got, want.clone())
}

#[test]
fn five_lora_ctc_steps_match_pytorch() {
    let (got, want) = five_steps(Precision::F32);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let rel = (g - w).abs() / w.abs();
        assert!(rel < 1e-3, "loss {i}: {g} vs PyTorch {w} (relative {rel:.2e})");
    }
}

/// Mixed precision learns the same: each loss within 2 % of f32 PyTorch's, and not f32's own
/// values (the bf16 products stay in use through the optimiser's updates of the model).
#[test]
fn five_lora_ctc_steps_in_bf16_stay_near_f32() {
    let (got, want) = five_steps(Precision::Bf16);
    let mut worst = 0.0f64;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let rel = (g - w).abs() / w.abs();
        assert!(rel < 0.02, "loss {i}: {g} in bf16 vs PyTorch {w} in f32 (relative {rel:.2e})");
        worst = worst.max(rel);
    }
    assert!(worst > 1e-4, "bf16 gave f32's losses: {got:?}");
    assert!(got[5] < 0.6 * got[0], "bf16 learned less: {got:?}");
}
