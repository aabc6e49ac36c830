use burn::nn::Linear;
use burn::prelude::*;

use crate::lora::LoraLayer;

/// Every projection a PEFT method may target: the pretrained linear layer and the method
/// layers attached to it. `name` is the module's path in the checkpoint (relative to the base
/// model), used for target matching and for naming saved adapter weights.
#[derive(Module, Debug)]
pub struct Proj {
    pub base: Linear,
    pub lora: Option<LoraLayer>,
    pub name: String,
}

impl Proj {
    pub fn new(base: Linear, name: impl Into<String>) -> Self {
        Self { base, lora: None, name: name.into() }
    }

    pub fn d_in(&self) -> usize {
        self.base.weight.dims()[0]
    }

    pub fn d_out(&self) -> usize {
        self.base.weight.dims()[1]
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match &self.lora {
            None => self.base.forward(x),
            Some(lora) => self.base.forward(x.clone()) + lora.forward(x),
        }
    }
}
