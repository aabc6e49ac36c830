//! Prefix tuning, P-tuning v2 style (Li & Liang, 2021; Liu et al., 2022): every attention layer
//! gets `num_virtual_tokens` learned key and value vectors that its queries attend to besides
//! the real frames. Optionally reparameterised (peft's `prefix_projection`): a learned
//! embedding passed through a two-layer tanh MLP produces the keys and values, which steadies
//! training; the MLP is needed only while training. Field names follow peft's PrefixTuningConfig;
//! here each layer has its own embedding and MLP.

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::tanh;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefixConfig {
    /// Prefix length L.
    pub num_virtual_tokens: usize,
    /// Reparameterise through an MLP.
    pub prefix_projection: bool,
    /// Hidden width of that MLP.
    pub encoder_hidden_size: usize,
}

impl Default for PrefixConfig {
    fn default() -> Self {
        Self { num_virtual_tokens: 16, prefix_projection: false, encoder_hidden_size: 256 }
    }
}

#[derive(Module, Debug)]
pub struct PrefixMlp {
    pub dense: Linear,
    pub out: Linear,
}

#[derive(Module, Debug)]
pub struct Prefix {
    /// `[L, 2·dim]` keys then values; `[L, dim]` when reparameterised.
    pub embedding: Param<Tensor<2>>,
    pub mlp: Option<PrefixMlp>,
}

impl Prefix {
    pub fn new(dim: usize, cfg: &PrefixConfig, device: &Device) -> Self {
        let l = cfg.num_virtual_tokens.max(1);
        let width = if cfg.prefix_projection { dim } else { 2 * dim };
        let embedding = Param::from_tensor(Tensor::random([l, width], Distribution::Normal(0.0, 0.02), device));
        let mlp = cfg.prefix_projection.then(|| PrefixMlp {
            dense: LinearConfig::new(dim, cfg.encoder_hidden_size).init(device),
            out: LinearConfig::new(cfg.encoder_hidden_size, 2 * dim).init(device),
        });
        Self { embedding, mlp }
    }

    pub fn len(&self) -> usize {
        self.embedding.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys and values, `[L, dim]` each.
    pub fn key_value(&self) -> (Tensor<2>, Tensor<2>) {
        let e = self.embedding.val();
        let kv = match &self.mlp {
            Some(m) => m.out.forward(tanh(m.dense.forward(e))),
            None => e,
        };
        let d = kv.dims()[1] / 2;
        (kv.clone().narrow(1, 0, d), kv.narrow(1, d, d))
    }

    /// Prepend the prefix to per-head keys and values `[batch, heads, time, head_dim]`.
    pub fn extend(&self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let [b, h, _, hd] = k.dims();
        let l = self.len();
        let heads = |p: Tensor<2>| p.reshape([l, h, hd]).swap_dims(0, 1).unsqueeze_dim::<4>(0).expand([b, h, l, hd]);
        let (pk, pv) = self.key_value();
        (Tensor::cat(vec![heads(pk), k], 2), Tensor::cat(vec![heads(pv), v], 2))
    }

    /// Widen an additive bias or mask over keys `[.., .., .., time]` with zeros for the prefix.
    pub fn widen(&self, m: Tensor<4>) -> Tensor<4> {
        let [a, b, c, _] = m.dims();
        let zeros = Tensor::zeros([a, b, c, self.len()], &m.device());
        Tensor::cat(vec![zeros, m], 3)
    }
}
