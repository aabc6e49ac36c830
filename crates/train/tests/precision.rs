//! Mixed precision through the training entry point. A test binary of its own: runs draw their
//! initial weights from the device's global random generator, which other tests of the same
//! binary (run in parallel threads) would draw from too, and this test compares two runs.

mod common;

use common::{METHODS, config, losses, mini_corpus, opts};
use speechtune_train::train;

/// `train.precision = "bf16"`: every method with frozen weights trains with them in bf16 (its
/// losses close to, but not, f32's), evaluation reads the run in either precision, and full
/// fine-tuning of every weight (nothing frozen) is refused with the reason.
#[test]
fn methods_with_frozen_weights_train_in_bf16() {
    use speechtune_models::Precision;
    let tmp = tempfile::tempdir().unwrap();
    mini_corpus(tmp.path());
    for (name, method) in METHODS {
        let out = tmp.path().join(format!("bf16-{name}"));
        let cfg = config(tmp.path(), &out, "asr", method, "precision = \"bf16\"");
        if name == "full" {
            // Nothing frozen at all: refused. (The default freezes the CNN, which then runs in bf16.)
            let all = config(tmp.path(), &out, "asr", "kind = \"full\"\nfreeze_cnn = false", "precision = \"bf16\"");
            let e = train(&all, &opts()).unwrap_err().to_string();
            assert!(e.contains("train.precision = bf16") && e.contains("trains every weight"), "{e}");
        }
        train(&cfg, &opts()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let f32_out = tmp.path().join(format!("f32-{name}"));
        train(&config(tmp.path(), &f32_out, "asr", method, ""), &opts()).unwrap();
        let (bf16, f32) = (losses(&out), losses(&f32_out));
        assert_eq!(bf16.len(), 3, "{name}");
        for (b, f) in bf16.iter().zip(&f32) {
            assert!((b - f).abs() < 0.02 * f.abs(), "{name}: loss {b} in bf16, {f} in f32");
        }
        assert_ne!(bf16, f32, "{name}: bf16 gave f32's losses");
        for precision in [Precision::F32, Precision::Bf16] {
            let e = speechtune_train::infer::evaluate(
                &out,
                speechtune_data::Split::Dev,
                None,
                1,
                &speechtune_models::burn::prelude::Device::flex(),
                precision,
            )
            .unwrap_or_else(|e| panic!("{name}: eval in {precision}: {e}"));
            assert_eq!(e.report.utterances, 4, "{name}");
        }
    }
}
