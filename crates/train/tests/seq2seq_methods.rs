//! `seq2seq_asr` with adapters, BitFit and full fine-tuning, and the methods and models it
//! refuses.

mod common;

use common::{
    opts, seq2seq_config as config, seq2seq_config_text as config_text, seq2seq_corpus as corpus,
    whisper_fixture as fixture,
};
use speechtune_train::seq2seq;
use speechtune_train::{RunConfig, train};

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
    // SpecAugment on the log-mel input and encoder LayerDrop: the same first batch, another loss.
    let lora = "kind = \"lora\"\nr = 4";
    let plain = train(&config(tmp.path(), "plain", lora, 2), &opts()).unwrap();
    let text = config_text(tmp.path(), "augmented", lora, 2)
        + "[augment]\nmask_time_prob = 0.5\nmask_time_length = 5\nmask_feature_prob = 0.3\nmask_feature_length = 10\nlayerdrop = 0.3\n";
    let augmented = train(&RunConfig::from_toml(&text).unwrap(), &opts()).unwrap();
    let (a, b) = (common::losses(&plain.run_dir), common::losses(&augmented.run_dir));
    assert!(b.iter().all(|l| l.is_finite()) && a[0] != b[0], "{a:?} vs {b:?}");

    // An encoder-only model cannot write text.
    let mut cfg = config(tmp.path(), "ssl", "kind = \"full\"", 2);
    cfg.upstream.model = fixture().join("../wav2vec2-base").canonicalize().unwrap().display().to_string();
    let err = train(&cfg, &opts()).unwrap_err().to_string();
    assert!(err.contains("needs a Whisper model"), "{err}");
}
