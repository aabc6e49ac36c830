//! `seq2seq_asr`: Whisper fine-tuned as a whole with LoRA on a tiny corpus (the tiny Whisper
//! fixture with its tokenizer; its window is 1 s, so the clips are short tones). Its own test
//! binary: training is seeded per process, and the resumed run must equal the uninterrupted one
//! bit for bit (see resume.rs).

mod common;

use std::path::Path;

use common::{opts, seq2seq_config as config, seq2seq_corpus as corpus};
use speechtune_data::Split;
use speechtune_train::seq2seq;
use speechtune_train::{TrainOptions, train};

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
