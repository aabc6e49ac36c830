//! Self-attention of the SSL encoders, including WavLM's gated relative position bias.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use burn::tensor::{Int, TensorData};

use crate::Result;
use speechtune_peft::{Prefix, Proj};

use crate::layers::{load_linear, load_proj, softmax_last};
use crate::weights::Weights;

// WavLMAttention's relative position machinery (transformers/models/wavlm/modeling_wavlm.py).
#[derive(Module, Debug)]
pub struct RelativePositionGate {
    /// `[1, heads, 1, 1]`
    pub gru_rel_pos_const: Param<Tensor<4>>,
    /// head_dim → 8
    pub gru_rel_pos_linear: Linear,
    /// `[num_buckets, heads]`, first layer only.
    pub rel_attn_embed: Option<Param<Tensor<2>>>,
    pub num_buckets: usize,
    pub max_distance: usize,
}

impl RelativePositionGate {
    /// Bucket of each (query, key) pair, as `_relative_positions_bucket` computes it in float32.
    pub fn buckets(&self, time: usize) -> Vec<i64> {
        let half = (self.num_buckets / 2) as i64;
        let max_exact = half / 2;
        let log_ratio = (self.max_distance as f64 / max_exact as f64).ln() as f32;
        let mut out = Vec::with_capacity(time * time);
        for q in 0..time as i64 {
            for k in 0..time as i64 {
                let rel = k - q;
                let mut bucket = if rel > 0 { half } else { 0 };
                let dist = rel.abs();
                bucket += if dist < max_exact {
                    dist
                } else {
                    let large = (dist as f32 / max_exact as f32).ln() / log_ratio * (half - max_exact) as f32;
                    ((max_exact as f32 + large) as i64).min(half - 1)
                };
                out.push(bucket);
            }
        }
        out
    }

    /// `[1, heads, time, time]` position bias from the embedding table.
    pub fn position_bias(&self, time: usize, device: &Device) -> Option<Tensor<4>> {
        let table = self.rel_attn_embed.as_ref()?.val();
        let heads = table.dims()[1];
        let idx = Tensor::<1, Int>::from_data(TensorData::new(self.buckets(time), [time * time]), device);
        let v = table.select(0, idx).reshape([time, time, heads]).permute([2, 0, 1]);
        Some(v.unsqueeze_dim(0))
    }

    /// Gate `[batch, heads, time, 1]` computed from the layer input.
    fn gate(&self, x: Tensor<3>, heads: usize) -> Tensor<4> {
        let [b, t, d] = x.dims();
        let per_head = x.reshape([b, t, heads, d / heads]).swap_dims(1, 2);
        let proj = self.gru_rel_pos_linear.forward(per_head).reshape([b, heads, t, 2, 4]).sum_dim(4);
        let g = sigmoid(proj.reshape([b, heads, t, 2]));
        let gate_a = g.clone().narrow(3, 0, 1);
        let gate_b = g.narrow(3, 1, 1);
        gate_a * (gate_b * self.gru_rel_pos_const.val() - 1.0) + 2.0
    }
}

// Wav2Vec2Attention / WavLMAttention (transformers/models/wav2vec2/modeling_wav2vec2.py).
#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Proj,
    pub k_proj: Proj,
    pub v_proj: Proj,
    pub out_proj: Proj,
    pub rel: Option<RelativePositionGate>,
    /// Learned key/value prefix (PEFT prefix tuning; None when loaded).
    pub prefix: Option<Prefix>,
    pub heads: usize,
    /// The fused attention's products in bf16, forward and backward (mixed precision, as
    /// autocast; [`crate::UpstreamModel::set_precision`]).
    pub bf16_attention: bool,
}

impl Attention {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        w: &Weights,
        path: &str,
        dim: usize,
        heads: usize,
        k_bias: bool,
        wavlm: Option<(usize, usize, bool)>,
        device: &Device,
    ) -> Result<Self> {
        let rel = match wavlm {
            None => None,
            Some((num_buckets, max_distance, first)) => Some(RelativePositionGate {
                gru_rel_pos_const: Param::from_tensor(w.tensor(
                    &format!("{path}.gru_rel_pos_const"),
                    [1, heads, 1, 1],
                    device,
                )?),
                gru_rel_pos_linear: load_linear(
                    w,
                    &format!("{path}.gru_rel_pos_linear"),
                    dim / heads,
                    8,
                    true,
                    device,
                )?,
                rel_attn_embed: if first {
                    Some(Param::from_tensor(w.tensor(
                        &format!("{path}.rel_attn_embed.weight"),
                        [num_buckets, heads],
                        device,
                    )?))
                } else {
                    None
                },
                num_buckets,
                max_distance,
            }),
        };
        Ok(Self {
            q_proj: load_proj(w, &format!("{path}.q_proj"), dim, dim, true, device)?,
            k_proj: load_proj(w, &format!("{path}.k_proj"), dim, dim, k_bias, device)?,
            v_proj: load_proj(w, &format!("{path}.v_proj"), dim, dim, true, device)?,
            out_proj: load_proj(w, &format!("{path}.out_proj"), dim, dim, true, device)?,
            rel,
            prefix: None,
            heads,
            bf16_attention: false,
        })
    }

    /// `x`: `[batch, time, dim]`; `mask`: additive `[batch, 1, 1, time]`; `position_bias`:
    /// WavLM's `[1, heads, time, time]`, computed by the first layer and shared by the others.
    pub fn forward(&self, x: Tensor<3>, mask: Option<Tensor<4>>, position_bias: &mut Option<Tensor<4>>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let h = self.heads;
        let hd = d / h;
        if self.rel.is_none() && self.prefix.is_none() && speechtune_kernels::supports(&x) {
            // On the CPU: one fused operation (speechtune_kernels::attention), same values.
            let mask = mask.map(crate::layers::copy_values);
            let (q, k, v) = (self.q_proj.forward(x.clone()), self.k_proj.forward(x.clone()), self.v_proj.forward(x));
            return self.out_proj.forward(speechtune_kernels::attention(q, k, v, h, mask, self.bf16_attention));
        }
        let split = |y: Tensor<3>| y.reshape([b, t, h, hd]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone())) * (hd as f64).powf(-0.5);
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x.clone()));
        let (k, v) = match &self.prefix {
            Some(p) => p.extend(k, v),
            None => (k, v),
        };
        // Prefix keys carry no position bias and are never masked.
        let widen = |m: Tensor<4>| match &self.prefix {
            Some(p) => p.widen(m),
            None => m,
        };
        let mut scores = q.matmul(k.swap_dims(2, 3));
        if let Some(rel) = &self.rel {
            if position_bias.is_none() {
                *position_bias = rel.position_bias(t, &x.device());
            }
            if let Some(bias) = position_bias.as_ref() {
                scores = scores + widen(rel.gate(x, h) * bias.clone());
            }
        }
        if let Some(m) = mask {
            scores = scores + widen(m);
        }
        let ctx = softmax_last(scores).matmul(v).swap_dims(1, 2).reshape([b, t, d]);
        self.out_proj.forward(ctx)
    }
}
