use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig};
use burn::prelude::*;
use burn::tensor::Distribution;

use super::LoraConfig;

/// The low-rank update of one projection. Stored as burn lays out linear weights
/// (`a: [in, r]`, `b: [r, out]`); peft's `lora_A.weight` is `a` transposed.
#[derive(Module, Debug)]
pub struct LoraLayer {
    pub a: Param<Tensor<2>>,
    pub b: Param<Tensor<2>>,
    pub dropout: Dropout,
    pub scaling: f64,
}

impl LoraLayer {
    /// peft's initialisation: A ~ U(±1/sqrt(in)) (Kaiming-uniform with a = sqrt(5)), B = 0.
    pub fn new(d_in: usize, d_out: usize, cfg: &LoraConfig, device: &Device) -> Self {
        let bound = 1.0 / (d_in as f64).sqrt();
        Self {
            a: Param::from_tensor(Tensor::random([d_in, cfg.r], Distribution::Uniform(-bound, bound), device)),
            b: Param::from_tensor(Tensor::zeros([cfg.r, d_out], device)),
            dropout: DropoutConfig::new(cfg.lora_dropout).init(),
            scaling: cfg.scaling(),
        }
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[1]
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let a = self.a.val().unsqueeze::<D>();
        let b = self.b.val().unsqueeze::<D>();
        // On the CPU the mask comes from a seed (made in parallel; the backward pass makes it
        // again); elsewhere burn's dropout.
        let x = if speechtune_kernels::supports(&x)
            && let Some(d) = self.dropout_draw(&x.device())
        {
            speechtune_kernels::dropout::dropout(x, d)
        } else {
            self.dropout.forward(x)
        };
        x.matmul(a).matmul(b) * self.scaling
    }

    /// The update's dropout for one forward pass where burn's `Dropout` would apply it (training
    /// on an autodiff device, probability above 0), for the fused operation
    /// ([`speechtune_kernels::dense::frozen_linear_lora`]): its seed drawn from the device's
    /// random stream, as burn's mask would be, so a seeded step draws the same masks again
    /// (resumption, data-parallel ranks).
    pub fn dropout_draw(&self, device: &Device) -> Option<speechtune_kernels::dense::Dropout> {
        let d = &self.dropout;
        if !d.training.val().is_enabled() || !device.is_autodiff() || d.prob == 0.0 {
            return None;
        }
        // Three uniform draws of 24 bits each: a 64-bit seed.
        let u: Vec<f32> = Tensor::<1>::random([3], Distribution::Uniform(0.0, 1.0), device)
            .into_data()
            .try_into_vec::<f32>()
            .expect("float draws");
        let bits = |v: f32| ((v as f64 * 16_777_216.0) as u64) & 0xff_ffff;
        let seed = bits(u[0]) | bits(u[1]) << 24 | bits(u[2]) << 48;
        Some(speechtune_kernels::dense::Dropout::new(d.prob as f32, seed))
    }

    /// The update for the fused operations of training on the CPU
    /// ([`speechtune_kernels::dense::frozen_linear_lora`] and its bf16 counterpart), with this
    /// forward pass's dropout ([`LoraLayer::dropout_draw`]).
    pub fn fused_update(&self, device: &Device) -> speechtune_kernels::dense::LoraUpdate {
        speechtune_kernels::dense::LoraUpdate {
            a: self.a.val(),
            b: self.b.val(),
            scale: self.scaling as f32,
            dropout: self.dropout_draw(device),
        }
    }

    /// `W + scaling · A B` in burn's `[in, out]` layout, to fold into the base weight.
    pub fn delta(&self) -> Tensor<2> {
        self.a.val().matmul(self.b.val()) * self.scaling
    }
}
