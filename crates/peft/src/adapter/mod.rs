//! Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021): a residual
//! `h + up(relu(down(h)))` on a sublayer's output, `up` zero-initialised so the model is unchanged
//! at initialisation. Houlsby places one after attention and one after the feed-forward block;
//! Pfeiffer only after the feed-forward block.

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    Houlsby,
    Pfeiffer,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdapterConfig {
    pub placement: Placement,
    /// Bottleneck width = model width / reduction_factor.
    pub reduction_factor: usize,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        Self { placement: Placement::Houlsby, reduction_factor: 16 }
    }
}

#[derive(Module, Debug)]
pub struct Bottleneck {
    pub down: Linear,
    pub up: Linear,
}

impl Bottleneck {
    pub fn new(dim: usize, cfg: &AdapterConfig, device: &Device) -> Self {
        let inner = (dim / cfg.reduction_factor.max(1)).max(1);
        // Zero `up` (identity at init) as trainable parameters: a zeroed copy of an initialised
        // tensor would not require gradients.
        let up = Linear {
            weight: Param::from_tensor(Tensor::zeros([inner, dim], device)),
            bias: Some(Param::from_tensor(Tensor::zeros([dim], device))),
        };
        Self { down: LinearConfig::new(dim, inner).init(device), up }
    }

    pub fn forward(&self, h: Tensor<3>) -> Tensor<3> {
        h.clone() + self.up.forward(relu(self.down.forward(h)))
    }
}

/// Apply an optional adapter.
pub fn adapt(adapter: &Option<Bottleneck>, h: Tensor<3>) -> Tensor<3> {
    match adapter {
        Some(a) => a.forward(h),
        None => h,
    }
}
