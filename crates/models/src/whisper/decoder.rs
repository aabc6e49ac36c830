//! Whisper's decoder (`WhisperDecoder` of transformers' modeling_whisper.py): token embeddings
//! tied to the output projection, learned positions, pre-LN layers of causal self-attention,
//! cross-attention on the encoder output and a feed-forward block, a final layer norm. Keys and
//! values are cached so that each new token costs one position, not the whole prefix.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::{Int, TensorData};

use crate::config::WhisperConfig;
use crate::layers::{Activation, LayerNorm, load_proj, softmax_last};
use crate::weights::Weights;
use crate::{Error, Result};
use speechtune_peft::{Bottleneck, Proj, adapt};

/// `WhisperForConditionalGeneration` keeps the decoder under `model.decoder.`, `WhisperModel`
/// under `decoder.`.
pub const PREFIXES: [&str; 2] = ["model.decoder.", "decoder."];

/// Multi-head attention of the decoder (self or cross): q scaled by head_dim^-½ as transformers
/// does, `k_proj` without bias.
#[derive(Module, Debug)]
pub struct DecoderAttention {
    pub q_proj: Proj,
    pub k_proj: Proj,
    pub v_proj: Proj,
    pub out_proj: Proj,
    pub heads: usize,
}

impl DecoderAttention {
    fn load(w: &Weights, path: &str, d: usize, heads: usize, device: &Device) -> Result<Self> {
        Ok(Self {
            q_proj: load_proj(w, &format!("{path}.q_proj"), d, d, true, device)?,
            k_proj: load_proj(w, &format!("{path}.k_proj"), d, d, false, device)?,
            v_proj: load_proj(w, &format!("{path}.v_proj"), d, d, true, device)?,
            out_proj: load_proj(w, &format!("{path}.out_proj"), d, d, true, device)?,
            heads,
        })
    }

    fn split(&self, y: Tensor<3>) -> Tensor<4> {
        let [b, t, d] = y.dims();
        y.reshape([b, t, self.heads, d / self.heads]).swap_dims(1, 2)
    }

    /// Keys and values of `x`, `[batch, heads, time, head_dim]` each.
    fn keys_values(&self, x: Tensor<3>) -> (Tensor<4>, Tensor<4>) {
        (self.split(self.k_proj.forward(x.clone())), self.split(self.v_proj.forward(x)))
    }

    /// Attend from `x` to `k`/`v`; `mask` (added to the scores, `[t_q, t_k]`) for causality.
    fn attend(&self, x: Tensor<3>, k: Tensor<4>, v: Tensor<4>, mask: Option<Tensor<2>>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let hd = d / self.heads;
        let q = self.split(self.q_proj.forward(x)) * (hd as f64).powf(-0.5);
        let mut scores = q.matmul(k.swap_dims(2, 3));
        if let Some(m) = mask {
            scores = scores + m.unsqueeze::<4>();
        }
        let p = softmax_last(scores);
        self.out_proj.forward(p.matmul(v).swap_dims(1, 2).reshape([b, t, d]))
    }
}

/// `WhisperDecoderLayer`: pre-LN self-attention, cross-attention, feed-forward.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub self_attn_layer_norm: LayerNorm,
    pub self_attn: DecoderAttention,
    pub encoder_attn_layer_norm: LayerNorm,
    pub encoder_attn: DecoderAttention,
    pub final_layer_norm: LayerNorm,
    pub fc1: Proj,
    pub fc2: Proj,
    /// Bottleneck adapters on the self-attention and feed-forward outputs (PEFT; None when
    /// loaded), placed as in the encoder's layers.
    pub adapter_attn: Option<Bottleneck>,
    pub adapter_ffn: Option<Bottleneck>,
}

/// Keys and values computed so far: per layer, the self-attention's over every decoded
/// position and the cross-attention's over the encoder output (computed once).
#[derive(Debug, Clone)]
pub struct DecoderCache {
    pub self_kv: Vec<(Tensor<4>, Tensor<4>)>,
    pub cross_kv: Vec<(Tensor<4>, Tensor<4>)>,
    /// Positions already decoded.
    pub len: usize,
}

