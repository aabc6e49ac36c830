//! Silero VAD v6 (MIT, weights vendored from the `silero-vad` 6.2.3 wheel's
//! `silero_vad_16k.safetensors`), run natively: no ONNX runtime, no deep-learning framework.
//!
//! The network, per 32-ms chunk of 512 samples at 16 kHz with the 64 samples before it as
//! context: a learned STFT (conv, 256 taps, hop 128, after reflect-padding 64 samples on the
//! right) → magnitude of 129 bins → four conv layers (k = 3; strides 1, 2, 2, 1) with ReLU → an
//! LSTM cell carried across chunks → ReLU → 1×1 conv → sigmoid: the probability of speech in the
//! chunk (as `silero_vad/tinygrad_model.py` describes it).

use std::collections::HashMap;

use crate::{Error, Result};

/// Samples per VAD decision (32 ms at 16 kHz).
pub const CHUNK: usize = 512;
const CONTEXT: usize = 64;
const N_FFT: usize = 256;
const HOP: usize = 128;
const BINS: usize = N_FFT / 2 + 1;
const HIDDEN: usize = 128;
/// Chunks encoded together (8 s): the matrices stay small for any file length.
const BLOCK: usize = 256;

static WEIGHTS: &[u8] = include_bytes!("../assets/silero_vad/silero_vad_16k.safetensors");

struct Conv {
    /// `[out][in][k]`
    w: Vec<f32>,
    b: Vec<f32>,
    c_in: usize,
    c_out: usize,
    stride: usize,
}

impl Conv {
    /// `x`: `[n][t][c_in]` (n chunks, each convolved on its own) → `[n][t_out][c_out]`, kernel 3,
    /// padding 1, then ReLU: the patches of all chunks as one matrix, times the weights.
    fn forward_relu(&self, x: &[f32], n: usize, t: usize) -> (Vec<f32>, usize) {
        let t_out = (t + 2 - 3) / self.stride + 1;
        let width = self.c_in * 3;
        let mut patches = vec![0.0f32; n * t_out * width];
        for (chunk, rows) in patches.chunks_exact_mut(t_out * width).enumerate() {
            let x = &x[chunk * t * self.c_in..(chunk + 1) * t * self.c_in];
            for (j, row) in rows.chunks_exact_mut(width).enumerate() {
                for k in 0..3 {
                    let pos = (j * self.stride + k) as isize - 1;
                    if pos >= 0 && (pos as usize) < t {
                        let frame = &x[pos as usize * self.c_in..(pos as usize + 1) * self.c_in];
                        for (i, &v) in frame.iter().enumerate() {
                            row[i * 3 + k] = v;
                        }
                    }
                }
            }
        }
        let mut y = matmul_t(&patches, n * t_out, width, &self.w, self.c_out);
        for row in y.chunks_exact_mut(self.c_out) {
            for (v, b) in row.iter_mut().zip(&self.b) {
                *v = (*v + b).max(0.0);
            }
        }
        (y, t_out)
    }
}

/// `a` `[m][k]` times the transpose of `w` `[n][k]` (a weight matrix as PyTorch stores it):
/// `[m][n]`, on this thread (corpus preparation runs one file per thread).
fn matmul_t(a: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    assert!(a.len() == m * k && w.len() == n * k, "matmul_t: [{m}×{k}] × [{n}×{k}]ᵀ");
    let mut out = vec![0.0f32; m * n];
    // SAFETY: the three matrices lie inside their slices with these strides (checked above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    out
}

/// Dot product with eight independent accumulators, so that the compiler can vectorise it.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The Silero VAD network and its streaming state.
pub struct SileroVad {
    stft: Vec<f32>,
    convs: [Conv; 4],
    w_ih: Vec<f32>,
    w_hh: Vec<f32>,
    b: Vec<f32>,
    final_w: Vec<f32>,
    final_b: f32,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Tensors by name: shape and f32 values.
type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

fn read_tensors(bytes: &[u8]) -> std::result::Result<Tensors, String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(format!("{name}: expected f32, found {:?}", view.dtype()));
        }
        let v = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        out.insert(name, (view.shape().to_vec(), v));
    }
    Ok(out)
}

