//! Helpers of the unit tests.

/// The largest `|a − b|` over `a` and `b`, relative to the largest `|scale|` value: how far a
/// result is from another in units of the reference's scale.
pub fn max_diff_of_scale(a: &[f32], b: &[f32], scale: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "results of one length");
    let scale = scale.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max) / scale
}
