//! Shared helpers for the model integration tests: fixture paths and reference tensors.
#![allow(dead_code)] // each test file uses a different subset

use std::collections::HashMap;
use std::path::PathBuf;

use speechtune_models::burn::prelude::*;

pub fn fixtures() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo")).join("../../tests/fixtures")
}

/// Every tensor of `tests/fixtures/NAME/reference.safetensors` as (shape, f32 values).
pub fn reference(path: &std::path::Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let v = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            (name, (view.shape().to_vec(), v))
        })
        .collect()
}

pub fn values<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.to_data().try_to_vec::<f32>().unwrap()
}

/// Max |a - b|, asserting equal shapes.
pub fn max_abs_diff(name: &str, got_shape: &[usize], got: &[f32], want: &(Vec<usize>, Vec<f32>)) -> f32 {
    assert_eq!(got_shape, want.0.as_slice(), "{name}: shape");
    got.iter().zip(&want.1).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}
