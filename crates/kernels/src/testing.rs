//! Helpers of the crate's tests.

use burn::prelude::*;

/// A tensor's values as f32, row-major.
pub fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

/// The largest absolute difference of two equally long slices.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// `got` within `rel` of `want`'s largest value (at least 1), where `want` holds values that can
/// fail the check (some above 1e-2); `what` names the compared output in the message.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32) {
    let (diff, scale) = (max_diff(got, want), want.iter().fold(0.0f32, |m, v| m.max(v.abs())));
    assert!(diff <= rel * scale.max(1.0), "{what}: {diff} (largest value {scale})");
    assert!(want.iter().any(|v| v.abs() > 1e-2), "{what}: values that can fail");
}

/// Each of `got`'s outputs within `rel` of `want`'s ([`assert_close`]), both sides with as many
/// outputs; an output is named by `names` (else by its index) after `what` in the message.
pub fn assert_outputs_close(what: &str, names: &[&str], got: &[Vec<f32>], want: &[Vec<f32>], rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: outputs on both sides");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let name = names.get(i).map_or_else(|| format!("output {i}"), |n| n.to_string());
        assert_close(&format!("{what} {name}"), g, w, rel);
    }
}

/// `out` with the input's gradient appended where the input is tracked; an untracked input must
/// have got none.
pub fn with_input_grad<const D: usize>(
    mut out: Vec<Vec<f32>>,
    grad: Option<Tensor<D>>,
    tracked: bool,
) -> Vec<Vec<f32>> {
    match grad {
        Some(g) => out.push(vals(g)),
        None => assert!(!tracked, "the input is tracked but got no gradient"),
    }
    out
}
