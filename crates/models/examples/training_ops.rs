//! The operations of a wav2vec2-base training step on the CPU, alone, in the shapes of the
//! `lora_ctc_2x5` bench task (2 × 249 frames): burn's own GELU and softmax on the autodiff graph
//! against speechtune's first-order forms (`layers::Activation::forward`, `layers::softmax_last`),
//! forward and backward, and the products a frozen linear layer's backward pass computes, with
//! the weight in each layout. Measured, not tested; numbers in bench/README.md.
//!
//!     cargo run --release -p speechtune-models --example training_ops

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::{Distribution, activation};
use speechtune_models::layers::{Activation, softmax_last};

fn random<const D: usize>(dims: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::random(dims, Distribution::Normal(0.0, 1.0), device)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Forward and backward time of `f` on a fresh tracked input of `dims` (median of 5 after one
/// warm-up); the upstream gradient is a random tensor, as in a real step.
fn forward_backward<const D: usize>(name: &str, dims: [usize; D], f: impl Fn(Tensor<D>) -> Tensor<D>) {
    let device = Device::flex().autodiff();
    let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
    for i in 0..6 {
        let x = random(dims, &device).require_grad();
        let start = Instant::now();
        let y = f(x.clone());
        let _ = y.clone().sum().into_scalar::<f32>();
        let forward = start.elapsed().as_secs_f64();
        let r = random(y.dims(), &device);
        let start = Instant::now();
        let grads = (y * r).sum().backward();
        let _ = x.grad(&grads).expect("a gradient").sum().into_scalar::<f32>();
        if i > 0 {
            fwd.push(forward);
            bwd.push(start.elapsed().as_secs_f64());
        }
    }
    println!("{name:40} forward {:7.2} ms   backward {:7.2} ms", median(fwd) * 1e3, median(bwd) * 1e3);
}

fn main() {
    println!("on the autodiff graph (flex, CPU), 2 × 249 frames:");
    forward_backward("GELU [2, 249, 3072], burn", [2, 249, 3072], activation::gelu);
    forward_backward("GELU [2, 249, 3072], first-order", [2, 249, 3072], |x| Activation::Gelu.forward(x));
    forward_backward("softmax [2, 12, 249, 249], burn", [2, 12, 249, 249], |x| activation::softmax(x, 3));
    forward_backward("softmax [2, 12, 249, 249], first-order", [2, 12, 249, 249], softmax_last);

    println!("\nthe products of a frozen linear layer's backward pass, dY · Wᵀ (inner backend):");
    let device = Device::flex();
    for (m, k, n) in [(498, 3072, 768), (498, 768, 768), (498, 768, 3072)] {
        let a = random([m, k], &device);
        let b = random([k, n], &device);
        let b_cols = random([n, k], &device).transpose();
        for (layout, rhs) in [("rhs rows contiguous", b), ("rhs columns contiguous", b_cols)] {
            let runs: Vec<f64> = (0..7)
                .map(|_| {
                    let start = Instant::now();
                    let _ = a.clone().matmul(rhs.clone()).sum().into_scalar::<f32>();
                    start.elapsed().as_secs_f64()
                })
                .collect();
            let s = median(runs);
            println!(
                "({m} × {k}) · ({k} × {n}), {layout:24} {:7.2} ms  {:4.0} GFLOP/s",
                s * 1e3,
                2.0 * (m * k * n) as f64 / s / 1e9
            );
        }
    }
}
