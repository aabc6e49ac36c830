//! Throughput of the bf16 products against f32 ones on wav2vec2-base's shapes, the fused
//! attention in bf16 and f32 (wav2vec2-base over 10 s, whisper-base's 30-s window), and the peak
//! of the instructions themselves on one core:
//!
//!     cargo run --release -p speechtune-kernels --example bf16_products
//!
//! `RAYON_NUM_THREADS=1` for one core. The f32 products are the gemm crate's (burn-flex's).

use std::time::Instant;

use speechtune_kernels::attention::{Shape, forward_values, forward_values_bf16};
use speechtune_kernels::bf16::{PackedB, kernel_name, matmul, native};

fn values(n: usize, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn time(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..repeats)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn main() {
    println!("bf16 kernel: {} (SPEECHTUNE_BF16_KERNEL picks another)", kernel_name());
    #[cfg(target_arch = "x86_64")]
    if native() && std::is_x86_feature_detected!("fma") {
        let (bf16, f32) = peaks();
        println!("one core, instructions alone: vdpbf16ps {bf16:.0} GFLOP/s, f32 FMA {f32:.0} GFLOP/s");
    }
    println!("threads: {}", rayon::current_num_threads());
    println!("| m × k × n | bf16 ms | bf16 GFLOP/s | f32 ms | f32 GFLOP/s |");
    println!("|---|---|---|---|---|");
    let mut seed = 1;
    // wav2vec2-base over 2 × 5 s (500 frames): q/k/v/out, FFN in, FFN out; a CNN layer.
    for (m, k, n) in [(500, 768, 768), (500, 768, 3072), (500, 3072, 768), (7999, 1536, 512)] {
        let a = values(m * k, &mut seed);
        let w = values(k * n, &mut seed);
        let packed = PackedB::from_rows(&w, k, n);
        let mut c = vec![0.0f32; m * n];
        let bf16 = time(10, || matmul(&a, m, k, &packed, &mut c, false));
        let f32 = time(10, || {
            // SAFETY: a is m × k, w k × n, c m × n, all row-major.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    k as isize,
                    w.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(0),
                )
            }
        });
        let flop = 2.0 * (m * k * n) as f64;
        println!(
            "| {m} × {k} × {n} | {:.2} | {:.0} | {:.2} | {:.0} |",
            bf16 * 1e3,
            flop / bf16 / 1e9,
            f32 * 1e3,
            flop / f32 / 1e9
        );
    }
    attention(&mut seed);
}

/// One layer's self-attention (`softmax(QKᵀ/√d) V`, no mask) in bf16 and f32, and the largest
/// difference between the two outputs.
fn attention(seed: &mut u64) {
    println!();
    println!("| attention: batch × time × heads × head_dim | bf16 ms | f32 ms | max difference |");
    println!("|---|---|---|---|");
    for (batch, t, heads, head_dim) in [(1, 499, 12, 64), (1, 1500, 8, 64)] {
        let s = Shape { batch, time: t, heads, head_dim };
        let n = batch * t * heads * head_dim;
        // Queries scaled up so that the softmax is not nearly uniform.
        let q: Vec<f32> = values(n, seed).iter().map(|x| x * 8.0).collect();
        let (k, v) = (values(n, seed), values(n, seed));
        let scale = (head_dim as f32).powf(-0.5);
        let mut out = (Vec::new(), Vec::new());
        let bf16 = time(10, || out.0 = forward_values_bf16(&q, &k, &v, None, s, scale, false).0);
        let f32 = time(10, || out.1 = forward_values(&q, &k, &v, None, s, scale, false).0);
        let diff = out.0.iter().zip(&out.1).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        println!("| {batch} × {t} × {heads} × {head_dim} | {:.1} | {:.1} | {diff:.1e} |", bf16 * 1e3, f32 * 1e3);
    }
}

/// GFLOP/s of 24 independent chains of `vdpbf16ps` and of f32 FMA on 512-bit registers.
#[cfg(target_arch = "x86_64")]
fn peaks() -> (f64, f64) {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    unsafe fn bf16(n: usize) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 24];
        // SAFETY: plain register arithmetic; the caller checked the instructions.
        unsafe {
            let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80));
            let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x0001_0001));
            for _ in 0..n {
                for x in acc.iter_mut() {
                    *x = _mm512_dpbf16_ps(*x, a, b);
                }
            }
        }
        acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
    }
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn f32(n: usize) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 24];
        let (a, b) = (_mm512_set1_ps(1.0), _mm512_set1_ps(1e-7));
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(a, b, *x);
            }
        }
        acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
    }
    let n = 20_000_000;
    let t = Instant::now();
    // SAFETY: the caller checked AVX512_BF16, AVX-512F and FMA.
    std::hint::black_box(unsafe { bf16(n) });
    let bf = (n * 24 * 64) as f64 / t.elapsed().as_secs_f64() / 1e9;
    let t = Instant::now();
    // SAFETY: as above.
    std::hint::black_box(unsafe { f32(n) });
    (bf, (n * 24 * 32) as f64 / t.elapsed().as_secs_f64() / 1e9)
}
