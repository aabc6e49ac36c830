//! Whisper: the encoder (here), the decoder (`decoder`) and the two together (`seq2seq`).

pub mod decoder;
pub mod languages;
pub mod pipeline;
pub mod seq2seq;
pub mod tokenizer;

use burn::module::Param;
use burn::prelude::*;

use crate::augment::Perturb;
use crate::config::WhisperConfig;
use crate::layers::{Activation, Conv1d, LayerNorm, load_proj};
use crate::weights::Weights;
use crate::{Error, Result};
use speechtune_peft::{Bottleneck, ConvAdapter, Prefix, Proj, adapt, conv_adapt};

/// `WhisperForConditionalGeneration` / `WhisperModel` keep the encoder under `model.encoder.`
/// or `encoder.`; `WhisperForAudioClassification` under `encoder.`.
pub const PREFIXES: [&str; 3] = ["model.encoder.", "encoder.", ""];

// WhisperEncoderLayer (transformers/models/whisper/modeling_whisper.py): pre-LN.
#[derive(Module, Debug)]
pub struct WhisperLayer {
    pub self_attn_layer_norm: LayerNorm,
    pub q_proj: Proj,
    /// No bias, as in the released checkpoints.
    pub k_proj: Proj,
    pub v_proj: Proj,
    pub out_proj: Proj,
    pub final_layer_norm: LayerNorm,
    pub fc1: Proj,
    pub fc2: Proj,
    pub heads: usize,
    /// Bottleneck adapters on the attention and feed-forward outputs (PEFT; None when loaded).
    pub adapter_attn: Option<Bottleneck>,
    pub adapter_ffn: Option<Bottleneck>,
    /// ConvAdapter after the feed-forward block (PEFT; None when loaded).
    pub conv_adapter: Option<ConvAdapter>,
    /// Learned key/value prefix (PEFT prefix tuning; None when loaded).
    pub prefix: Option<Prefix>,
    /// Self-attention's products in bf16, forward and backward (mixed precision, as autocast;
    /// [`crate::UpstreamModel::set_precision`]).
    pub bf16_attention: bool,
}

impl WhisperLayer {
    fn attention(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let (h, hd) = (self.heads, d / self.heads);
        if self.prefix.is_none() && speechtune_kernels::supports(&x) {
            // On the CPU: one fused operation (speechtune_kernels::attention), no mask (as in
            // transformers, the encoder attends to every frame of its window, padding included).
            let (q, k, v) = (self.q_proj.forward(x.clone()), self.k_proj.forward(x.clone()), self.v_proj.forward(x));
            return self.out_proj.forward(speechtune_kernels::attention(q, k, v, h, None, self.bf16_attention));
        }
        let split = |y: Tensor<3>| y.reshape([b, t, h, hd]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone())) * (hd as f64).powf(-0.5);
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let (k, v) = match &self.prefix {
            Some(p) => p.extend(k, v),
            None => (k, v),
        };
        let p = crate::layers::softmax_last(q.matmul(k.swap_dims(2, 3)));
        self.out_proj.forward(p.matmul(v).swap_dims(1, 2).reshape([b, t, d]))
    }

    fn forward(&self, x: Tensor<3>, act: Activation) -> Tensor<3> {
        let x = x.clone() + adapt(&self.adapter_attn, self.attention(self.self_attn_layer_norm.forward(x)));
        let y = self.fc2.forward(act.forward(self.fc1.forward(self.final_layer_norm.forward(x.clone()))));
        x + conv_adapt(&self.conv_adapter, adapt(&self.adapter_ffn, y))
    }
}

// WhisperEncoder: two convs with GELU, sinusoidal positions, pre-LN layers, final norm.
#[derive(Module, Debug)]
pub struct WhisperEncoder {
    pub conv1: Conv1d,
    pub conv2: Conv1d,
    /// `[max_source_positions, d_model]`; frozen in transformers.
    pub embed_positions: Param<Tensor<2>>,
    pub layers: Vec<WhisperLayer>,
    pub layer_norm: LayerNorm,
    pub num_mel_bins: usize,
    pub max_source_positions: usize,
    #[module(skip)]
    pub activation: Activation,
    /// The two convolutions' weights packed for bf16 products ([`WhisperEncoder::use_bf16_frontend`]).
    #[module(skip)]
    pub frontend_bf16: Option<std::sync::Arc<Vec<speechtune_kernels::bf16::PackedB>>>,
}

impl WhisperEncoder {
    /// True where the convolutional front-end runs outside burn
    /// ([`padded_convs_native`](crate::ssl::native_cnn::padded_convs_native)): on the CPU, with
    /// neither its input nor its weights needing a gradient.
    fn frontend_native(&self, features: &Tensor<3>) -> bool {
        features.device().inner() == Device::flex() && !features.is_tracked() && self.frontend_frozen()
    }

    /// Neither convolution of the front-end trains.
    fn frontend_frozen(&self) -> bool {
        use crate::ssl::native_cnn::trains;
        !trains(&self.conv1) && !trains(&self.conv2)
    }

    /// Mixed precision (`on`): the front-end's two convolutions with bf16 inputs and f32 sums, as
    /// autocast runs `conv1d`, where they run outside burn (frozen, on the CPU; packed now).
    /// False (and f32) otherwise, or with `on` false.
    pub fn use_bf16_frontend(&mut self, on: bool) -> bool {
        let frozen = self.frontend_frozen();
        let on_cpu = self.conv1.weight.val().device().inner() == Device::flex();
        self.frontend_bf16 = (on && frozen && on_cpu).then(|| {
            let pack = |c: &Conv1d| crate::ssl::native_cnn::conv_packed(c.weight.val());
            std::sync::Arc::new(vec![pack(&self.conv1), pack(&self.conv2)])
        });
        self.frontend_bf16.is_some()
    }

