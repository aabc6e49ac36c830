//! Building blocks shared by the upstreams, loaded straight from checkpoint tensors.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation;
use burn::tensor::module::{conv1d, layer_norm};
use burn::tensor::ops::ConvOptions;

use speechtune_peft::Proj;

use crate::weights::Weights;
use crate::{Error, Result};

/// Activation functions by their transformers name (`ACT2FN`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Gelu,
    GeluNew,
    Relu,
    Silu,
}

impl Activation {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Self::GeluNew,
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            other => {
                return Err(Error::Input(format!(
                    "activation \"{other}\" is not supported (gelu, gelu_new, relu, silu)"
                )));
            }
        })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if computes_natively(&x) {
            return map_values(x, |v| self.apply_slice(v));
        }
        match self {
            Self::Gelu => activation::gelu(x),
            Self::GeluNew => activation::gelu_approximate(x),
            Self::Relu => activation::relu(x),
            Self::Silu => activation::silu(x),
        }
    }

    /// The same function on plain values, vectorised (see [`crate::fastmath`]).
    pub fn apply_slice(&self, x: &mut [f32]) {
        match self {
            Self::Gelu => crate::fastmath::gelu(x),
            Self::GeluNew => crate::fastmath::gelu_tanh(x),
            Self::Relu => crate::fastmath::relu(x),
            Self::Silu => crate::fastmath::silu(x),
        }
    }
}

/// True on the CPU backend without autodiff (inference): elementwise functions and softmax are
/// then computed on the values with vectorised code in parallel ([`crate::fastmath`]) instead
/// of burn-flex's scalar libm calls. (On an autodiff device an intermediate tensor may carry a
/// gradient path even though `is_require_grad` — true for leaves only — says no.)
pub fn computes_natively<const D: usize>(x: &Tensor<D>) -> bool {
    let device = x.device();
    !device.is_autodiff() && device == Device::flex()
}

/// `f` applied to the values of `x` in parallel blocks of whole rows (last dimension).
pub fn map_values<const D: usize>(x: Tensor<D>, f: impl Fn(&mut [f32]) + Send + Sync) -> Tensor<D> {
    use rayon::prelude::*;
    let shape = x.shape();
    let row = x.dims()[D - 1].max(1);
    let device = x.device();
    let mut v = x.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
    v.par_chunks_mut(row * (1usize << 14).div_ceil(row)).for_each(f);
    Tensor::from_data(TensorData::new(v, shape), &device)
}

/// Softmax over the last dimension (natively for constants on the CPU, see
/// [`computes_natively`]).
pub fn softmax_last<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if computes_natively(&x) {
        let row = x.dims()[D - 1];
        return map_values(x, |v| crate::fastmath::softmax_rows(v, row));
    }
    activation::softmax(x, D - 1)
}

/// A linear layer from `{path}.weight` `[out, in]` (+ `{path}.bias`), stored as burn's `[in, out]`.
pub fn load_linear(w: &Weights, path: &str, d_in: usize, d_out: usize, bias: bool, device: &Device) -> Result<Linear> {
    let v = w.values(&format!("{path}.weight"), &[d_out, d_in])?;
    let mut t = vec![0.0f32; v.len()];
    for o in 0..d_out {
        for i in 0..d_in {
            t[i * d_out + o] = v[o * d_in + i];
        }
    }
    let weight = Param::from_data(TensorData::new(t, [d_in, d_out]), device);
    let bias = if bias { Some(Param::from_tensor(w.tensor(&format!("{path}.bias"), [d_out], device)?)) } else { None };
    Ok(Linear { weight, bias })
}

/// A projection PEFT methods may target, named by its checkpoint path (relative to the base model).
pub fn load_proj(w: &Weights, path: &str, d_in: usize, d_out: usize, bias: bool, device: &Device) -> Result<Proj> {
    Ok(Proj::new(load_linear(w, path, d_in, d_out, bias, device)?, path))
}

/// `nn.LayerNorm`, with or without the elementwise affine parameters.
#[derive(Module, Debug)]
pub struct LayerNorm {
    pub weight: Option<Param<Tensor<1>>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub eps: f64,
}

impl LayerNorm {
    /// `{path}.weight` and `{path}.bias`.
    pub fn load(w: &Weights, path: &str, dim: usize, eps: f64, device: &Device) -> Result<Self> {
        Ok(Self {
            weight: Some(Param::from_tensor(w.tensor(&format!("{path}.weight"), [dim], device)?)),
            bias: Some(Param::from_tensor(w.tensor(&format!("{path}.bias"), [dim], device)?)),
            eps,
        })
    }

    /// `elementwise_affine=False`.
    pub fn plain(eps: f64) -> Self {
        Self { weight: None, bias: None, eps }
    }

    /// Normalise over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match &self.weight {
            Some(g) => layer_norm(x, g.val(), self.bias.as_ref().map(|b| b.val()), self.eps),
            None => {
                let (var, mean) = x.clone().var_mean_bias(D - 1);
                (x - mean) / (var + self.eps).sqrt()
            }
        }
    }
}

/// `nn.Conv1d` with symmetric padding.
#[derive(Module, Debug)]
pub struct Conv1d {
    pub weight: Param<Tensor<3>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

impl Conv1d {
    /// `{path}.weight` `[out, in / groups, kernel]` (+ `{path}.bias`).
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        w: &Weights,
        path: &str,
        shape: [usize; 3],
        bias: bool,
        stride: usize,
        padding: usize,
        groups: usize,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            weight: Param::from_tensor(w.tensor(&format!("{path}.weight"), shape, device)?),
            bias: if bias {
                Some(Param::from_tensor(w.tensor(&format!("{path}.bias"), [shape[0]], device)?))
            } else {
                None
            },
            stride,
            padding,
            groups,
        })
    }

    /// `[batch, channels, time]` in and out.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        conv_apply(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()), self.stride, self.padding, self.groups)
    }
}

pub(crate) fn conv_apply(
    x: Tensor<3>,
    weight: Tensor<3>,
    bias: Option<Tensor<1>>,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Tensor<3> {
    conv1d(x, weight, bias, ConvOptions::new([stride], [padding], [1], groups))
}

/// Additive attention mask `[batch, 1, 1, time]`: 0 for valid frames, `f32::MIN` for padding, as
/// transformers builds it (`(1 - mask) * finfo.min`).
pub fn additive_key_mask(lengths: &[usize], time: usize, device: &Device) -> Tensor<4> {
    let mut m = vec![0.0f32; lengths.len() * time];
    for (b, &len) in lengths.iter().enumerate() {
        for t in len.min(time)..time {
            m[b * time + t] = f32::MIN;
        }
    }
    Tensor::from_data(TensorData::new(m, [lengths.len(), 1, 1, time]), device)
}

/// `[batch, time, 1]` with 1 for valid frames and 0 for padding.
pub fn valid_frames(lengths: &[usize], time: usize, device: &Device) -> Tensor<3> {
    let mut m = vec![0.0f32; lengths.len() * time];
    for (b, &len) in lengths.iter().enumerate() {
        for v in &mut m[b * time..b * time + len.min(time)] {
            *v = 1.0;
        }
    }
    Tensor::from_data(TensorData::new(m, [lengths.len(), time, 1]), device)
}
