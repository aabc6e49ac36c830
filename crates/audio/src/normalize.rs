/// Zero mean, unit variance over the valid samples, as transformers'
/// `Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm` (population variance, epsilon 1e-7).
/// Computed in f64 and rounded once, which stays within f32 rounding of numpy's result.
pub fn zero_mean_unit_var(x: &[f32]) -> Vec<f32> {
    if x.is_empty() {
        return Vec::new();
    }
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let inv = 1.0 / (var + 1e-7).sqrt();
    x.iter().map(|&v| ((v as f64 - mean) * inv) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_are_zero_and_one() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 0.2 + 0.05).collect();
        let y = zero_mean_unit_var(&x);
        let mean: f32 = y.iter().sum::<f32>() / y.len() as f32;
        let var: f32 = y.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / y.len() as f32;
        assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4, "mean {mean} var {var}");
    }

    #[test]
    fn constant_signal_stays_finite() {
        let y = zero_mean_unit_var(&[0.5; 10]);
        assert!(y.iter().all(|v| *v == 0.0));
    }
}
