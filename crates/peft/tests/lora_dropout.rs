//! LoRA's dropout on the CPU: masks from a seed drawn from the device's random stream. Its own
//! test binary with one test: the backend's random generator is per process, and tests running
//! beside it in threads would draw from it between a seeding and the draw that follows.

use burn::module::{Module, Param};
use burn::nn::{DropoutConfig, Linear};
use burn::prelude::*;
use burn::tensor::Distribution;
use speechtune_peft::{LoraConfig, LoraLayer, Proj};

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (a, b) in got.iter().zip(want) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
    }
    assert!(want.iter().any(|v| v.abs() > 1e-2), "values that can fail");
}

/// A LoRA layer whose `B` is not zero (at peft's initialisation the update is zero whatever
/// the mask).
fn lora(p: f64, device: &Device) -> LoraLayer {
    let cfg = LoraConfig { r: 4, lora_dropout: p, ..LoraConfig::default() };
    let mut lora = LoraLayer::new(24, 96, &cfg, device);
    lora.b = Param::from_tensor(Tensor::random([4, 96], Distribution::Normal(0.0, 1.0), device));
    lora
}

/// `x ⊙ mask`, with the mask of the dropout `lora` draws after `device.seed(seed)`.
fn masked(lora: &LoraLayer, x: &Tensor<3>, seed: u64, device: &Device) -> Tensor<3> {
    device.seed(seed);
    let d = lora.dropout_draw(device).expect("dropout in training");
    assert_eq!(d.p, lora.dropout.prob as f32);
    let [a, b, c] = x.dims();
    x.clone() * Tensor::<1>::from_floats(d.mask(a * b * c).as_slice(), device).reshape([a, b, c])
}

/// The update `s (x A) B` composed from burn's operations.
fn update(lora: &LoraLayer, x: Tensor<3>) -> Tensor<3> {
    x.matmul(lora.a.val().unsqueeze()).matmul(lora.b.val().unsqueeze()) * lora.scaling
}

#[test]
fn lora_dropout_draws_its_mask_from_the_seeded_stream() {
    let device = Device::flex().autodiff();
    let x = Tensor::<3>::random([2, 5, 24], Distribution::Normal(0.0, 1.0), &device);
    let r = Tensor::<3>::random([2, 5, 96], Distribution::Normal(0.0, 1.0), &device);

    // 1. A frozen projection with LoRA, training on the CPU: the fused operation. The same seed
    //    gives the same output, another seed another; the output equals the composition with
    //    the draw's mask.
    let w = Tensor::<2>::random([24, 96], Distribution::Normal(0.0, 1.0), &device);
    let b = Tensor::<1>::random([96], Distribution::Normal(0.0, 1.0), &device);
    let mut p = Proj::new(Linear { weight: Param::from_tensor(w), bias: Some(Param::from_tensor(b)) }, "p").no_grad();
    p.lora = Some(lora(0.5, &device));
    let run = |p: &Proj, seed: u64| {
        device.seed(seed);
        values(p.forward(x.clone()))
    };
    let (first, again, other) = (run(&p, 7), run(&p, 7), run(&p, 8));
    assert_eq!(first, again, "the same seed draws the same mask");
    assert!(first.iter().zip(&other).any(|(a, b)| (a - b).abs() > 1e-3), "another seed, another mask");
    let l = p.lora.as_ref().unwrap();
    let base = x.clone().matmul(p.base.weight.val().unsqueeze()) + p.base.bias.as_ref().unwrap().val().unsqueeze();
    assert_close(&first, &values(base.clone() + update(l, masked(l, &x, 7, &device))));

    // No dropout on the plain device, nor with the module's training flag off.
    assert!(l.dropout_draw(&Device::flex()).is_none());
    let mut off = l.clone();
    off.dropout = DropoutConfig::new(0.5).init();
    off.dropout.training = Param::from_bool(false);
    assert!(off.dropout_draw(&device).is_none());
    let without = values(base + update(l, x.clone()));
    p.lora = Some(off);
    assert_close(&run(&p, 7), &without);

    // 2. Under mixed precision (`use_bf16`): the bf16 product and the update as one operation,
    //    equal to the bf16 linear operation plus the bias plus the composed update with the
    //    draw's mask.
    let w = Tensor::<2>::random([24, 96], Distribution::Normal(0.0, 1.0), &device);
    let b = Tensor::<1>::random([96], Distribution::Normal(0.0, 1.0), &device);
    let mut p = Proj::new(Linear { weight: Param::from_tensor(w), bias: Some(Param::from_tensor(b)) }, "p").no_grad();
    assert!(p.use_bf16());
    p.lora = Some(lora(0.5, &device));
    let got = run(&p, 11);
    let l = p.lora.as_ref().unwrap();
    let packed = p.bf16.as_ref().unwrap();
    let base = speechtune_kernels::linear(x.clone(), packed) + p.base.bias.as_ref().unwrap().val().unsqueeze();
    assert_close(&got, &values(base + update(l, masked(l, &x, 11, &device))));

    // 3. The update alone (the branch beside a bf16 or masked base product): the dropout as one
    //    operation; its output and A's gradient equal the composition with the draw's mask.
    let l = lora(0.3, &device);
    device.seed(3);
    let y = l.forward(x.clone());
    let grads = (y.clone() * r.clone()).sum().backward();
    let da = values(l.a.val().grad(&grads).unwrap());
    let composed = update(&l, masked(&l, &x, 3, &device));
    let grads = (composed.clone() * r).sum().backward();
    assert_close(&values(y), &values(composed));
    assert_close(&da, &values(l.a.val().grad(&grads).unwrap()));
}
