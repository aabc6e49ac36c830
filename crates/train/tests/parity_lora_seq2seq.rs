//! Five AdamW steps of LoRA seq2seq training of Whisper against PyTorch + peft
//! (scripts/make_seq2seq_reference.py): the tiny Whisper fixture with its tokenizer, the same
//! initial LoRA weights (read under peft's names), the same log-mel batch and token sequences.
//! The loss before each step and after the last must match within 1e-3 relative, and so must the
//! trained LoRA weights, written back under peft's names.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorData;
use speechtune_models::whisper::pipeline::Whisper;
use speechtune_models::whisper::tokenizer::Task;
use speechtune_peft::LoraConfig;
use speechtune_train::seq2seq::teacher_forced_loss;

fn fixtures() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo")).join("../../tests/fixtures")
}

fn with_prefix(r: &HashMap<String, (Vec<usize>, Vec<f64>)>, prefix: &str) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    r.iter()
        .filter_map(|(k, (s, v))| {
            k.strip_prefix(prefix).map(|name| (name.to_string(), (s.clone(), v.iter().map(|&x| x as f32).collect())))
        })
        .collect()
}

#[test]
fn five_lora_seq2seq_steps_match_pytorch_and_peft() {
    let device = Device::flex().autodiff();
    let dir = fixtures().join("train-lora-seq2seq");
    let reference = common::read_reference(&dir.join("reference.safetensors"));
    let inputs = common::read_reference(&fixtures().join("whisper-seq2seq/reference.safetensors"));
    let Whisper { model, processor } = Whisper::load(&fixtures().join("whisper-seq2seq"), &device).unwrap();

    // The token sequences: our tokenizer gives the ids transformers' gave for the same text.
    let items: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let eot = processor.tokenizer.special("<|endoftext|>").unwrap();
    let mut sequences = Vec::new();
    for (i, item) in items["items"].as_array().unwrap().iter().enumerate() {
        let lang = processor.tokenizer.language(item["language"].as_str().unwrap()).unwrap();
        let mut ids = processor.tokenizer.prefix(Some(lang), Some(Task::Transcribe), false).unwrap();
        ids.extend(processor.tokenizer.encode(item["text"].as_str().unwrap()).unwrap());
        ids.push(eot);
        let want: Vec<u32> = reference[&format!("sequence.{i}")].1.iter().map(|&t| t as u32).collect();
        assert_eq!(ids, want, "item {i}");
        sequences.push(ids);
    }
    assert_ne!(sequences[0].len(), sequences[1].len(), "the batch must need padding");

    let mut model = model.no_grad();
    let cfg = LoraConfig { r: 4, lora_alpha: 8.0, ..LoraConfig::default() };
    let names = model.attach_lora(&cfg, &device).unwrap();
    // 2 encoder layers × q, v + 2 decoder layers × (self, cross) × q, v.
    assert_eq!(names.len(), 12, "{names:?}");
    let init = with_prefix(&reference, "init.");
    let ours: BTreeSet<String> = model.lora_state(&model.prefix).into_iter().map(|t| t.0).collect();
    assert_eq!(ours, init.keys().cloned().collect::<BTreeSet<_>>(), "peft's tensor names");
    let prefix = model.prefix.clone();
    model.load_lora_state(&prefix, &init).unwrap();

    let (shape, features) = &inputs["input_features"];
    let features: Vec<f32> = features.iter().map(|&x| x as f32).collect();
    let want = &reference["losses"].1;
    let loss_of = |m: &speechtune_models::whisper::seq2seq::WhisperSeq2Seq| {
        let x = Tensor::<3>::from_data(TensorData::new(features.clone(), [shape[0], shape[1], shape[2]]), &device);
        let enc = m.encode(x, false).unwrap();
        teacher_forced_loss(m, &enc, &sequences, eot).unwrap()
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
    eprintln!("speechtune {got:?}\npytorch    {want:?}");
    assert!(want[5] < 0.95 * want[0], "the reference must have learned something: {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let rel = (g - w).abs() / w.abs();
        assert!(rel < 1e-3, "loss {i}: {g} vs PyTorch {w} (relative {rel:.2e})");
    }
    // The trained LoRA weights, under peft's names.
    let fin = with_prefix(&reference, "final.");
    for (name, shape, v) in model.lora_state(&model.prefix) {
        let (s, w) = &fin[&name];
        assert_eq!(&shape, s, "{name}");
        let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = v.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff <= 1e-3 * scale, "{name}: max difference {diff:e} (largest value {scale:e})");
    }
}