impl SileroVad {
    /// The vendored model.
    pub fn new() -> Self {
        Self::from_bytes(WEIGHTS).expect("the vendored Silero VAD weights are valid")
    }

    /// Weights in `silero_vad_16k.safetensors` layout.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        let mut t = read_tensors(bytes)?;
        let mut take = |name: &str, shape: &[usize]| -> std::result::Result<Vec<f32>, String> {
            let (s, v) = t.remove(name).ok_or_else(|| format!("tensor {name} missing"))?;
            if s != shape {
                return Err(format!("tensor {name} has shape {s:?}, expected {shape:?}"));
            }
            Ok(v)
        };
        let mut conv = |i: usize, c_in: usize, c_out: usize, stride: usize| -> std::result::Result<Conv, String> {
            Ok(Conv {
                w: take(&format!("conv{i}.weight"), &[c_out, c_in, 3])?,
                b: take(&format!("conv{i}.bias"), &[c_out])?,
                c_in,
                c_out,
                stride,
            })
        };
        let convs = [conv(1, BINS, 128, 1)?, conv(2, 128, 64, 2)?, conv(3, 64, 64, 2)?, conv(4, 64, HIDDEN, 1)?];
        let stft = take("stft_conv.weight", &[2 * BINS, 1, N_FFT])?;
        let b_ih = take("lstm_cell.bias_ih", &[4 * HIDDEN])?;
        let b_hh = take("lstm_cell.bias_hh", &[4 * HIDDEN])?;
        Ok(Self {
            stft,
            convs,
            w_ih: take("lstm_cell.weight_ih", &[4 * HIDDEN, HIDDEN])?,
            w_hh: take("lstm_cell.weight_hh", &[4 * HIDDEN, HIDDEN])?,
            b: b_ih.iter().zip(&b_hh).map(|(a, b)| a + b).collect(),
            final_w: take("final_conv.weight", &[1, HIDDEN, 1])?,
            final_b: take("final_conv.bias", &[1])?[0],
        })
    }

    /// The LSTM's input for `n` consecutive chunks: `padded` holds the 64 context samples then
    /// the chunks' 512 samples each. Chunks do not depend on each other before the LSTM, so
    /// each layer runs on all of them as one matrix product.
    fn encode(&self, padded: &[f32], n: usize) -> Vec<f32> {
        debug_assert!(padded.len() >= CONTEXT + n * CHUNK);
        let input = CONTEXT + CHUNK;
        // Per chunk: its 576 samples, reflect-padded by 64 on the right (torch's
        // F.pad(mode="reflect")), cut into 4 frames of 256 at hop 128.
        let per_chunk = (input + CONTEXT - N_FFT) / HOP + 1;
        let mut frames = vec![0.0f32; n * per_chunk * N_FFT];
        let mut x = vec![0.0f32; input + CONTEXT];
        for (chunk, rows) in frames.chunks_exact_mut(per_chunk * N_FFT).enumerate() {
            let src = &padded[chunk * CHUNK..chunk * CHUNK + input];
            x[..input].copy_from_slice(src);
            for i in 0..CONTEXT {
                x[input + i] = src[input - 2 - i];
            }
            for (t, row) in rows.chunks_exact_mut(N_FFT).enumerate() {
                row.copy_from_slice(&x[t * HOP..t * HOP + N_FFT]);
            }
        }
        // The learned STFT: real parts in rows 0..129 of the filters, imaginary parts after.
        let spec = matmul_t(&frames, n * per_chunk, N_FFT, &self.stft, 2 * BINS);
        let mag: Vec<f32> = spec
            .chunks_exact(2 * BINS)
            .flat_map(|row| (0..BINS).map(move |f| (row[f] * row[f] + row[BINS + f] * row[BINS + f]).sqrt()))
            .collect();
        let (mut y, mut t) = (mag, per_chunk);
        for conv in &self.convs {
            (y, t) = conv.forward_relu(&y, n, t);
        }
        debug_assert_eq!(t, 1, "four convolutions bring 4 frames to 1");
        y
    }

    /// Speech probability of every 512-sample chunk of a 16-kHz waveform (the last chunk
    /// zero-padded), streaming from a zero state as Silero's `get_speech_timestamps` does.
    pub fn probabilities(&self, wave: &[f32]) -> Vec<f32> {
        self.probabilities_in_blocks(wave, BLOCK)
    }

    /// [`SileroVad::probabilities`], encoding `block` chunks at a time.
    fn probabilities_in_blocks(&self, wave: &[f32], block: usize) -> Vec<f32> {
        let chunks = wave.len().div_ceil(CHUNK);
        let mut padded = vec![0.0f32; CONTEXT + chunks * CHUNK];
        padded[CONTEXT..CONTEXT + wave.len()].copy_from_slice(wave);
        let (mut h, mut c) = (vec![0.0f32; HIDDEN], vec![0.0f32; HIDDEN]);
        let mut out = Vec::with_capacity(chunks);
        for first in (0..chunks).step_by(block) {
            let n = block.min(chunks - first);
            let features = self.encode(&padded[first * CHUNK..], n);
            // The LSTM's input projection for the whole block; only the recurrence is sequential.
            let projected = matmul_t(&features, n, HIDDEN, &self.w_ih, 4 * HIDDEN);
            for pre in projected.chunks_exact(4 * HIDDEN) {
                out.push(self.lstm_step(pre, &mut h, &mut c));
            }
        }
        out
    }

    /// The LSTM cell on one chunk (PyTorch's gate order: input, forget, cell, output), given
    /// its input already projected, then ReLU → 1×1 conv → sigmoid.
    fn lstm_step(&self, pre: &[f32], h: &mut [f32], c: &mut [f32]) -> f32 {
        let gates: Vec<f32> =
            (0..4 * HIDDEN).map(|g| pre[g] + self.b[g] + dot(&self.w_hh[g * HIDDEN..(g + 1) * HIDDEN], h)).collect();
        for j in 0..HIDDEN {
            let (i, f, g, o) = (gates[j], gates[HIDDEN + j], gates[2 * HIDDEN + j], gates[3 * HIDDEN + j]);
            c[j] = sigmoid(f) * c[j] + sigmoid(i) * g.tanh();
            h[j] = sigmoid(o) * c[j].tanh();
        }
        let logit: f32 = self.final_w.iter().zip(h.iter()).map(|(w, h)| w * h.max(0.0)).sum::<f32>() + self.final_b;
        sigmoid(logit)
    }
}

