//! Attaching PEFT layers to a loaded upstream, merging them, and their saved state in Hugging
//! Face peft's naming (`base_model.model.{module}.lora_A.weight` `[r, in]`, `lora_B.weight`
//! `[out, r]`), so that `adapter_model.safetensors` loads in peft on the same base model.

use std::collections::HashMap;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::TensorData;
use speechtune_peft::{
    AdapterConfig, Bottleneck, ConvAdapter, ConvAdapterConfig, LoraConfig, LoraLayer, MaskConfig, MaskLayer, Placement,
    Prefix, PrefixConfig, Proj, PruneScope, magnitude_masks,
};

use crate::upstream::UpstreamModel;
use crate::whisper::seq2seq::WhisperSeq2Seq;
use crate::{Error, Precision, Result};

/// A named f32 tensor: (name, shape, row-major values).
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

pub(crate) fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 data")
}

/// A row-major `[rows, cols]` matrix transposed (burn's `[in, out]` ↔ PyTorch's `[out, in]`).
pub(crate) fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = v[r * cols + c];
        }
    }
    t
}

/// Where a transformer layer takes PEFT modules.
struct Slots<'a> {
    adapter_attn: &'a mut Option<Bottleneck>,
    adapter_ffn: &'a mut Option<Bottleneck>,
    conv_adapter: &'a mut Option<ConvAdapter>,
    prefix: &'a mut Option<Prefix>,
}

impl UpstreamModel {
    /// Every projection PEFT methods may target, in model order.
    pub fn projections(&self) -> Vec<&Proj> {
        match self {
            UpstreamModel::Ssl(m) => m
                .encoder
                .layers
                .iter()
                .flat_map(|l| {
                    let a = &l.attention;
                    [&a.q_proj, &a.k_proj, &a.v_proj, &a.out_proj, &l.intermediate_dense, &l.output_dense]
                })
                .collect(),
            UpstreamModel::Whisper(m) => {
                m.layers.iter().flat_map(|l| [&l.q_proj, &l.k_proj, &l.v_proj, &l.out_proj, &l.fc1, &l.fc2]).collect()
            }
        }
    }

    pub fn projections_mut(&mut self) -> Vec<&mut Proj> {
        match self {
            UpstreamModel::Ssl(m) => m
                .encoder
                .layers
                .iter_mut()
                .flat_map(|l| {
                    let a = &mut l.attention;
                    [
                        &mut a.q_proj,
                        &mut a.k_proj,
                        &mut a.v_proj,
                        &mut a.out_proj,
                        &mut l.intermediate_dense,
                        &mut l.output_dense,
                    ]
                })
                .collect(),
            UpstreamModel::Whisper(m) => m
                .layers
                .iter_mut()
                .flat_map(|l| [&mut l.q_proj, &mut l.k_proj, &mut l.v_proj, &mut l.out_proj, &mut l.fc1, &mut l.fc2])
                .collect(),
        }
    }

    /// Attach LoRA to every projection `cfg` targets; returns their names. Fails when nothing
    /// matches, listing the names that exist.
    pub fn attach_lora(&mut self, cfg: &LoraConfig, device: &Device) -> Result<Vec<String>> {
        attach_lora(self.projections_mut(), cfg, device)
    }

    /// Frozen widening projections stored for a faster backward pass
    /// ([`Proj::relayout_for_backward`]); for training where gradients flow through frozen layers.
    pub fn relayout_for_backward(&mut self) {
        self.projections_mut().into_iter().for_each(Proj::relayout_for_backward);
    }

