//! Positional convolution and transformer stack of the SSL encoders.

use burn::module::Param;
use burn::prelude::*;

use speechtune_peft::{Bottleneck, ConvAdapter, Proj, adapt, conv_adapt};

use super::attention::Attention;
use crate::Result;
use crate::config::SslConfig;
use crate::layers::{Activation, Conv1d, LayerNorm, additive_key_mask, conv_apply, load_proj, valid_frames};
use crate::weights::Weights;

// Wav2Vec2PositionalConvEmbedding: one grouped conv with weight norm over the kernel axis (dim=2).
#[derive(Module, Debug)]
pub struct WeightNormPosConv {
    /// `[1, 1, kernel]`
    pub weight_g: Param<Tensor<3>>,
    /// `[dim, dim / groups, kernel]`
    pub weight_v: Param<Tensor<3>>,
    pub bias: Param<Tensor<1>>,
    pub groups: usize,
    /// Each group's weight packed for bf16 products ([`WeightNormPosConv::use_bf16`]).
    #[module(skip)]
    pub bf16: Option<std::sync::Arc<Vec<speechtune_kernels::bf16::PackedB>>>,
}

impl WeightNormPosConv {
    fn load(cfg: &SslConfig, w: &Weights, device: &Device) -> Result<Self> {
        let (d, k, g) = (cfg.hidden_size, cfg.pos_conv_param(), cfg.num_conv_pos_embedding_groups);
        let p = "encoder.pos_conv_embed.conv";
        // Two spellings: torch's old weight_norm hook and the newer parametrizations.
        let (gn, vn) = if w.contains(&format!("{p}.weight_g")) {
            (format!("{p}.weight_g"), format!("{p}.weight_v"))
        } else {
            (format!("{p}.parametrizations.weight.original0"), format!("{p}.parametrizations.weight.original1"))
        };
        // v before g: a new model's g is initialised from v.
        let weight_v = Param::from_tensor(w.tensor(&vn, [d, d / g, k], device)?);
        Ok(Self {
            weight_g: Param::from_tensor(w.tensor(&gn, [1, 1, k], device)?),
            weight_v,
            bias: Param::from_tensor(w.tensor(&format!("{p}.bias"), [d], device)?),
            groups: g,
            bf16: None,
        })
    }

    /// Mixed precision (`on`): the convolution's products with bf16 inputs and f32 sums, as
    /// `torch.autocast` runs `conv1d`, where it runs outside burn (its weights frozen, on the
    /// CPU; packed now). False (and f32) otherwise, or with `on` false.
    pub fn use_bf16(&mut self, on: bool) -> bool {
        let on_cpu = self.weight_v.val().device().inner() == Device::flex();
        self.bf16 = (on && !super::native_cnn::trains(self) && on_cpu).then(|| {
            let [_, cg, kernel] = self.weight_v.dims();
            let wg = super::native_cnn::pos_conv_weight(self.weight_g.val(), self.weight_v.val());
            std::sync::Arc::new(super::native_cnn::pos_conv_packed(&wg, self.groups, cg, kernel))
        });
        self.bf16.is_some()
    }

    /// On the CPU, where no gradient flows through it (inference, or training of later layers
    /// only), the convolution runs outside burn ([`super::native_cnn::pos_conv_native`]).
    fn runs_natively(&self, x: &Tensor<3>) -> bool {
        x.device().inner() == Device::flex() && !x.is_tracked() && !super::native_cnn::trains(self)
    }

    fn weight(&self) -> Tensor<3> {
        let v = self.weight_v.val();
        let norm = v.clone().powf_scalar(2.0).sum_dim(0).sum_dim(1).sqrt();
        v * (self.weight_g.val() / norm)
    }
}

// Data2VecAudioPositionalConvLayer: conv → pad removal → LayerNorm without affine → activation.
#[derive(Module, Debug)]
pub struct StackedPosConv {
    pub layers: Vec<Conv1d>,
    pub norm: LayerNorm,
}

#[derive(Module, Debug)]
pub enum PosConv {
    WeightNorm(WeightNormPosConv),
    Stacked(StackedPosConv),
}

