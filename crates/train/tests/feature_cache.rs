//! The frozen-CNN feature cache changes speed, not results. Its own test binary: the two runs
//! must draw the same random numbers from the backend's per-process generator.

mod common;

use common::{config, losses, mini_corpus, opts};
use speechtune_train::feature_cache::CacheKind;
use speechtune_train::train;

#[test]
fn cached_cnn_features_train_like_the_cnn() {
    let tmp = tempfile::tempdir().unwrap();
    mini_corpus(tmp.path());
    // 12 utterances in 12-s batches: an epoch is a few updates, so later steps hit the cache;
    // masks and LayerDrop are drawn on top of cached features as on computed ones.
    let extra = "[augment]\nmask_time_prob = 0.3\nmask_time_length = 3\nlayerdrop = 0.2";
    let method = "kind = \"lora\"\nr = 4\nlora_dropout = 0.1";
    let mut cfg = config(tmp.path(), &tmp.path().join("cached"), "joint_asr_lid", method, extra);
    cfg.train.steps = 8;
    let cached = train(&cfg, &opts()).unwrap();
    let stats = cached.feature_cache.expect("LoRA on a frozen CNN uses the cache");
    assert_eq!(stats.kind, CacheKind::CnnFeatures);
    assert_eq!(stats.misses, 12, "each training utterance goes through the CNN once");
    assert!(stats.hits > 0 && stats.bytes > 0, "{stats:?}");

    cfg.output_dir = tmp.path().join("computed");
    cfg.data.cache_features_gb = 0.0;
    let computed = train(&cfg, &opts()).unwrap();
    assert!(computed.feature_cache.is_none());

    let (a, b) = (losses(&cached.run_dir), losses(&computed.run_dir));
    assert_eq!(a.len(), 8);
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        // Same arithmetic on the valid frames; only the GEMM blocking of a shorter input differs.
        assert!((x - y).abs() <= 1e-4 * y.abs(), "step {}: cached {x} vs computed {y}", step + 1);
    }

    // BitFit trains the CNN's biases: no cache.
    let mut bitfit = config(tmp.path(), &tmp.path().join("bitfit"), "asr", "kind = \"bitfit\"", "");
    bitfit.train.steps = 1;
    assert!(train(&bitfit, &opts()).unwrap().feature_cache.is_none());
}