    /// Every layer's self-attention products in bf16, forward and backward (`on`), or in f32
    /// (`WhisperLayer::bf16_attention`; set by the models' `set_precision`).
    pub fn use_bf16_attention(&mut self, on: bool) {
        self.layers.iter_mut().for_each(|l| l.bf16_attention = on);
    }

    pub fn load(cfg: &WhisperConfig, w: &Weights, device: &Device) -> Result<Self> {
        let (d, m, f) = (cfg.d_model, cfg.num_mel_bins, cfg.encoder_ffn_dim);
        let mut layers = Vec::new();
        for i in 0..cfg.encoder_layers {
            let p = format!("layers.{i}");
            layers.push(WhisperLayer {
                self_attn_layer_norm: LayerNorm::load(w, &format!("{p}.self_attn_layer_norm"), d, 1e-5, device)?,
                q_proj: load_proj(w, &format!("{p}.self_attn.q_proj"), d, d, true, device)?,
                k_proj: load_proj(w, &format!("{p}.self_attn.k_proj"), d, d, false, device)?,
                v_proj: load_proj(w, &format!("{p}.self_attn.v_proj"), d, d, true, device)?,
                out_proj: load_proj(w, &format!("{p}.self_attn.out_proj"), d, d, true, device)?,
                final_layer_norm: LayerNorm::load(w, &format!("{p}.final_layer_norm"), d, 1e-5, device)?,
                fc1: load_proj(w, &format!("{p}.fc1"), d, f, true, device)?,
                fc2: load_proj(w, &format!("{p}.fc2"), f, d, true, device)?,
                heads: cfg.encoder_attention_heads,
                adapter_attn: None,
                adapter_ffn: None,
                conv_adapter: None,
                prefix: None,
                bf16_attention: false,
            });
        }
        let embed = w.tensor("embed_positions.weight", [cfg.max_source_positions, d], device)?;
        Ok(Self {
            conv1: Conv1d::load(w, "conv1", [d, m, 3], true, 1, 1, 1, device)?,
            conv2: Conv1d::load(w, "conv2", [d, d, 3], true, 2, 1, 1, device)?,
            embed_positions: Param::from_tensor(embed).set_require_grad(false),
            layers,
            layer_norm: LayerNorm::load(w, "layer_norm", d, 1e-5, device)?,
            num_mel_bins: m,
            max_source_positions: cfg.max_source_positions,
            activation: Activation::parse(&cfg.activation_function)?,
            frontend_bf16: None,
        })
    }

    /// Mel frames the standard front-end produces (3000 for the released models).
    pub fn expected_frames(&self) -> usize {
        self.max_source_positions * 2
    }

    /// `features`: `[batch, n_mels, frames]`. transformers requires exactly
    /// `expected_frames()`; with `unpadded` any frame count up to that is accepted (non-standard).
    pub fn forward(&self, features: Tensor<3>, unpadded: bool) -> Result<Vec<Tensor<3>>> {
        self.forward_perturbed(features, unpadded, &[], None)
    }

    /// [`WhisperEncoder::forward`] with SpecAugment on the log-mel input (zeroed frames and mel
    /// bins, as transformers' `_mask_input_features`) and LayerDrop; `lengths` in mel frames.
    pub fn forward_perturbed(
        &self,
        features: Tensor<3>,
        unpadded: bool,
        lengths: &[usize],
        perturb: Option<&mut Perturb>,
    ) -> Result<Vec<Tensor<3>>> {
        let mut features = features;
        let mut skip = Vec::new();
        if let Some(p) = perturb {
            let [b, m, t] = features.dims();
            let device = features.device();
            if let Some(mask) = p.time_mask(b, t, lengths, &device) {
                features = features * (mask.neg() + 1.0).swap_dims(1, 2);
            }
            if let Some(keep) = p.channel_keep(b, m, &device) {
                features = features * keep.swap_dims(1, 2);
            }
            skip = p.dropped_layers(self.layers.len());
        }
        let [_, mels, frames] = features.dims();
        if mels != self.num_mel_bins {
            return Err(Error::Input(format!("Whisper encoder expects {} mel bins, got {mels}", self.num_mel_bins)));
        }
        let ok =
            if unpadded { frames <= self.expected_frames() && frames > 0 } else { frames == self.expected_frames() };
        if !ok {
            return Err(Error::Input(format!(
                "Whisper encoder expects {} mel frames (30-s windows for the released models), got {frames}",
                self.expected_frames()
            )));
        }
        let gelu = Activation::Gelu;
        let x = if self.frontend_native(&features) {
            let convs = [&self.conv1, &self.conv2];
            crate::ssl::native_cnn::padded_convs_native(
                features,
                &convs,
                self.frontend_bf16.as_deref().map(|p| &p[..]),
                gelu,
            )
        } else {
            gelu.forward(self.conv2.forward(gelu.forward(self.conv1.forward(features)))).swap_dims(1, 2)
        };
        let t = x.dims()[1];
        let mut x = x + self.embed_positions.val().narrow(0, 0, t).unsqueeze_dim(0);
        let mut hidden = Vec::with_capacity(self.layers.len() + 1);
        for (i, layer) in self.layers.iter().enumerate() {
            hidden.push(x.clone());
            if !skip.get(i).copied().unwrap_or(false) {
                x = layer.forward(x, self.activation);
            }
        }
        hidden.push(self.layer_norm.forward(x));
        Ok(hidden)
    }
}
