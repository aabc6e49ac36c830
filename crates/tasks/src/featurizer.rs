use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::softmax;

/// s3prl's featurizer: softmax-normalised learnable weights over hidden states (initialised
/// equal), optionally leaving out the CNN output (hidden state 0) and layer-normalising each
/// hidden state first (without parameters).
#[derive(Module, Debug)]
pub struct Featurizer {
    /// One logit per hidden state used.
    pub weights: Param<Tensor<1>>,
    /// Index of the first hidden state used (1 when the CNN output is excluded).
    pub first: usize,
    pub layer_norm: bool,
}

impl Featurizer {
    pub fn new(num_hidden_states: usize, exclude_cnn: bool, layer_norm: bool, device: &Device) -> Self {
        let first = usize::from(exclude_cnn);
        Self { weights: Param::from_tensor(Tensor::zeros([num_hidden_states - first], device)), first, layer_norm }
    }

    /// `[batch, frames, dim]` from every hidden state.
    pub fn forward(&self, hidden: &[Tensor<3>]) -> Tensor<3> {
        let used = &hidden[self.first..];
        let n = used.len();
        let w = softmax(self.weights.val(), 0);
        let stacked: Tensor<4> = Tensor::stack(used.to_vec(), 0);
        let stacked = if self.layer_norm {
            let (var, mean) = stacked.clone().var_mean_bias(3);
            (stacked - mean) / (var + 1e-5).sqrt()
        } else {
            stacked
        };
        (stacked * w.reshape([n, 1, 1, 1])).sum_dim(0).squeeze_dim(0)
    }

    /// The normalised weights, one per hidden state used (what `analyze layers` plots).
    pub fn layer_weights(&self) -> Vec<f32> {
        softmax(self.weights.val(), 0).into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default()
    }
}