impl Default for SileroVad {
    fn default() -> Self {
        Self::new()
    }
}

/// Silero VAD weights from a file in `silero_vad_16k.safetensors` layout.
pub fn load(path: &std::path::Path) -> Result<SileroVad> {
    let bytes = std::fs::read(path).map_err(|source| Error::Open { path: path.to_path_buf(), source })?;
    SileroVad::from_bytes(&bytes).map_err(|reason| Error::Unreadable { path: path.to_path_buf(), reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encoding chunks together changes nothing: one chunk at a time (the network as Silero
    /// runs it, checked against torch in tests/vad.rs on one block), a block size that does
    /// not divide the file, and the default agree on 20 s of tones and noise (79 blocks of 8).
    #[test]
    fn blocks_of_chunks_give_the_probabilities_of_one_chunk_at_a_time() {
        let mut seed = 7u32;
        let wave: Vec<f32> = (0..16000 * 20)
            .map(|i| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let noise = (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                let burst = if (i / 8000) % 3 == 1 { 0.3 * (i as f32 * 0.07).sin() } else { 0.0 };
                burst + 0.02 * noise
            })
            .collect();
        let vad = SileroVad::new();
        let one = vad.probabilities_in_blocks(&wave, 1);
        assert_eq!(one.len(), 625);
        for block in [7, BLOCK] {
            let got = vad.probabilities_in_blocks(&wave, block);
            let worst = got.iter().zip(&one).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "block {block}: largest difference {worst}");
        }
        // The comparison means something only if the probabilities move.
        let (lo, hi) = one.iter().fold((1.0f32, 0.0f32), |(lo, hi), &p| (lo.min(p), hi.max(p)));
        assert!(hi - lo > 0.01, "probabilities between {lo} and {hi}");
    }
}