impl DecoderCache {
    /// Keep the rows `rows` of the batch, in that order (beam search reorders hypotheses).
    pub fn select(&self, rows: &[usize]) -> Self {
        let pick = |kv: &Vec<(Tensor<4>, Tensor<4>)>| {
            kv.iter().map(|(k, v)| (select_rows(k.clone(), rows), select_rows(v.clone(), rows))).collect()
        };
        Self { self_kv: pick(&self.self_kv), cross_kv: pick(&self.cross_kv), len: self.len }
    }
}

/// The decoder with its (tied) output projection.
#[derive(Module, Debug)]
pub struct WhisperDecoder {
    /// `[vocab, d_model]`; also the output projection (`proj_out` is tied to it).
    pub embed_tokens: Param<Tensor<2>>,
    /// `[max_target_positions, d_model]`, learned.
    pub embed_positions: Param<Tensor<2>>,
    pub layers: Vec<DecoderLayer>,
    pub layer_norm: LayerNorm,
    pub embed_scale: f64,
    #[module(skip)]
    pub activation: Activation,
    /// The output projection (`embed_tokens`ᵀ) in bf16 ([`WhisperDecoder::set_precision`]).
    #[module(skip)]
    pub bf16_logits: Option<std::sync::Arc<speechtune_kernels::Bf16Weight>>,
}

