//! ConvAdapter (SURE benchmark, Li et al., 2023): a convolutional adapter after a layer's
//! feed-forward block. LayerNorm → depthwise-style grouped Conv1d k=3 (width d → d/2) → ReLU →
//! Conv1d k=5 → Conv1d k=3 back to the model width → squeeze-excitation (reduction 16) →
//! residual. The last convolution starts at zero, so the model is unchanged at initialisation.

use burn::module::Param;
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig1d};
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConvAdapterConfig {
    /// Inner width = model width / reduction_factor (2 in SURE).
    pub reduction_factor: usize,
    /// Squeeze-excitation bottleneck = model width / se_reduction.
    pub se_reduction: usize,
}

impl Default for ConvAdapterConfig {
    fn default() -> Self {
        Self { reduction_factor: 2, se_reduction: 16 }
    }
}

#[derive(Module, Debug)]
pub struct ConvAdapter {
    pub norm: LayerNorm,
    /// k=3, d → d/r, one group per output channel (each sees r input channels).
    pub depthwise: Conv1d,
    /// k=5, d/r → d/r.
    pub conv: Conv1d,
    /// k=3, d/r → d; zero at initialisation.
    pub up: Conv1d,
    pub se_down: Linear,
    pub se_up: Linear,
}

fn conv(c_in: usize, c_out: usize, k: usize, groups: usize, device: &Device) -> Conv1d {
    Conv1dConfig::new(c_in, c_out, k)
        .with_groups(groups)
        .with_padding(PaddingConfig1d::Explicit(k / 2, k / 2))
        .init(device)
}

impl ConvAdapter {
    pub fn new(dim: usize, cfg: &ConvAdapterConfig, device: &Device) -> Self {
        let r = cfg.reduction_factor.max(1);
        // The grouped convolution needs the inner width to divide the model width.
        let inner = if dim.is_multiple_of(r) { dim / r } else { dim };
        let se = (dim / cfg.se_reduction.max(1)).max(1);
        let mut up = conv(inner, dim, 3, 1, device);
        // Zeroed as fresh trainable parameters (a zeroed copy would not require gradients).
        up.weight = Param::from_tensor(Tensor::zeros([dim, inner, 3], device));
        up.bias = Some(Param::from_tensor(Tensor::zeros([dim], device)));
        Self {
            norm: LayerNormConfig::new(dim).init(device),
            depthwise: conv(dim, inner, 3, inner, device),
            conv: conv(inner, inner, 5, 1, device),
            up,
            se_down: LinearConfig::new(dim, se).init(device),
            se_up: LinearConfig::new(se, dim).init(device),
        }
    }

    /// `h`: `[batch, time, dim]`.
    pub fn forward(&self, h: Tensor<3>) -> Tensor<3> {
        let x = self.norm.forward(h.clone()).swap_dims(1, 2);
        let x = self.up.forward(self.conv.forward(relu(self.depthwise.forward(x)))).swap_dims(1, 2);
        // Squeeze-excitation over time: one gate per channel.
        let squeeze = x.clone().mean_dim(1);
        let gate = sigmoid(self.se_up.forward(relu(self.se_down.forward(squeeze))));
        h + x * gate
    }
}

/// Apply an optional ConvAdapter.
pub fn conv_adapt(adapter: &Option<ConvAdapter>, h: Tensor<3>) -> Tensor<3> {
    match adapter {
        Some(a) => a.forward(h),
        None => h,
    }
}
