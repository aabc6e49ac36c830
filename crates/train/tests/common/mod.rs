//! A small corpus cut from the demo corpus and run configs over it, shared by the training tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use speechtune_train::{RunConfig, TrainOptions};

fn demo() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo")).join("../../data/demo")
}

/// Two languages, 6 training and 2 dev utterances each, in ML-SUPERB layout, and the same
/// files in a TSV manifest whose `label` is the language family (for `classify`).
pub fn mini_corpus(root: &Path) {
    let mut manifest = String::from("path\tlang\tlabel\tsplit\n");
    for (lang, family) in [("deu", "germanic"), ("spa", "romance")] {
        let src = demo().join("espeak").join(lang);
        let dst = root.join("mini").join(lang);
        std::fs::create_dir_all(dst.join("wav")).unwrap();
        for (split, take) in [("train", 6), ("dev", 2)] {
            let text = std::fs::read_to_string(src.join(format!("transcript_10min_{split}.txt"))).unwrap();
            let lines: Vec<&str> = text.lines().take(take).collect();
            for l in &lines {
                let id = l.split_whitespace().next().unwrap();
                std::fs::copy(src.join("wav").join(format!("{id}.ogg")), dst.join("wav").join(format!("{id}.ogg")))
                    .unwrap();
                manifest += &format!("mini/{lang}/wav/{id}.ogg\t{lang}\t{family}\t{split}\n");
            }
            std::fs::write(dst.join(format!("transcript_10min_{split}.txt")), lines.join("\n") + "\n").unwrap();
        }
    }
    std::fs::write(root.join("families.tsv"), manifest).unwrap();
}

pub fn config(root: &Path, out: &Path, task: &str, method: &str, extra: &str) -> RunConfig {
    let data = if task == "classify" { root.join("families.tsv") } else { root.to_path_buf() };
    RunConfig::from_toml(&format!(
        r#"
output_dir = {out:?}
[upstream]
model = "builtin:tiny"
[method]
{method}
[task]
kind = "{task}"
[data]
root = {root:?}
workers = 1
[data.batch]
max_seconds = 12.0
[train]
steps = 3
lr = 1e-3
{extra}
"#,
        out = out.display().to_string(),
        root = data.display().to_string(),
    ))
    .unwrap()
}

pub const METHODS: [(&str, &str); 8] = [
    ("frozen", "kind = \"frozen\""),
    ("lora", "kind = \"lora\"\nr = 4"),
    ("full", "kind = \"full\""),
    ("adapter", "kind = \"adapter\"\nreduction_factor = 8"),
    ("conv_adapter", "kind = \"conv_adapter\""),
    ("prefix", "kind = \"prefix\"\nnum_virtual_tokens = 4"),
    ("bitfit", "kind = \"bitfit\""),
    ("s3_router", "kind = \"s3_router\"\nprune_rate = 0.9"),
];

pub fn opts() -> TrainOptions {
    TrainOptions { progress: false, resume: false }
}

/// The training losses a run logged in `metrics.jsonl`, in order.
pub fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get("loss")?.as_f64())
        .collect()
}

/// Every tensor of a reference safetensors file as f64 (f32, f64 or i64 on disk).
pub fn read_reference(path: &Path) -> std::collections::HashMap<String, (Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let d = v.data();
            let vals: Vec<f64> = match v.dtype() {
                safetensors::Dtype::F32 => {
                    d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect()
                }
                safetensors::Dtype::F64 => {
                    d.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
                }
                safetensors::Dtype::I64 => {
                    d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect()
                }
                other => panic!("{name}: {other:?}"),
            };
            (name, (v.shape().to_vec(), vals))
        })
        .collect()
}

// Whisper seq2seq: the tiny Whisper fixture (1-s window) and a corpus of four short tones.

pub fn whisper_fixture() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("../../tests/fixtures/whisper-seq2seq")
}

/// A 16-kHz FLAC file.
fn flac(path: &Path, samples: &[f32]) {
    std::fs::write(path, speechtune_audio::flac::encode_flac(samples).unwrap()).unwrap();
}

/// Four "words", each a tone of its own pitch, 0.5-0.9 s; two German, two English; dev and test
/// repeat the training items (the test asks whether the model learns them).
pub fn seq2seq_corpus(root: &Path) {
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

pub fn seq2seq_config(root: &Path, out: &str, method: &str, steps: usize) -> RunConfig {
    RunConfig::from_toml(&seq2seq_config_text(root, out, method, steps)).unwrap()
}

pub fn seq2seq_config_text(root: &Path, out: &str, method: &str, steps: usize) -> String {
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
        model = whisper_fixture().display().to_string(),
        data = root.join("manifest.tsv").display().to_string(),
    )
}