impl WhisperDecoder {
    /// Load from weights whose prefix is the decoder's (see [`PREFIXES`]).
    pub fn load(cfg: &WhisperConfig, w: &Weights, device: &Device) -> Result<Self> {
        let (d, f, h) = (cfg.d_model, cfg.decoder_ffn_dim, cfg.decoder_attention_heads);
        if d % h != 0 {
            return Err(Error::Input(format!("d_model {d} is not divisible by decoder_attention_heads {h}")));
        }
        let mut layers = Vec::new();
        for i in 0..cfg.decoder_layers {
            let p = format!("layers.{i}");
            layers.push(DecoderLayer {
                self_attn_layer_norm: LayerNorm::load(w, &format!("{p}.self_attn_layer_norm"), d, 1e-5, device)?,
                self_attn: DecoderAttention::load(w, &format!("{p}.self_attn"), d, h, device)?,
                encoder_attn_layer_norm: LayerNorm::load(w, &format!("{p}.encoder_attn_layer_norm"), d, 1e-5, device)?,
                encoder_attn: DecoderAttention::load(w, &format!("{p}.encoder_attn"), d, h, device)?,
                final_layer_norm: LayerNorm::load(w, &format!("{p}.final_layer_norm"), d, 1e-5, device)?,
                fc1: load_proj(w, &format!("{p}.fc1"), d, f, true, device)?,
                fc2: load_proj(w, &format!("{p}.fc2"), f, d, true, device)?,
                adapter_attn: None,
                adapter_ffn: None,
            });
        }
        Ok(Self {
            embed_tokens: Param::from_tensor(w.tensor("embed_tokens.weight", [cfg.vocab_size, d], device)?),
            embed_positions: Param::from_tensor(w.tensor(
                "embed_positions.weight",
                [cfg.max_target_positions, d],
                device,
            )?),
            layers,
            layer_norm: LayerNorm::load(w, "layer_norm", d, 1e-5, device)?,
            embed_scale: if cfg.scale_embedding { (d as f64).sqrt() } else { 1.0 },
            activation: Activation::parse(&cfg.activation_function)?,
            bf16_logits: None,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.embed_tokens.dims()[0]
    }

    pub fn max_positions(&self) -> usize {
        self.embed_positions.dims()[0]
    }

    /// Logits `[batch, new, vocab]` for `tokens` (`[batch, new]`) following the positions in
    /// `cache` (none: from position 0, and the cross-attention keys are computed from
    /// `encoder_out`, `[batch, frames, d_model]`). The cache is extended with the new positions.
    pub fn forward(
        &self,
        tokens: Tensor<2, Int>,
        encoder_out: &Tensor<3>,
        cache: &mut Option<DecoderCache>,
    ) -> Result<Tensor<3>> {
        let [b, t] = tokens.dims();
        let device = tokens.device();
        let past = cache.as_ref().map_or(0, |c| c.len);
        if past + t > self.max_positions() {
            return Err(Error::Input(format!(
                "the decoder holds {} positions (max_target_positions); asked for {}",
                self.max_positions(),
                past + t
            )));
        }
        let d = self.embed_tokens.dims()[1];
        let embedded = self.embed_tokens.val().select(0, tokens.reshape([b * t])).reshape([b, t, d]);
        let positions = self.embed_positions.val().narrow(0, past, t).unsqueeze_dim::<3>(0);
        let mut x = embedded * self.embed_scale + positions;
        // Position past + i sees keys 0 ..= past + i.
        let mask = (t > 1).then(|| {
            let keys = past + t;
            let v: Vec<f32> = (0..t)
                .flat_map(|i| (0..keys).map(move |j| if j <= past + i { 0.0 } else { f32::NEG_INFINITY }))
                .collect();
            Tensor::<2>::from_data(TensorData::new(v, [t, keys]), &device)
        });
        let fresh = cache.is_none();
        let c = cache.get_or_insert_with(|| DecoderCache { self_kv: Vec::new(), cross_kv: Vec::new(), len: 0 });
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.self_attn_layer_norm.forward(x.clone());
            let (k, v) = layer.self_attn.keys_values(h.clone());
            let (k, v) = match c.self_kv.get(i) {
                Some((pk, pv)) if !fresh => (Tensor::cat(vec![pk.clone(), k], 2), Tensor::cat(vec![pv.clone(), v], 2)),
                _ => (k, v),
            };
            if fresh {
                c.self_kv.push((k.clone(), v.clone()));
                c.cross_kv.push(layer.encoder_attn.keys_values(encoder_out.clone()));
            } else {
                c.self_kv[i] = (k.clone(), v.clone());
            }
            x = x + adapt(&layer.adapter_attn, layer.self_attn.attend(h, k, v, mask.clone()));
            let h = layer.encoder_attn_layer_norm.forward(x.clone());
            let (ck, cv) = c.cross_kv[i].clone();
            x = x + layer.encoder_attn.attend(h, ck, cv, None);
            let h = layer.final_layer_norm.forward(x.clone());
            x = x.clone() + adapt(&layer.adapter_ffn, layer.fc2.forward(self.activation.forward(layer.fc1.forward(h))));
        }
        c.len = past + t;
        let x = self.layer_norm.forward(x);
        match &self.bf16_logits {
            Some(w) if speechtune_kernels::supports(&x) => Ok(speechtune_kernels::linear(x, w)),
            _ => Ok(x.matmul(self.embed_tokens.val().transpose().unsqueeze::<3>())),
        }
    }

    /// The output projection's product in `precision` where `embed_tokens` is frozen and on the
    /// CPU (its vocabulary × width weight is read once per generated token: half the bytes in
    /// bf16). Returns whether it runs in bf16.
    pub fn set_precision(&mut self, precision: crate::Precision) -> bool {
        let e = self.embed_tokens.val();
        let applies =
            precision == crate::Precision::Bf16 && !e.is_require_grad() && e.device().inner() == Device::flex();
        self.bf16_logits = applies.then(|| {
            let [vocab, d] = e.dims();
            let values = e.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
            std::sync::Arc::new(speechtune_kernels::Bf16Weight::from_transposed(&values, d, vocab))
        });
        self.bf16_logits.is_some()
    }
}

/// The rows `rows` of the first (batch) dimension of `x`, in that order.
pub fn select_rows<const D: usize>(x: Tensor<D>, rows: &[usize]) -> Tensor<D> {
    let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [rows.len()]), &x.device());
    x.select(0, idx)
}