    /// Every frozen, unmasked projection's products in `precision` ([`Proj::use_bf16`]), a
    /// frozen CNN's ([`FeatureEncoder::use_bf16`](crate::ssl::FeatureEncoder::use_bf16)) and
    /// positional convolution's ([`WeightNormPosConv::use_bf16`](crate::ssl::WeightNormPosConv::use_bf16)),
    /// and the fused self-attention's, forward and backward (see
    /// [`speechtune_kernels::attention`]); returns how many projections, CNNs and positional
    /// convolutions (Whisper: its front-end's two convolutions, counted once) run in bf16.
    pub fn set_precision(&mut self, precision: Precision) -> usize {
        let bf16 = precision == Precision::Bf16;
        match self {
            UpstreamModel::Ssl(m) => m.encoder.layers.iter_mut().for_each(|l| l.attention.bf16_attention = bf16),
            UpstreamModel::Whisper(m) => m.use_bf16_attention(bf16),
        }
        let projections = set_precision(self.projections_mut(), precision);
        let m = match self {
            UpstreamModel::Ssl(m) => m,
            UpstreamModel::Whisper(m) => return projections + usize::from(m.use_bf16_frontend(bf16)),
        };
        let cnn = if bf16 {
            m.feature_encoder.use_bf16()
        } else {
            m.feature_encoder.bf16 = None;
            false
        };
        let pos_conv = match &mut m.encoder.pos_conv {
            crate::ssl::PosConv::WeightNorm(c) => c.use_bf16(bf16),
            crate::ssl::PosConv::Stacked(_) => false,
        };
        projections + usize::from(cnn) + usize::from(pos_conv)
    }