/// Drop the extra frame a symmetric padding of an even kernel adds (`Wav2Vec2SamePadLayer`).
fn same_pad(x: Tensor<3>, kernel: usize) -> Tensor<3> {
    if kernel.is_multiple_of(2) {
        let t = x.dims()[2];
        x.narrow(2, 0, t - 1)
    } else {
        x
    }
}

impl PosConv {
    /// `[batch, time, dim]` → the positional embedding to add.
    fn forward(&self, x: Tensor<3>, act: Activation) -> Tensor<3> {
        if let PosConv::WeightNorm(c) = self
            && c.runs_natively(&x)
        {
            use super::native_cnn::{PosConvWeight, pos_conv_native, pos_conv_weight};
            let [_, cg, kernel] = c.weight_v.dims();
            let (bias, groups) = (c.bias.val(), c.groups);
            return match &c.bf16 {
                Some(packed) => pos_conv_native(x, PosConvWeight::Bf16(packed), cg, kernel, bias, groups, act),
                None => {
                    let wg = pos_conv_weight(c.weight_g.val(), c.weight_v.val());
                    pos_conv_native(x, PosConvWeight::F32(&wg), cg, kernel, bias, groups, act)
                }
            };
        }
        if speechtune_kernels::supports(&x) && x.device().is_autodiff() {
            return self.forward_channels_last(x, act);
        }
        let x = x.swap_dims(1, 2);
        let y = match self {
            PosConv::WeightNorm(c) => {
                let weight = c.weight();
                let k = weight.dims()[2];
                act.forward(same_pad(conv_apply(x, weight, Some(c.bias.val()), 1, k / 2, c.groups), k))
            }
            PosConv::Stacked(s) => {
                let mut y = x;
                for conv in &s.layers {
                    let k = conv.weight.dims()[2];
                    y = same_pad(conv.forward(y), k);
                    y = act.forward(s.norm.forward(y.swap_dims(1, 2)).swap_dims(1, 2));
                }
                y
            }
        };
        y.swap_dims(1, 2)
    }

    /// [`PosConv::forward`] with channels-last convolutions that have their own backward pass
    /// ([`speechtune_kernels::conv1d`]): on burn's CPU autodiff graph (pre-training, or
    /// fine-tuning that trains the positional convolution).
    fn forward_channels_last(&self, x: Tensor<3>, act: Activation) -> Tensor<3> {
        // Drop the extra frame of an even kernel's symmetric padding (`Wav2Vec2SamePadLayer`).
        let same_pad = |y: Tensor<3>, kernel: usize| {
            let t = y.dims()[1];
            if kernel.is_multiple_of(2) { y.narrow(1, 0, t - 1) } else { y }
        };
        match self {
            PosConv::WeightNorm(c) => {
                let weight = c.weight();
                let k = weight.dims()[2];
                act.forward(same_pad(speechtune_kernels::conv1d(x, weight, Some(c.bias.val()), 1, k / 2, c.groups), k))
            }
            PosConv::Stacked(s) => {
                let mut y = x;
                for conv in &s.layers {
                    let k = conv.weight.dims()[2];
                    let bias = conv.bias.as_ref().map(|b| b.val());
                    y = same_pad(
                        speechtune_kernels::conv1d(y, conv.weight.val(), bias, conv.stride, conv.padding, conv.groups),
                        k,
                    );
                    y = act.forward(s.norm.forward(y));
                }
                y
            }
        }
    }
}

// Wav2Vec2EncoderLayer (post-LN) and Wav2Vec2EncoderLayerStableLayerNorm (pre-LN); the HuBERT,
// data2vec-audio and WavLM layers are the same up to their attention.
#[derive(Module, Debug)]
pub struct EncoderLayer {
    pub attention: Attention,
    pub layer_norm: LayerNorm,
    pub intermediate_dense: Proj,
    pub output_dense: Proj,
    pub final_layer_norm: LayerNorm,
    /// Bottleneck adapters on the attention and feed-forward outputs (PEFT; None when loaded).
    pub adapter_attn: Option<Bottleneck>,
    pub adapter_ffn: Option<Bottleneck>,
    /// ConvAdapter after the feed-forward block (PEFT; None when loaded).
    pub conv_adapter: Option<ConvAdapter>,
}

