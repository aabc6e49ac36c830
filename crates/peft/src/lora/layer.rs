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
        self.dropout.forward(x).matmul(a).matmul(b) * self.scaling
    }

    /// `W + scaling · A B` in burn's `[in, out]` layout, to fold into the base weight.
    pub fn delta(&self) -> Tensor<2> {
        self.a.val().matmul(self.b.val()) * self.scaling
    }
}
