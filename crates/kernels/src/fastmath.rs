//! Activations over slices of `f32` that the compiler vectorises: `erf` and `exp` as
//! branch-free polynomials (libm's scalar calls cannot be vectorised), compiled for AVX-512
//! and AVX2 + FMA and picked at run time, with a portable fallback.
//!
//! For training, the `*_with_slope` functions also give each value's derivative, which the
//! autodiff graph's activation keeps for its backward pass (see [`crate::rowwise::activation`]).
//!
//! Accuracy: `erf` by Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7), `exp` by the
//! Cephes single-precision polynomial (relative error ~1e-7); checked against the exact
//! functions in the tests below.

/// `exp(v)` for `v` in [-87.3, 88.3]; 0 below (where the true value is subnormal or rounds to 0:
/// a masked attention score gets exactly no weight), the value at 88.3 above (2ⁿ must stay a
/// normal float).
#[inline(always)]
fn exp(v: f32) -> f32 {
    let underflow = v < -87.3;
    let v = v.clamp(-87.3, 88.3);
    let n = (v * std::f32::consts::LOG2_E + 0.5).floor();
    let r = v - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p =
        ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2ⁿ without a float → int cast (whose saturation and NaN rules are scalar code): n + 127
    // lands in the low mantissa bits of n + 127 + 2²³, and the shift moves them into the
    // exponent field (the bits of 2²³'s own exponent are shifted out).
    let e = e * f32::from_bits((n + 8_388_735.0).to_bits() << 23);
    if underflow { 0.0 } else { e }
}

#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152) * t + 1.421_413_8) * t - 0.284_496_74) * t + 0.254_829_6) * t;
    (1.0 - poly * exp(-a * a)).copysign(x)
}

#[inline(always)]
fn gelu1(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
fn gelu_tanh1(x: f32) -> f32 {
    // 0.5 x (1 + tanh(u)) = x · sigmoid(2u), u = √(2/π) (x + 0.044715 x³)
    let u = 0.797_884_6 * (x + 0.044_715 * x * x * x);
    x / (1.0 + exp(-2.0 * u))
}

#[inline(always)]
fn silu1(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

#[inline(always)]
fn relu1(x: f32) -> f32 {
    x.max(0.0)
}

/// GELU and its derivative `Φ(x) + x φ(x)`.
#[inline(always)]
fn gelu_d(x: f32) -> (f32, f32) {
    let e = 1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2);
    // φ(x) = exp(-x²/2) / √(2π); the value rounded as `gelu1` rounds it
    let pdf = 0.398_942_3 * exp(-0.5 * x * x);
    (0.5 * x * e, 0.5 * e + x * pdf)
}

/// The tanh approximation and its derivative: with `s = sigmoid(2u)`, `y = x s` and
/// `y' = s + 2 x s (1 - s) u'`.
#[inline(always)]
fn gelu_tanh_d(x: f32) -> (f32, f32) {
    let u = 0.797_884_6 * (x + 0.044_715 * x * x * x);
    let du = 0.797_884_6 * (1.0 + 3.0 * 0.044_715 * x * x);
    let e = exp(-2.0 * u);
    let q = 1.0 + e;
    // s (1 - s) = e / q², without the cancellation of 1 - s near 1
    (x / q, 1.0 / q + 2.0 * x * (e / (q * q)) * du)
}

/// SiLU and its derivative `s + x s (1 - s)`, `s = sigmoid(x)`.
#[inline(always)]
fn silu_d(x: f32) -> (f32, f32) {
    let e = exp(-x);
    let q = 1.0 + e;
    (x / q, 1.0 / q + x * (e / (q * q)))
}

/// `x` becomes `f(x)` and `d` becomes `f'(x)`.
#[inline(always)]
fn with_slope(x: &mut [f32], d: &mut [f32], f: impl Fn(f32) -> (f32, f32)) {
    for (v, dv) in x.iter_mut().zip(d.iter_mut()) {
        (*v, *dv) = f(*v);
    }
}

/// `$body` (over the named arguments) compiled for AVX-512 and for AVX2 + FMA, the best the CPU
/// has picked at run time, and portable code elsewhere; returns its value.
macro_rules! best_isa {
    (($($arg:ident: $ty:ty),*) $body:block) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            fn v4($($arg: $ty),*) $body
            #[target_feature(enable = "avx2,fma")]
            fn v3($($arg: $ty),*) $body
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked on the line above).
                return unsafe { v4($($arg),*) };
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA (checked on the line above).
                return unsafe { v3($($arg),*) };
            }
        }
        $body
    }};
}

