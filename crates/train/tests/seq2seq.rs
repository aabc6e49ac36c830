//! `seq2seq_asr`: Whisper fine-tuned as a whole on a tiny corpus (the tiny Whisper fixture with its
//! tokenizer; its window is 1 s, so the clips are short tones). Its own test binary: training is
//! seeded per process (see resume.rs).

use std::path::Path;

use speechtune_data::Split;
use speechtune_train::seq2seq;
use speechtune_train::{RunConfig, TrainOptions, train};

fn fixture() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("../../tests/fixtures/whisper-seq2seq")
}

/// A 16-kHz FLAC file.
fn flac(path: &Path, samples: &[f32]) {
    std::fs::write(path, speechtune_audio::flac::encode_flac(samples).unwrap()).unwrap();
}

/// Four "words", each a tone of its own pitch, 0.5-0.9 s; two German, two English; dev and test
/// repeat the training items (the test asks whether the model learns them).
fn corpus(root: &Path) {
    let items = [("der", "deu", 220.0), ("an", "deu", 330.0), ("the", "eng", 440.0), ("in", "eng", 550.0)];
    let mut manifest = String::from("path\ttext\tlang\tsplit\n");
    for (k, (text, lang, hz)) in items.iter().enumerate() {
        let n = 8000 + 2000 * k;
        let samples: Vec<f32> =
            (0..n).map(|i| 0.5 * (2.0 * std::f32::consts::PI * hz * i as f32 / 16000.0).sin()).collect();
        let name = format!("{text}.flac");
        flac(&root.join(&name), &samples);
        for split in ["train", "dev", "test"] {
            manifest += &format!("{name}\t{text}\t{lang}\t{split}\n");
        }
    }
    std::fs::write(root.join("manifest.tsv"), manifest).unwrap();
}

fn config(root: &Path, out: &str, method: &str, steps: usize) -> RunConfig {
    RunConfig::from_toml(&config_text(root, out, method, steps)).unwrap()
}

fn config_text(root: &Path, out: &str, method: &str, steps: usize) -> String {
    format!(
        r#"
output_dir = {out:?}
[upstream]
model = {model:?}
[method]
{method}
[task]
kind = "seq2seq_asr"
max_new_tokens = 8
[data]
root = {data:?}
workers = 1
[data.batch]
max_seconds = 4.0
[train]
steps = {steps}
lr = 1e-2
checkpoint_every = 2
keep_last = 5
"#,
        out = root.join(out).display().to_string(),
        model = fixture().display().to_string(),
        data = root.join("manifest.tsv").display().to_string(),
    )
}

fn opts() -> TrainOptions {
    TrainOptions::default()
}

#[test]
fn lora_seq2seq_learns_the_corpus_resumes_exactly_and_reloads() {
    let tmp = tempfile::tempdir().unwrap();
    corpus(tmp.path());
    let lora = "kind = \"lora\"\nr = 8\nlora_alpha = 16";
    let mut cfg = config(tmp.path(), "lora", lora, 150);
    cfg.train.lr = 2e-2;
    let s = train(&cfg, &opts()).unwrap();
    assert_eq!(s.steps, 150);
    // q and v of 2 encoder layers and of both attentions of 2 decoder layers, r = 8, d = 32.
    assert_eq!(s.trainable_parameters, 12 * 2 * 8 * 32, "{s:?}");
    assert!(s.first.cer > 0.9, "an untrained tiny model gets nothing right: {:?}", s.first);
    assert!(s.best.cer < 0.2, "dev CER {} -> {}", s.first.cer, s.best.cer);
    let adapter: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.best_dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(adapter["peft_type"], "LORA");
    assert_eq!(adapter["r"], 8);
    let names = speechtune_models::state::read_safetensors(&s.best_dir.join("adapter_model.safetensors")).unwrap();
    assert!(
        names.contains_key("base_model.model.model.decoder.layers.1.encoder_attn.v_proj.lora_B.weight"),
        "{:?}",
        names.keys()
    );

    // Read back from the run folder (best/, LoRA merged): the same dev scores as in training.
    let device = burn::prelude::Device::flex();
    let (cfg_back, whisper, dir) = seq2seq::load(&cfg.output_dir, &device, true).unwrap();
    assert_eq!(dir, s.best_dir);
    let dev = seq2seq::read_prepared(Split::Dev, &cfg_back, &whisper).unwrap();
    let mut hyps = Vec::new();
    let report = seq2seq::evaluate(&whisper.model, &whisper.processor, &dev, &cfg_back, 0, 1, &device, |_, h| {
        hyps.push(h.to_string())
    })
    .unwrap();
    assert_eq!(report.cer, s.best.cer, "{hyps:?}");
    assert_eq!(hyps.len(), 4);

    // Killed after its step-2 checkpoint, then resumed: the same adapter at step 4 as a run
    // that was never interrupted.
    let whole = train(&config(tmp.path(), "whole", lora, 4), &opts()).unwrap();
    let killed = config(tmp.path(), "killed", lora, 4);
    train(&killed, &opts()).unwrap();
    std::fs::remove_dir_all(killed.output_dir.join("checkpoints/step-4")).unwrap();
    std::fs::remove_dir_all(killed.output_dir.join("best")).unwrap();
    let err = train(&killed, &opts()).unwrap_err().to_string();
    assert!(err.contains("--resume"), "{err}");
    let resumed = train(&killed, &TrainOptions { resume: true, ..opts() }).unwrap();
    assert_eq!(resumed.resumed_from, Some(2));
    let file = |run: &Path| std::fs::read(run.join("checkpoints/step-4/adapter_model.safetensors")).unwrap();
    assert!(file(&whole.run_dir) == file(&killed.output_dir), "the resumed adapter differs");
}

#[test]
fn adapters_bitfit_and_full_train_and_the_rest_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    corpus(tmp.path());
    let mut trained = Vec::new();
    for (name, method) in [
        ("adapter", "kind = \"adapter\"\nreduction_factor = 4"),
        ("bitfit", "kind = \"bitfit\""),
        ("full", "kind = \"full\""),
    ] {
        let s = train(&config(tmp.path(), name, method, 2), &opts()).unwrap();
        assert!(s.trainable_parameters > 0 && s.trainable_parameters < s.total_parameters, "{name}: {s:?}");
        let saved = speechtune_models::state::read_safetensors(&s.best_dir.join("upstream.safetensors")).unwrap();
        assert!(!saved.is_empty(), "{name}");
        let device = burn::prelude::Device::flex();
        seq2seq::load(&s.run_dir, &device, true).unwrap();
        trained.push((name, s.trainable_parameters));
    }
    // Houlsby adapters (d 32 → 8 → 32, two per layer) in 2 encoder and 2 decoder layers.
    assert_eq!(trained[0].1, 4 * 2 * (32 * 8 + 8 + 8 * 32 + 32), "{trained:?}");
    for method in ["kind = \"frozen\"", "kind = \"prefix\"", "kind = \"s3_router\""] {
        let text = config_text(tmp.path(), "refused", method, 2);
        let err = RunConfig::from_toml(&text).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("seq2seq_asr trains with lora, adapter, bitfit or full"), "{err}");
    }
    // An encoder-only model cannot write text.
    let mut cfg = config(tmp.path(), "ssl", "kind = \"full\"", 2);
    cfg.upstream.model = fixture().join("../wav2vec2-base").canonicalize().unwrap().display().to_string();
    let err = train(&cfg, &opts()).unwrap_err().to_string();
    assert!(err.contains("needs a Whisper model"), "{err}");
}