    /// The PEFT slots of every transformer layer, in order.
    fn slots(&mut self) -> Vec<Slots<'_>> {
        match self {
            UpstreamModel::Ssl(m) => m
                .encoder
                .layers
                .iter_mut()
                .map(|l| Slots {
                    adapter_attn: &mut l.adapter_attn,
                    adapter_ffn: &mut l.adapter_ffn,
                    conv_adapter: &mut l.conv_adapter,
                    prefix: &mut l.attention.prefix,
                })
                .collect(),
            UpstreamModel::Whisper(m) => m
                .layers
                .iter_mut()
                .map(|l| Slots {
                    adapter_attn: &mut l.adapter_attn,
                    adapter_ffn: &mut l.adapter_ffn,
                    conv_adapter: &mut l.conv_adapter,
                    prefix: &mut l.prefix,
                })
                .collect(),
        }
    }

    /// Add bottleneck adapters to every transformer layer (Houlsby: after attention and FFN;
    /// Pfeiffer: after FFN); returns how many were added.
    pub fn attach_adapters(&mut self, cfg: &AdapterConfig, device: &Device) -> usize {
        let d = self.hidden_size();
        let houlsby = cfg.placement == Placement::Houlsby;
        let mut n = 0;
        for s in self.slots() {
            if houlsby {
                *s.adapter_attn = Some(Bottleneck::new(d, cfg, device));
                n += 1;
            }
            *s.adapter_ffn = Some(Bottleneck::new(d, cfg, device));
            n += 1;
        }
        n
    }

    /// Add a ConvAdapter after the feed-forward block of every transformer layer; returns how
    /// many were added.
    pub fn attach_conv_adapters(&mut self, cfg: &ConvAdapterConfig, device: &Device) -> usize {
        let d = self.hidden_size();
        let slots = self.slots();
        let n = slots.len();
        for s in slots {
            *s.conv_adapter = Some(ConvAdapter::new(d, cfg, device));
        }
        n
    }

    /// Give every attention layer a learned key/value prefix; returns how many were added.
    pub fn attach_prefixes(&mut self, cfg: &PrefixConfig, device: &Device) -> usize {
        let d = self.hidden_size();
        let slots = self.slots();
        let n = slots.len();
        for s in slots {
            *s.prefix = Some(Prefix::new(d, cfg, device));
        }
        n
    }

    /// S3-Router: a binary mask with learnable scores on every feed-forward projection, and on
    /// the attention projections unless `fix_attn`; returns the masked projections' names.
    pub fn attach_masks(&mut self, cfg: &MaskConfig) -> Vec<String> {
        let mut names = Vec::new();
        for p in self.projections_mut() {
            let attention = p.name.contains(".attention.") || p.name.contains(".self_attn.");
            if cfg.fix_attn && attention {
                continue;
            }
            // A masked weight stays f32 (see Proj::use_bf16).
            p.use_f32();
            p.mask = Some(MaskLayer::new(&p.weight_f32(), cfg));
            names.push(p.name.clone());
        }
        names
    }

    /// One-shot magnitude pruning of the projections S3-Router masks (feed-forward, and
    /// attention unless `fix_attn`), as fixed masks; returns their names.
    pub fn prune_magnitude(&mut self, keep: f64, scope: PruneScope, fix_attn: bool) -> Vec<String> {
        let mut chosen: Vec<&mut Proj> = self
            .projections_mut()
            .into_iter()
            .filter(|p| !(fix_attn && (p.name.contains(".attention.") || p.name.contains(".self_attn."))))
            .collect();
        let weights: Vec<Tensor<2>> = chosen.iter().map(|p| p.weight_f32()).collect();
        let masks = magnitude_masks(&weights, keep, scope);
        let mut names = Vec::new();
        for (p, m) in chosen.iter_mut().zip(masks) {
            p.use_f32();
            p.mask = Some(m);
            names.push(p.name.clone());
        }
        names
    }

    /// The binary masks in PyTorch's `[out, in]` layout, named as the weights they mask
    /// (`{prefix}encoder.layers.0.feed_forward.intermediate_dense.weight`).
    pub fn mask_state(&self, prefix: &str) -> Vec<(String, Vec<usize>, Vec<bool>)> {
        let mut out = Vec::new();
        for p in self.projections() {
            if let Some(m) = &p.mask {
                let (d_in, d_out) = (p.d_in(), p.d_out());
                let keep: Vec<bool> = transpose(&values(m.hard()), d_in, d_out).into_iter().map(|k| k > 0.5).collect();
                out.push((format!("{prefix}{}.weight", p.name), vec![d_out, d_in], keep));
            }
        }
        out
    }

    /// BitFit: freeze everything but the bias terms; returns how many bias values train.
    pub fn train_biases_only(&mut self) -> usize {
        let (m, n) = speechtune_peft::bitfit::train_biases(self.clone());
        *self = m;
        n
    }

    /// The adapters present, named by their module path (`encoder.layers.3.adapter_ffn`).
    pub fn adapters(&self) -> Vec<(String, &Bottleneck)> {
        let layers: Vec<(String, &Option<Bottleneck>, &Option<Bottleneck>)> = match self {
            UpstreamModel::Ssl(m) => m
                .encoder
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| (format!("encoder.layers.{i}"), &l.adapter_attn, &l.adapter_ffn))
                .collect(),
            UpstreamModel::Whisper(m) => m
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| (format!("layers.{i}"), &l.adapter_attn, &l.adapter_ffn))
                .collect(),
        };
        let mut out = Vec::new();
        for (path, attn, ffn) in layers {
            if let Some(a) = attn {
                out.push((format!("{path}.adapter_attn"), a));
            }
            if let Some(f) = ffn {
                out.push((format!("{path}.adapter_ffn"), f));
            }
        }
        out
    }

    /// Fold every LoRA update into its base weight and remove the LoRA layers.
    pub fn merge_lora(&mut self) {
        merge_lora(self.projections_mut());
    }

    /// LoRA weights in peft's names and layouts; `prefix` is the checkpoint's base-model
    /// prefix (`wav2vec2.`, `model.encoder.`, ...).
    pub fn lora_state(&self, prefix: &str) -> Vec<NamedTensor> {
        lora_state(self.projections(), prefix)
    }

    /// Load LoRA weights saved by [`UpstreamModel::lora_state`] (or by peft) into the LoRA
    /// layers already attached; every attached layer must be found with the right shape.
    pub fn load_lora_state(&mut self, prefix: &str, tensors: &HashMap<String, (Vec<usize>, Vec<f32>)>) -> Result<()> {
        let device = self.devices().into_iter().next().unwrap_or_default();
        load_lora_state(self.projections_mut(), prefix, tensors, &device)
    }
}

