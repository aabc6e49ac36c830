//! Bad checkpoints give errors that name the file, tensor and shapes, and never panic.

mod common;

use std::path::Path;

use common::fixtures;
use speechtune_models::Upstream;
use speechtune_models::burn::prelude::*;

fn copy_dir(src: &Path, dst: &Path) {
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

/// Rewrite `model.safetensors` in `dir` through `edit` (name, shape, bytes) → Option<...>.
fn rewrite(dir: &Path, edit: impl Fn(&str, &[usize], &[u8]) -> Option<(String, Vec<usize>, Vec<u8>)>) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().filter_map(|(n, v)| edit(&n, v.shape(), v.data())).collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = kept
        .iter()
        .map(|(n, s, d)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

fn load_err(dir: &Path) -> String {
    match Upstream::load(dir, &Device::flex()) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_tensor_is_named_with_its_file() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("wav2vec2-xlsr"), tmp.path());
    rewrite(tmp.path(), |n, s, d| {
        (!n.ends_with("layers.1.final_layer_norm.bias")).then(|| (n.into(), s.into(), d.into()))
    });
    let e = load_err(tmp.path());
    assert!(e.contains("wav2vec2.encoder.layers.1.final_layer_norm.bias") && e.contains("model.safetensors"), "{e}");
}

#[test]
fn shape_mismatch_reports_both_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("wav2vec2-base"), tmp.path());
    rewrite(tmp.path(), |n, s, d| {
        if n == "encoder.layers.0.attention.q_proj.weight" {
            Some((n.into(), vec![16, 64], d.into()))
        } else {
            Some((n.into(), s.into(), d.into()))
        }
    });
    let e = load_err(tmp.path());
    assert!(e.contains("q_proj.weight") && e.contains("[16, 64]") && e.contains("[32, 32]"), "{e}");
}

#[test]
fn unsupported_model_type_lists_the_supported_ones() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("config.json"), r#"{"model_type": "speecht5"}"#).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("speecht5") && e.contains("wav2vec2, hubert, data2vec-audio, wavlm, whisper"), "{e}");
}

#[test]
fn missing_config_and_weights_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("no config.json"), "{e}");
    std::fs::copy(fixtures().join("wav2vec2-base/config.json"), tmp.path().join("config.json")).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("has no weights") && e.contains("model.safetensors"), "{e}");
    std::fs::write(tmp.path().join("pytorch_model.bin"), b"PK\x03\x04 truncated").unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("cannot read PyTorch checkpoint") && e.contains("pytorch_model.bin"), "{e}");
}

#[test]
fn corrupt_safetensors_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("wav2vec2-base"), tmp.path());
    std::fs::write(tmp.path().join("model.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}").unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors"), "{e}");
}
