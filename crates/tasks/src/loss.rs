use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::module;
use burn::tensor::{Int, TensorData};

/// CTC loss per utterance, divided by its target length (PyTorch's `reduction="mean"` before
/// the batch mean): `[batch]`. `logits`: `[batch, frames, vocab]`.
pub fn ctc_loss(logits: Tensor<3>, frame_lengths: &[usize], targets: &[Vec<u32>], blank: u32) -> Tensor<1> {
    let device = logits.device();
    let b = targets.len();
    let s = targets.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
    let mut padded = vec![blank as i64; b * s];
    for (i, t) in targets.iter().enumerate() {
        for (j, &c) in t.iter().enumerate() {
            padded[i * s + j] = c as i64;
        }
    }
    let ints = |v: Vec<i64>, n: usize| Tensor::<1, Int>::from_data(TensorData::new(v, [n]), &device);
    let log_probs = log_softmax(logits, 2).swap_dims(0, 1);
    let target_lengths: Vec<i64> = targets.iter().map(|t| t.len() as i64).collect();
    let loss = module::ctc_loss(
        log_probs,
        Tensor::<2, Int>::from_data(TensorData::new(padded, [b, s]), &device),
        ints(frame_lengths.iter().map(|&l| l as i64).collect(), b),
        ints(target_lengths.clone(), b),
        blank as usize,
    );
    let lengths: Vec<f32> = target_lengths.iter().map(|&l| l.max(1) as f32).collect();
    loss / Tensor::<1>::from_data(TensorData::new(lengths, [b]), &device)
}

/// Token-level cross-entropy of a sequence model, PyTorch's `CrossEntropyLoss` with
/// `ignore_index=-100` as transformers' seq2seq models apply it: the mean over every target
/// token of the batch. `logits`: `[batch, tokens, vocab]`; `labels[i]` holds item `i`'s target
/// ids, shorter rows padded (ignored). Returns `[1]`.
pub fn token_cross_entropy(logits: Tensor<3>, labels: &[Vec<u32>]) -> Tensor<1> {
    let [b, t, _] = logits.dims();
    let device = logits.device();
    let mut ids = vec![0i64; b * t];
    let mut keep = vec![0f32; b * t];
    for (i, row) in labels.iter().enumerate() {
        for (j, &id) in row.iter().take(t).enumerate() {
            ids[i * t + j] = id as i64;
            keep[i * t + j] = 1.0;
        }
    }
    let count = keep.iter().sum::<f32>().max(1.0);
    let ids = Tensor::<3, Int>::from_data(TensorData::new(ids, [b, t, 1]), &device);
    let keep = Tensor::<3>::from_data(TensorData::new(keep, [b, t, 1]), &device);
    let picked = log_softmax(logits, 2).gather(2, ids);
    (picked * keep).sum().neg() / count
}