impl EncoderLayer {
    fn feed_forward(&self, x: Tensor<3>, act: Activation) -> Tensor<3> {
        let z = self.intermediate_dense.forward(x);
        // Training the feed-forward block on the CPU, the activation is part of the second
        // product (one tensor of the 3,072-wide activations kept instead of two).
        let y = match act.fused() {
            Some(fused) => self.output_dense.forward_after(z, fused, |z| act.forward(z)),
            None => self.output_dense.forward(act.forward(z)),
        };
        conv_adapt(&self.conv_adapter, adapt(&self.adapter_ffn, y))
    }

    fn forward(
        &self,
        x: Tensor<3>,
        mask: Option<Tensor<4>>,
        bias: &mut Option<Tensor<4>>,
        stable: bool,
        act: Activation,
    ) -> Tensor<3> {
        let aa = &self.adapter_attn;
        if stable {
            let x = x.clone() + adapt(aa, self.attention.forward(self.layer_norm.forward(x), mask, bias));
            x.clone() + self.feed_forward(self.final_layer_norm.forward(x), act)
        } else {
            let x = self.layer_norm.forward(x.clone() + adapt(aa, self.attention.forward(x, mask, bias)));
            self.final_layer_norm.forward(x.clone() + self.feed_forward(x, act))
        }
    }
}

// Wav2Vec2Encoder / Wav2Vec2EncoderStableLayerNorm and their HuBERT, data2vec-audio, WavLM twins.
#[derive(Module, Debug)]
pub struct Encoder {
    pub pos_conv: PosConv,
    pub layer_norm: LayerNorm,
    pub layers: Vec<EncoderLayer>,
    pub stable: bool,
    /// Stable layout: the last hidden state is taken after the final layer norm (transformers
    /// 4.x, the default) or before it (transformers 5).
    #[module(skip)]
    pub final_norm_in_hidden_states: bool,
    #[module(skip)]
    pub pos_activation: Activation,
    #[module(skip)]
    pub hidden_activation: Activation,
}

