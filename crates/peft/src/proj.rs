use burn::nn::Linear;
use burn::prelude::*;

use crate::lora::LoraLayer;
use crate::mask::MaskLayer;

/// Every projection a PEFT method may target: the pretrained linear layer and the method
/// layers attached to it. `name` is the module's path in the checkpoint (relative to the base
/// model), used for target matching and for naming saved adapter weights.
#[derive(Module, Debug)]
pub struct Proj {
    pub base: Linear,
    pub lora: Option<LoraLayer>,
    /// S3-Router binary mask over the base weight.
    pub mask: Option<MaskLayer>,
    pub name: String,
}

impl Proj {
    pub fn new(base: Linear, name: impl Into<String>) -> Self {
        Self { base, lora: None, mask: None, name: name.into() }
    }

    pub fn d_in(&self) -> usize {
        self.base.weight.dims()[0]
    }

    pub fn d_out(&self) -> usize {
        self.base.weight.dims()[1]
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let base = match &self.mask {
            None => self.base.forward(x.clone()),
            Some(m) => {
                let w = (self.base.weight.val() * m.mask()).unsqueeze::<D>();
                let y = x.clone().matmul(w);
                match &self.base.bias {
                    Some(b) => y + b.val().unsqueeze::<D>(),
                    None => y,
                }
            }
        };
        match &self.lora {
            None => base,
            Some(lora) => base + lora.forward(x),
        }
    }
}