/// Whisper as a whole: LoRA on the projections of the encoder and the decoder (self- and
/// cross-attention, feed-forward), named as in `WhisperForConditionalGeneration` below its
/// `model.` (`encoder.layers.0.self_attn.q_proj`, `decoder.layers.0.encoder_attn.v_proj`), so the
/// usual peft target list `["q_proj", "v_proj"]` adapts both halves as peft does; bottleneck
/// adapters in every layer of both.
impl WhisperSeq2Seq {
    pub fn projections(&self) -> Vec<&Proj> {
        let enc =
            self.encoder.layers.iter().flat_map(|l| [&l.q_proj, &l.k_proj, &l.v_proj, &l.out_proj, &l.fc1, &l.fc2]);
        let dec = self.decoder.layers.iter().flat_map(|l| {
            let (s, c) = (&l.self_attn, &l.encoder_attn);
            [&s.q_proj, &s.k_proj, &s.v_proj, &s.out_proj, &c.q_proj, &c.k_proj, &c.v_proj, &c.out_proj, &l.fc1, &l.fc2]
        });
        enc.chain(dec).collect()
    }

    /// As [`UpstreamModel::relayout_for_backward`], in both halves.
    pub fn relayout_for_backward(&mut self) {
        self.projections_mut().into_iter().for_each(Proj::relayout_for_backward);
    }

    /// As [`UpstreamModel::set_precision`], in both halves, and the decoder's output projection
    /// ([`WhisperDecoder::set_precision`](crate::whisper::decoder::WhisperDecoder::set_precision)).
    pub fn set_precision(&mut self, precision: Precision) -> usize {
        let bf16 = precision == Precision::Bf16;
        self.encoder.use_bf16_attention(bf16);
        let frontend = usize::from(self.encoder.use_bf16_frontend(bf16));
        set_precision(self.projections_mut(), precision) + usize::from(self.decoder.set_precision(precision)) + frontend
    }

    pub fn projections_mut(&mut self) -> Vec<&mut Proj> {
        let enc = self
            .encoder
            .layers
            .iter_mut()
            .flat_map(|l| [&mut l.q_proj, &mut l.k_proj, &mut l.v_proj, &mut l.out_proj, &mut l.fc1, &mut l.fc2]);
        let dec = self.decoder.layers.iter_mut().flat_map(|l| {
            let (s, c) = (&mut l.self_attn, &mut l.encoder_attn);
            [
                &mut s.q_proj,
                &mut s.k_proj,
                &mut s.v_proj,
                &mut s.out_proj,
                &mut c.q_proj,
                &mut c.k_proj,
                &mut c.v_proj,
                &mut c.out_proj,
                &mut l.fc1,
                &mut l.fc2,
            ]
        });
        enc.chain(dec).collect()
    }

    /// See [`UpstreamModel::attach_lora`].
    pub fn attach_lora(&mut self, cfg: &LoraConfig, device: &Device) -> Result<Vec<String>> {
        attach_lora(self.projections_mut(), cfg, device)
    }

    pub fn merge_lora(&mut self) {
        merge_lora(self.projections_mut());
    }

    /// LoRA weights in peft's names: `base_model.model.{prefix}encoder.layers.0.self_attn.q_proj.lora_A.weight`,
    /// `prefix` being `model.` for `WhisperForConditionalGeneration`.
    pub fn lora_state(&self, prefix: &str) -> Vec<NamedTensor> {
        lora_state(self.projections(), prefix)
    }

    pub fn load_lora_state(&mut self, prefix: &str, tensors: &HashMap<String, (Vec<usize>, Vec<f32>)>) -> Result<()> {
        let device = self.devices().into_iter().next().unwrap_or_default();
        load_lora_state(self.projections_mut(), prefix, tensors, &device)
    }