impl Encoder {
    pub fn load(cfg: &SslConfig, w: &Weights, device: &Device) -> Result<Self> {
        let d = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let pos_conv = if cfg.is_data2vec() {
            let (k, g) = (cfg.conv_pos_kernel_size, cfg.num_conv_pos_embedding_groups);
            let layers = (0..cfg.pos_conv_param())
                .map(|i| {
                    let p = format!("encoder.pos_conv_embed.layers.{i}.conv");
                    Conv1d::load(w, &p, [d, d / g, k], true, 1, k / 2, g, device)
                })
                .collect::<Result<Vec<_>>>()?;
            PosConv::Stacked(StackedPosConv { layers, norm: LayerNorm::plain(1e-5) })
        } else {
            PosConv::WeightNorm(WeightNormPosConv::load(cfg, w, device)?)
        };
        let mut layers = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layers.{i}");
            let wavlm = cfg.is_wavlm().then_some((cfg.num_buckets, cfg.max_bucket_distance, i == 0));
            layers.push(EncoderLayer {
                attention: Attention::load(
                    w,
                    &format!("{p}.attention"),
                    d,
                    cfg.num_attention_heads,
                    true,
                    wavlm,
                    device,
                )?,
                layer_norm: LayerNorm::load(w, &format!("{p}.layer_norm"), d, eps, device)?,
                intermediate_dense: load_proj(
                    w,
                    &format!("{p}.feed_forward.intermediate_dense"),
                    d,
                    cfg.intermediate_size,
                    true,
                    device,
                )?,
                output_dense: load_proj(
                    w,
                    &format!("{p}.feed_forward.output_dense"),
                    cfg.intermediate_size,
                    d,
                    true,
                    device,
                )?,
                final_layer_norm: LayerNorm::load(w, &format!("{p}.final_layer_norm"), d, eps, device)?,
                adapter_attn: None,
                adapter_ffn: None,
                conv_adapter: None,
            });
        }
        Ok(Self {
            pos_conv,
            layer_norm: LayerNorm::load(w, "encoder.layer_norm", d, eps, device)?,
            layers,
            stable: cfg.do_stable_layer_norm,
            final_norm_in_hidden_states: true,
            pos_activation: Activation::parse(&cfg.feat_extract_activation)?,
            hidden_activation: Activation::parse(&cfg.hidden_act)?,
        })
    }

    /// The hidden states after `from` (indices `from + 1 ..= layers`), computed from hidden state
    /// `from` given as `x` (an unpadded batch, no LayerDrop): what the rest of the model sees
    /// when that hidden state is replaced, as integrated gradients needs. WavLM's relative
    /// position bias comes from the first layer, so WavLM is refused for `from > 0`.
    pub fn forward_from(&self, from: usize, x: Tensor<3>) -> crate::Result<Vec<Tensor<3>>> {
        let n = self.layers.len();
        if from > n {
            return Err(crate::Error::Input(format!("hidden state {from} of a {n}-layer encoder")));
        }
        if from > 0 && self.layers[0].attention.rel.is_some() {
            return Err(crate::Error::Input(
                "continuing from a middle layer is not supported for WavLM (its position bias lives in layer 0)".into(),
            ));
        }
        let mut x = x;
        let mut out = Vec::new();
        let mut bias = None;
        for (i, layer) in self.layers.iter().enumerate().skip(from) {
            x = layer.forward(x, None, &mut bias, self.stable, self.hidden_activation);
            if i + 1 < n {
                out.push(x.clone());
            }
        }
        if from < n {
            out.push(if self.stable && self.final_norm_in_hidden_states { self.layer_norm.forward(x) } else { x });
        }
        Ok(out)
    }

    /// Every hidden state as `output_hidden_states` returns them: the transformer input first,
    /// then each layer's output (in the stable layout the last one after the final norm, as
    /// transformers 4.x; before it when `final_norm_in_hidden_states` is off, as transformers 5).
    /// Layers marked in `skip` pass their input through (LayerDrop).
    pub fn forward(&self, x: Tensor<3>, lengths: Option<&[usize]>, skip: &[bool]) -> Vec<Tensor<3>> {
        let [_, t, _] = x.dims();
        let device = x.device();
        let (x, mask) = match lengths {
            Some(l) => (x * valid_frames(l, t, &device), Some(additive_key_mask(l, t, &device))),
            None => (x, None),
        };
        let mut x = x.clone() + self.pos_conv.forward(x, self.pos_activation);
        if !self.stable {
            x = self.layer_norm.forward(x);
        }
        let mut hidden = Vec::with_capacity(self.layers.len() + 1);
        let mut bias = None;
        for (i, layer) in self.layers.iter().enumerate() {
            hidden.push(x.clone());
            if !skip.get(i).copied().unwrap_or(false) {
                x = layer.forward(x, mask.clone(), &mut bias, self.stable, self.hidden_activation);
            }
        }
        if self.stable && self.final_norm_in_hidden_states {
            x = self.layer_norm.forward(x);
        }
        hidden.push(x);
        hidden
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::prelude::*;
    use burn::tensor::Distribution;

    use super::{PosConv, WeightNormPosConv};
    use crate::layers::Activation;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
    }

    /// The positional convolution outside burn (inference, or no gradient through it) gives
    /// the graph's values (a tracked input: the channels-last convolution with its own backward
    /// pass, `speechtune_kernels::conv1d`), for even and odd kernels.
    #[test]
    fn native_positional_conv_equals_burns() {
        let normal = Distribution::Normal(0.0, 1.0);
        for kernel in [8, 7] {
            let (dim, groups) = (32, 4);
            let inner = Device::flex();
            let conv = PosConv::WeightNorm(WeightNormPosConv {
                weight_g: Param::from_tensor(Tensor::random([1, 1, kernel], normal, &inner)),
                weight_v: Param::from_tensor(Tensor::random([dim, dim / groups, kernel], normal, &inner)),
                bias: Param::from_tensor(Tensor::random([dim], normal, &inner)),
                groups,
                bf16: None,
            });
            let x = Tensor::<3>::random([2, 11, dim], normal, &inner);
            let PosConv::WeightNorm(c) = &conv else { unreachable!() };
            assert!(c.runs_natively(&x));
            let native = values(conv.forward(x.clone(), Activation::Gelu));

            let ad = inner.clone().autodiff();
            let conv = conv.fork(&ad);
            let tracked = Tensor::<3>::from_data(x.into_data(), &ad).require_grad();
            let PosConv::WeightNorm(c) = &conv else { unreachable!() };
            assert!(!c.runs_natively(&tracked), "a tracked input takes the autodiff graph");
            let graph = values(conv.forward(tracked, Activation::Gelu));
            assert_eq!(native.len(), graph.len());
            for (i, (a, b)) in native.iter().zip(&graph).enumerate() {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "kernel {kernel}, [{i}]: {a} vs the graph's {b}");
            }
        }
    }

    /// Mixed precision: the positional convolution's products in bf16 are their definition on
    /// bf16-rounded inputs and weights (sums in f64 here), for even and odd kernels; they differ
    /// from f32's; a trainable weight stays f32, and `use_bf16(false)` switches back.
    #[test]
    fn bf16_positional_conv_is_its_definition() {
        use speechtune_kernels::bf16::{from_bf16, to_bf16};
        let r = |v: f32| from_bf16(to_bf16(v)) as f64;
        let normal = Distribution::Normal(0.0, 1.0);
        let device = Device::flex();
        for kernel in [8, 7] {
            let (dim, groups, batch, time) = (32, 4, 2, 11);
            let cg = dim / groups;
            let mut c = WeightNormPosConv {
                weight_g: Param::from_tensor(Tensor::random([1, 1, kernel], normal, &device)),
                weight_v: Param::from_tensor(Tensor::random([dim, cg, kernel], normal, &device)),
                bias: Param::from_tensor(Tensor::random([dim], normal, &device)),
                groups,
                bf16: None,
            };
            let x = Tensor::<3>::random([batch, time, dim], normal, &device);
            let f32_out = values(PosConv::WeightNorm(c.clone()).forward(x.clone(), Activation::Gelu));
            assert!(c.use_bf16(true), "frozen weights on the CPU");
            let conv = PosConv::WeightNorm(c.clone());
            let got = values(conv.forward(x.clone(), Activation::Gelu));

            let wg = super::super::native_cnn::pos_conv_weight(c.weight_g.val(), c.weight_v.val());
            let (xv, bias) = (values(x), values(c.bias.val()));
            let pad = kernel / 2;
            let mut want = vec![0.0f32; batch * time * dim];
            for b in 0..batch {
                for t in 0..time {
                    for ch in 0..dim {
                        let (g, o) = (ch / cg, ch % cg);
                        let mut sum = bias[ch] as f64;
                        for j in 0..kernel {
                            let Some(src) = (t + j).checked_sub(pad).filter(|&s| s < time) else { continue };
                            for i in 0..cg {
                                let w = wg[g * kernel * cg * cg + (j * cg + i) * cg + o];
                                sum += r(xv[(b * time + src) * dim + g * cg + i]) * r(w);
                            }
                        }
                        want[(b * time + t) * dim + ch] = sum as f32;
                    }
                }
            }
            Activation::Gelu.apply_slice(&mut want);
            let diff = |a: &[f32], b: &[f32]| crate::testing::max_diff_of_scale(a, b, &want);
            assert!(
                diff(&got, &want) < 1e-5,
                "kernel {kernel}: {} of the scale from its definition",
                diff(&got, &want)
            );
            assert!(diff(&got, &f32_out) > 1e-4, "kernel {kernel}: bf16 gave f32's values");
            assert!(diff(&got, &f32_out) < 0.02, "kernel {kernel}: {} from f32's", diff(&got, &f32_out));

            assert!(!c.use_bf16(false) && c.bf16.is_none(), "back to f32");
            let ad = device.clone().autodiff();
            let mut trained = PosConv::WeightNorm(c).fork(&ad);
            let PosConv::WeightNorm(t) = &mut trained else { unreachable!() };
            t.weight_v = Param::from_tensor(Tensor::<3>::from_data(t.weight_v.val().into_data(), &ad).require_grad());
            assert!(!t.use_bf16(true), "kernel {kernel}: a trainable weight stays f32");
        }
    }
}
