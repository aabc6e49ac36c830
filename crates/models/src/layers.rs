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
        if on_cpu_graph(&x)
            && let Some((plain, with_slope)) = self.fused()
        {
            return speechtune_kernels::rowwise::activation(x, plain, with_slope);
        }
        match self {
            Self::Gelu => activation::gelu(x),
            Self::GeluNew => activation::gelu_approximate(x),
            Self::Relu => activation::relu(x),
            Self::Silu => activation::silu(x),
        }
    }

    /// The function and the function with its slope as the CPU graph's fused operations take
    /// them ([`speechtune_kernels::rowwise::activation`], `dense::linear_after`,
    /// `conv1d_after`); none for ReLU (burn's own ReLU and its backward are single comparisons).
    pub fn fused(&self) -> Option<(speechtune_kernels::rowwise::Plain, speechtune_kernels::rowwise::WithSlope)> {
        match self {
            Self::Gelu => Some((crate::fastmath::gelu, crate::fastmath::gelu_with_slope)),
            Self::GeluNew => Some((crate::fastmath::gelu_tanh, crate::fastmath::gelu_tanh_with_slope)),
            Self::Silu => Some((crate::fastmath::silu, crate::fastmath::silu_with_slope)),
            Self::Relu => None,
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

/// True for a float32 tensor on the CPU backend with autodiff (training): GELU, SiLU, softmax
/// and layer norm are then single operations on the graph, computed in parallel with a fused
/// backward pass ([`speechtune_kernels::rowwise`]).
fn on_cpu_graph<const D: usize>(x: &Tensor<D>) -> bool {
    speechtune_kernels::supports(x) && x.device().is_autodiff()
}

/// The values of `x` (row-major), copied once. `into_data` on a tensor that is still shared (a
/// graph node's input) copies twice, the second time to re-align the bytes.
pub(crate) fn copy_values<const D: usize>(x: Tensor<D>) -> Vec<f32> {
    use burn::backend::Flex;
    if x.dtype() == burn::tensor::DType::F32
        && x.device() == Device::flex()
        && let Ok(t) = x.clone().try_into_primitive::<Flex>()
    {
        return match t.as_slice::<f32>() {
            Some(v) => v.to_vec(),
            None => t.to_contiguous().as_slice::<f32>().map(<[f32]>::to_vec).unwrap_or_default(),
        };
    }
    x.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default()
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

/// Softmax over the last dimension: natively for constants on the CPU (see
/// [`computes_natively`]), as one operation on the CPU's training graph (see [`on_cpu_graph`]),
/// burn's operations elsewhere.
pub fn softmax_last<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let row = x.dims()[D - 1];
    if computes_natively(&x) {
        return map_values(x, |v| crate::fastmath::softmax_rows(v, row));
    }
    if on_cpu_graph(&x) {
        return speechtune_kernels::rowwise::softmax_last(x);
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
            Some(g) => match &self.bias {
                Some(b) if on_cpu_graph(&x) => speechtune_kernels::rowwise::layer_norm(x, g.val(), b.val(), self.eps),
                b => layer_norm(x, g.val(), b.as_ref().map(|b| b.val()), self.eps),
            },
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

#[cfg(test)]
mod tests {
    use burn::prelude::*;
    use burn::tensor::{TensorData, activation};

    use super::{Activation, on_cpu_graph, softmax_last};

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
    }

    /// Value and gradient of `f` at `x` under the upstream gradient `r`, on the training device.
    fn value_and_grad<const D: usize>(
        f: impl Fn(Tensor<D>) -> Tensor<D>,
        x: &TensorData,
        r: &TensorData,
        device: &Device,
    ) -> (Vec<f32>, Vec<f32>) {
        let x = Tensor::<D>::from_data(x.clone(), device).require_grad();
        assert!(on_cpu_graph(&x) && x.is_tracked(), "the fused path applies to this input");
        let y = f(x.clone());
        let grads = (y.clone() * Tensor::<D>::from_data(r.clone(), device)).sum().backward();
        (values(y), values(x.grad(&grads).unwrap()))
    }

    fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len());
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol * w.abs().max(1.0), "{what}[{i}]: {g} vs burn's {w}");
        }
    }

    fn data(n: usize, seed: u32, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / 16_777_216.0)
            .map(|u| (u * 2.0 - 1.0) * scale)
            .collect()
    }

    /// GELU (exact and tanh) and SiLU on the autodiff graph of the CPU: computed natively as one
    /// operation each; the same values and gradients as burn's own operations, and the same
    /// values as inference.
    #[test]
    fn fused_activations_equal_burns_graph() {
        let device = Device::flex().autodiff();
        let x = TensorData::new(data(3 * 700, 1, 6.0), [3, 700]);
        let r = TensorData::new(data(3 * 700, 2, 1.0), [3, 700]);
        type Reference = fn(Tensor<2>) -> Tensor<2>;
        let cases: [(Activation, Reference); 3] = [
            (Activation::Gelu, activation::gelu),
            (Activation::GeluNew, activation::gelu_approximate),
            (Activation::Silu, activation::silu),
        ];
        for (act, reference) in cases {
            let (y, g) = value_and_grad(|x: Tensor<2>| act.forward(x), &x, &r, &device);
            let (y_ref, g_ref) = value_and_grad(reference, &x, &r, &device);
            close(&format!("{act:?} value"), &y, &y_ref, 1e-6);
            let inference = values(act.forward(Tensor::<2>::from_data(x.clone(), &Device::flex())));
            assert_eq!(y, inference, "{act:?}: training's forward is inference's, to the bit");
            close(&format!("{act:?} gradient"), &g, &g_ref, 1e-5);
        }
    }

    /// Softmax on the graph, with masked keys (`f32::MIN`, as `additive_key_mask` writes them):
    /// the fused operation gives burn's values and gradients, and masked keys exactly 0 weight;
    /// so does -inf (Whisper's causal mask).
    #[test]
    fn fused_softmax_equals_burns_graph() {
        let device = Device::flex().autodiff();
        let (rows, row) = (6, 45);
        let mut v = data(rows * row, 3, 8.0);
        for key in 40..row {
            v[row + key] = f32::MIN; // row 1: the last 5 keys are padding
        }
        let x = TensorData::new(v.clone(), [1, rows, row]);
        let r = TensorData::new(data(rows * row, 4, 1.0), [1, rows, row]);
        let (y, g) = value_and_grad(softmax_last::<3>, &x, &r, &device);
        let (y_ref, g_ref) = value_and_grad(|x: Tensor<3>| activation::softmax(x, 2), &x, &r, &device);
        close("softmax value", &y, &y_ref, 1e-6);
        let inference = values(softmax_last(Tensor::<3>::from_data(x.clone(), &Device::flex())));
        assert_eq!(y, inference, "training's forward is inference's, to the bit");
        close("softmax gradient", &g, &g_ref, 1e-5);
        for key in 40..row {
            assert_eq!(y[row + key], 0.0, "a masked key gets no weight");
            assert_eq!(g[row + key], 0.0, "nor gradient");
        }
        v[2] = f32::NEG_INFINITY;
        let x = TensorData::new(v, [1, rows, row]);
        let (y, g) = value_and_grad(softmax_last::<3>, &x, &r, &device);
        let (y_ref, g_ref) = value_and_grad(|x: Tensor<3>| activation::softmax(x, 2), &x, &r, &device);
        close("softmax value with -inf", &y, &y_ref, 1e-6);
        close("softmax gradient with -inf", &g, &g_ref, 1e-5);
        assert_eq!((y[2], g[2]), (0.0, 0.0), "-inf gets no weight and no gradient");
    }
}