    /// Bottleneck adapters in every encoder and decoder layer (Houlsby: after self-attention
    /// and feed-forward; Pfeiffer: after feed-forward); returns how many were added.
    pub fn attach_adapters(&mut self, cfg: &AdapterConfig, device: &Device) -> usize {
        let d = self.decoder.embed_tokens.dims()[1];
        let houlsby = cfg.placement == Placement::Houlsby;
        let enc = self.encoder.layers.iter_mut().map(|l| (&mut l.adapter_attn, &mut l.adapter_ffn));
        let dec = self.decoder.layers.iter_mut().map(|l| (&mut l.adapter_attn, &mut l.adapter_ffn));
        let mut n = 0;
        for (attn, ffn) in enc.chain(dec) {
            if houlsby {
                *attn = Some(Bottleneck::new(d, cfg, device));
                n += 1;
            }
            *ffn = Some(Bottleneck::new(d, cfg, device));
            n += 1;
        }
        n
    }
}

fn attach_lora(projs: Vec<&mut Proj>, cfg: &LoraConfig, device: &Device) -> Result<Vec<String>> {
    let spec = cfg.target();
    spec.validate().map_err(Error::Input)?;
    let mut names = Vec::new();
    let mut have = Vec::new();
    for p in projs {
        if have.len() < 6 {
            have.push(p.name.clone());
        }
        if spec.matches(&p.name) {
            p.lora = Some(LoraLayer::new(p.d_in(), p.d_out(), cfg, device));
            names.push(p.name.clone());
        }
    }
    if names.is_empty() {
        return Err(Error::Input(format!(
            "LoRA target_modules {:?} match no projection (they are named like {})",
            cfg.target_modules,
            have.join(", ")
        )));
    }
    Ok(names)
}

fn merge_lora(projs: Vec<&mut Proj>) {
    for p in projs {
        if let Some(lora) = p.lora.take() {
            let merged = (p.weight_f32() + lora.delta()).detach();
            let bf16 = p.bf16.take().is_some();
            // Same id, and frozen where the weight was (a fresh `Param` would train).
            p.base.weight =
                p.base.weight.clone().map(|w| if w.is_require_grad() { merged.require_grad() } else { merged });
            if bf16 {
                p.use_bf16();
            }
        }
    }
}

fn set_precision(projs: Vec<&mut Proj>, precision: Precision) -> usize {
    projs
        .into_iter()
        .map(|p| match precision {
            Precision::F32 => {
                p.use_f32();
                0
            }
            Precision::Bf16 => usize::from(p.use_bf16()),
        })
        .sum()
}

fn lora_state(projs: Vec<&Proj>, prefix: &str) -> Vec<NamedTensor> {
    let mut out = Vec::new();
    for p in projs {
        if let Some(l) = &p.lora {
            let (d_in, r, d_out) = (p.d_in(), l.rank(), p.d_out());
            let base = format!("base_model.model.{prefix}{}", p.name);
            out.push((format!("{base}.lora_A.weight"), vec![r, d_in], transpose(&values(l.a.val()), d_in, r)));
            out.push((format!("{base}.lora_B.weight"), vec![d_out, r], transpose(&values(l.b.val()), r, d_out)));
        }
    }
    out
}

fn load_lora_state(
    projs: Vec<&mut Proj>,
    prefix: &str,
    tensors: &HashMap<String, (Vec<usize>, Vec<f32>)>,
    device: &Device,
) -> Result<()> {
    for p in projs {
        let (d_in, d_out, name) = (p.d_in(), p.d_out(), p.name.clone());
        let Some(l) = p.lora.as_mut() else { continue };
        let r = l.rank();
        let base = format!("base_model.model.{prefix}{name}");
        let get = |suffix: &str, shape: Vec<usize>| -> Result<Vec<f32>> {
            let key = format!("{base}.{suffix}");
            let (s, v) = tensors.get(&key).ok_or_else(|| Error::Input(format!("adapter tensor {key} missing")))?;
            if *s != shape {
                return Err(Error::Input(format!("adapter tensor {key} has shape {s:?}, expected {shape:?}")));
            }
            Ok(v.clone())
        };
        let a = transpose(&get("lora_A.weight", vec![r, d_in])?, r, d_in);
        let b = transpose(&get("lora_B.weight", vec![d_out, r])?, d_out, r);
        l.a = Param::from_data(TensorData::new(a, [d_in, r]), device);
        l.b = Param::from_data(TensorData::new(b, [r, d_out]), device);
    }
    Ok(())
}
