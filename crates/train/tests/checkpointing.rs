//! Activation checkpointing trains to the same weights. Its own test binary: the backend's
//! random generator is per process (LoRA and head initialisation draw from it), and tests
//! running beside it in threads would draw from it too.

mod common;

use std::path::PathBuf;

use common::{config, losses, mini_corpus, opts};
use speechtune_train::train;

#[test]
fn activation_checkpointing_trains_to_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    mini_corpus(tmp.path());
    let method = "kind = \"lora\"\nr = 4\nlora_dropout = 0.0";
    let mut runs = Vec::new();
    for checkpointing in [false, true] {
        let out = tmp.path().join(format!("ckpt_{checkpointing}"));
        let mut cfg = config(tmp.path(), &out, "asr", method, "");
        cfg.task.dropout = 0.0;
        cfg.train.activation_checkpointing = checkpointing;
        train(&cfg, &opts()).unwrap();
        runs.push(out);
    }
    let (a, b) = (losses(&runs[0]), losses(&runs[1]));
    assert_eq!(a.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-6 * x.abs(), "{a:?} vs {b:?}");
    }
    let read = |run: &PathBuf| {
        speechtune_models::state::read_safetensors(&run.join("best/adapter_model.safetensors")).unwrap()
    };
    let (wa, wb) = (read(&runs[0]), read(&runs[1]));
    for (name, (_, v)) in &wa {
        let d = v.iter().zip(&wb[name].1).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(d <= 1e-6, "{name}: {d}");
    }
}