macro_rules! over_slice {
    ($(#[$doc:meta])* $name:ident, $f:ident) => {
        $(#[$doc])*
        pub fn $name(x: &mut [f32]) {
            best_isa!((x: &mut [f32]) { x.iter_mut().for_each(|v| *v = $f(*v)) })
        }
    };
}

over_slice!(
    /// Exact GELU, `0.5 x (1 + erf(x / √2))` (torch's `gelu`).
    gelu,
    gelu1
);
over_slice!(
    /// The tanh approximation of GELU (`gelu_new`, `gelu_pytorch_tanh`).
    gelu_tanh,
    gelu_tanh1
);
over_slice!(
    /// `x · sigmoid(x)`.
    silu,
    silu1
);
over_slice!(
    /// `max(x, 0)`.
    relu,
    relu1
);

macro_rules! with_slope_slice {
    ($(#[$doc:meta])* $name:ident, $f:ident) => {
        $(#[$doc])*
        pub fn $name(x: &mut [f32], d: &mut [f32]) {
            assert_eq!(x.len(), d.len());
            best_isa!((x: &mut [f32], d: &mut [f32]) { with_slope(x, d, $f) })
        }
    };
}

with_slope_slice!(
    /// Exact GELU (`x` becomes `gelu(x)`) and its derivative (into `d`).
    gelu_with_slope,
    gelu_d
);
with_slope_slice!(
    /// The tanh approximation of GELU and its derivative.
    gelu_tanh_with_slope,
    gelu_tanh_d
);
with_slope_slice!(
    /// SiLU and its derivative.
    silu_with_slope,
    silu_d
);

/// `x / Σx` after `exp(x − max)` over each row of `row` values, in place (softmax over the
/// last dimension). Max and sum use 16 lanes so that they vectorise.
pub fn softmax_rows(x: &mut [f32], row: usize) {
    softmax(x, row, None, true)
}

/// [`softmax_rows`], also writing each row's `max` and `1 / Σ` to `stats` (two values per row),
/// from which [`softmax_rows_again`] recomputes the same values.
pub fn softmax_rows_stats(x: &mut [f32], row: usize, stats: &mut [f32]) {
    assert_eq!(stats.len(), 2 * x.len() / row.max(1), "two values per row");
    softmax(x, row, Some(stats), true)
}

/// The softmax of each row of the scores `x` (in place) from the `stats` that
/// [`softmax_rows_stats`] wrote for the same scores: `exp(x − max) · (1 / Σ)`, bit for bit the
/// values it gave.
pub fn softmax_rows_again(x: &mut [f32], row: usize, stats: &[f32]) {
    if row == 0 {
        return;
    }
    assert_eq!(stats.len(), 2 * x.len() / row, "two values per row");
    best_isa!((x: &mut [f32], row: usize, stats: &[f32]) {
        for (r, st) in x.chunks_exact_mut(row).zip(stats.chunks_exact(2)) {
            let (max, inv) = (st[0], st[1]);
            r.iter_mut().for_each(|v| *v = exp(*v - max) * inv);
        }
    })
}

/// Each row of scores `x` (`row` values) becomes `exp(x − max)` in place, and `stats` gets the
/// row's maximum and `1 / Σ` (two values per row): the softmax unnormalised, for a product that
/// scales its result's rows instead (as flash attention does).
pub fn exp_rows(x: &mut [f32], row: usize, stats: &mut [f32]) {
    assert_eq!(stats.len(), 2 * x.len() / row.max(1), "two values per row");
    softmax(x, row, Some(stats), false)
}

/// The largest of `r`'s values (−∞ for none), over 16 lanes so that it vectorises.
#[inline(always)]
fn row_max(r: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 16];
    let mut chunks = r.chunks_exact(16);
    for c in &mut chunks {
        for (a, &v) in m.iter_mut().zip(c) {
            // (Not `f32::max`, whose NaN rule costs two more instructions per vector.)
            if v > *a {
                *a = v;
            }
        }
    }
    chunks.remainder().iter().fold(m.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)), |a, &b| a.max(b))
}

/// Softmax over rows of `row` values, or with `normalise` false only `exp(x − max)`.
fn softmax(x: &mut [f32], row: usize, stats: Option<&mut [f32]>, normalise: bool) {
    if row == 0 {
        return;
    }
    #[inline(always)]
    fn body(x: &mut [f32], row: usize, mut stats: Option<&mut [f32]>, normalise: bool) {
        for (i, r) in x.chunks_exact_mut(row).enumerate() {
            let max = row_max(r);
            let mut s = [0.0f32; 16];
            let mut chunks = r.chunks_exact_mut(16);
            for c in &mut chunks {
                for (a, v) in s.iter_mut().zip(c) {
                    *v = exp(*v - max);
                    *a += *v;
                }
            }
            let mut sum: f32 = s.iter().sum();
            for v in chunks.into_remainder() {
                *v = exp(*v - max);
                sum += *v;
            }
            let inv = 1.0 / sum;
            if normalise {
                r.iter_mut().for_each(|v| *v *= inv);
            }
            if let Some(st) = stats.as_deref_mut() {
                st[2 * i] = max;
                st[2 * i + 1] = inv;
            }
        }
    }
    best_isa!((x: &mut [f32], row: usize, stats: Option<&mut [f32]>, normalise: bool) { body(x, row, stats, normalise) })
}

#[cfg(test)]
mod tests {
    /// The stats path gives softmax_rows's values, and recomputing from its stats gives them
    /// again bit for bit (rows with a remainder, a masked key).
    #[test]
    fn softmax_recomputed_from_its_stats_is_exact() {
        let row = 37;
        let scores: Vec<f32> = (0..row * 4).map(|i| ((i * 7919) % 103) as f32 * 0.29 - 15.0 - (i % 5) as f32).collect();
        let mut scores = scores;
        scores[40] = -1e9;
        let mut plain = scores.clone();
        super::softmax_rows(&mut plain, row);
        let (mut kept, mut stats) = (scores.clone(), vec![0.0f32; 8]);
        super::softmax_rows_stats(&mut kept, row, &mut stats);
        assert_eq!(kept, plain);
        let mut again = scores;
        super::softmax_rows_again(&mut again, row, &stats);
        assert_eq!(again, plain);
        assert!(stats.chunks(2).all(|s| s[1] > 0.0 && s[1] < 1.0), "{stats:?}");
    }

    /// `exp_rows` is the softmax before its normalising pass: the same statistics, and its values
    /// times `1 / Σ` are softmax_rows's bit for bit (a masked key exactly 0).
    #[test]
    fn exp_rows_are_the_unnormalised_softmax() {
        let row = 37;
        let mut scores: Vec<f32> = (0..row * 4).map(|i| ((i * 7919) % 103) as f32 * 0.29 - 15.0).collect();
        scores[40] = -1e9;
        let (mut plain, mut want) = (scores.clone(), vec![0.0f32; 8]);
        super::softmax_rows_stats(&mut plain, row, &mut want);
        let mut stats = vec![0.0f32; 8];
        super::exp_rows(&mut scores, row, &mut stats);
        assert_eq!(stats, want);
        assert_eq!(scores[40], 0.0);
        assert!(scores.chunks(row).all(|r| r.contains(&1.0)), "each row's maximum gives exp(0)");
        let scaled: Vec<f32> =
            scores.chunks(row).zip(stats.chunks(2)).flat_map(|(r, s)| r.iter().map(move |e| e * s[1])).collect();
        assert_eq!(scaled, plain);
    }

    #[test]
    fn softmax_rows_match_the_definition() {
        let row = 37; // not a multiple of 16: the remainder path runs
        let mut x: Vec<f32> = (0..row * 3).map(|i| ((i * 7919) % 101) as f32 * 0.37 - 18.0).collect();
        x[5] = f32::MIN; // a masked key
        let want: Vec<f64> = x
            .chunks(row)
            .flat_map(|r| {
                let m = r.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
                let e: Vec<f64> = r.iter().map(|&v| (v as f64 - m).exp()).collect();
                let s: f64 = e.iter().sum();
                e.into_iter().map(move |v| v / s)
            })
            .collect();
        super::softmax_rows(&mut x, row);
        for (i, (&g, &w)) in x.iter().zip(&want).enumerate() {
            assert!((g as f64 - w).abs() <= 1e-6 * w.max(1e-3), "{i}: {g} vs {w}");
        }
        assert!(x[5] < 1e-30, "a masked key gets no weight");
    }

    fn grid() -> Vec<f32> {
        (-4000..=4000).map(|i| i as f32 * 0.0025).chain([-90.0, -30.0, 30.0, 90.0, 0.0, -0.0]).collect()
    }

    /// (the vectorised function, the exact one in f64, tolerance)
    type Case = (fn(&mut [f32]), fn(f64) -> f64, f64);

    #[test]
    fn activations_match_the_exact_functions() {
        let xs = grid();
        let cases: [Case; 4] = [
            (super::gelu, |x| 0.5 * x * (1.0 + libm::erf(x / 2f64.sqrt())), 2e-7),
            (
                super::gelu_tanh,
                |x| 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh()),
                2e-7,
            ),
            (super::silu, |x| x / (1.0 + (-x).exp()), 2e-7),
            (super::relu, |x| x.max(0.0), 0.0),
        ];
        for (i, (f, exact, tol)) in cases.into_iter().enumerate() {
            let mut y = xs.clone();
            f(&mut y);
            for (&x, &v) in xs.iter().zip(&y) {
                let e = exact(x as f64);
                // absolute error near 0, relative elsewhere
                let err = (v as f64 - e).abs() / e.abs().max(1.0);
                assert!(err <= tol + 1e-7 * (x as f64).abs().min(1.0), "case {i}: x = {x}: {v} vs {e} ({err:e})");
            }
        }
    }

    /// The derivatives of the `*_with_slope` functions against central differences of the
    /// exact functions in f64, and their values against the functions without slope.
    #[test]
    fn slopes_match_the_exact_derivatives() {
        let xs = grid();
        type SlopeCase = (fn(&mut [f32], &mut [f32]), fn(&mut [f32]), fn(f64) -> f64);
        let cases: [SlopeCase; 3] = [
            (super::gelu_with_slope, super::gelu, |x| 0.5 * x * (1.0 + libm::erf(x / 2f64.sqrt()))),
            (super::gelu_tanh_with_slope, super::gelu_tanh, |x| {
                0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
            }),
            (super::silu_with_slope, super::silu, |x| x / (1.0 + (-x).exp())),
        ];
        for (i, (with_slope, plain, exact)) in cases.into_iter().enumerate() {
            let (mut y, mut d) = (xs.clone(), vec![0.0; xs.len()]);
            with_slope(&mut y, &mut d);
            let mut y_plain = xs.clone();
            plain(&mut y_plain);
            assert_eq!(y, y_plain, "case {i}: the same values as without slope");
            for (&x, &g) in xs.iter().zip(&d) {
                let (x, h) = (x as f64, 1e-4);
                let want = (exact(x + h) - exact(x - h)) / (2.0 * h);
                assert!((g as f64 - want).abs() <= 1e-6, "case {i}: f'({x}) = {g}, expected {want}");
            }
        }
    }

    #[test]
    fn exp_is_accurate_over_its_range() {
        for i in -873..=883 {
            let v = i as f32 * 0.1;
            let e = (v as f64).exp();
            let got = super::exp(v) as f64;
            assert!((got - e).abs() / e <= 3e-7, "exp({v}) = {got}, expected {e}");
        }
    }
}
