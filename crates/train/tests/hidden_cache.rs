//! The frozen-upstream hidden-state cache changes speed, not results (f32), or results within
//! f16 rounding (`data.cache_f16`). Its own test binary: runs compared step by step must draw
//! the same random numbers (head dropout) from the backend's per-process generator.

mod common;

use common::{config, losses, mini_corpus, opts};
use speechtune_train::feature_cache::CacheKind;
use speechtune_train::train;

#[test]
fn cached_hidden_states_train_like_the_upstream() {
    let tmp = tempfile::tempdir().unwrap();
    mini_corpus(tmp.path());
    let frozen = "kind = \"frozen\"";
    let mut cfg = config(tmp.path(), &tmp.path().join("cached"), "joint_asr_lid", frozen, "");
    cfg.train.steps = 8;
    let cached = train(&cfg, &opts()).unwrap();
    let stats = cached.feature_cache.expect("a frozen upstream uses the cache");
    assert_eq!(stats.kind, CacheKind::HiddenStates);
    assert_eq!(stats.misses, 12, "each training utterance goes through the upstream once");
    assert!(stats.hits > 0, "{stats:?}");

    cfg.output_dir = tmp.path().join("computed");
    cfg.data.cache_features_gb = 0.0;
    let computed = train(&cfg, &opts()).unwrap();
    assert!(computed.feature_cache.is_none());

    cfg.output_dir = tmp.path().join("half");
    cfg.data.cache_features_gb = 4.0;
    cfg.data.cache_f16 = true;
    let half = train(&cfg, &opts()).unwrap();
    let half_stats = half.feature_cache.unwrap();
    assert_eq!(half_stats.bytes * 2, stats.bytes, "f16 holds the same values in half the bytes");

    let (a, b, h) = (losses(&cached.run_dir), losses(&computed.run_dir), losses(&half.run_dir));
    assert_eq!(a.len(), 8);
    let mut worst_half = 0.0f64;
    for (step, ((x, y), z)) in a.iter().zip(&b).zip(&h).enumerate() {
        // Same arithmetic on the valid frames; unpadded utterances change only GEMM blocking.
        assert!((x - y).abs() <= 1e-4 * y.abs(), "step {}: cached {x} vs computed {y}", step + 1);
        worst_half = worst_half.max((z - y).abs() / y.abs());
    }
    assert!(worst_half > 0.0 && worst_half < 5e-3, "f16 cache: relative loss difference {worst_half}");

    // Masking acts inside the upstream: only the CNN features can be kept.
    let masked = "[augment]\nmask_time_prob = 0.3\nmask_time_length = 3";
    let mut cfg = config(tmp.path(), &tmp.path().join("masked"), "asr", frozen, masked);
    cfg.train.steps = 1;
    assert_eq!(train(&cfg, &opts()).unwrap().feature_cache.unwrap().kind, CacheKind::CnnFeatures);
}
