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
    /// `x`: `[c_in][t]` → `[c_out][t_out]`, kernel 3, padding 1, then ReLU; as one dot product
    /// of each output channel's weights with each position's `[c_in × 3]` patch.
    fn forward_relu(&self, x: &[f32], t: usize) -> (Vec<f32>, usize) {
        let t_out = (t + 2 - 3) / self.stride + 1;
        let width = self.c_in * 3;
        let mut patches = vec![0.0f32; t_out * width];
        for j in 0..t_out {
            for i in 0..self.c_in {
                for k in 0..3 {
                    let pos = (j * self.stride + k) as isize - 1;
                    if pos >= 0 && (pos as usize) < t {
                        patches[j * width + i * 3 + k] = x[i * t + pos as usize];
                    }
                }
            }
        }
        let mut y = vec![0.0f32; self.c_out * t_out];
        for o in 0..self.c_out {
            let w = &self.w[o * width..(o + 1) * width];
            for j in 0..t_out {
                y[o * t_out + j] = (self.b[o] + dot(w, &patches[j * width..(j + 1) * width])).max(0.0);
            }
        }
        (y, t_out)
    }
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

    /// One chunk: `input` is the 64 context samples then the 512 new ones.
    fn step(&self, input: &[f32], h: &mut [f32], c: &mut [f32]) -> f32 {
        debug_assert_eq!(input.len(), CONTEXT + CHUNK);
        // Reflect padding on the right, as torch's F.pad(mode="reflect").
        let n = input.len();
        let mut x: Vec<f32> = input.to_vec();
        x.extend((0..CONTEXT).map(|i| input[n - 2 - i]));
        let frames = (x.len() - N_FFT) / HOP + 1;
        let mut mag = vec![0.0f32; BINS * frames];
        for f in 0..BINS {
            let (re_w, im_w) =
                (&self.stft[f * N_FFT..(f + 1) * N_FFT], &self.stft[(f + BINS) * N_FFT..(f + BINS + 1) * N_FFT]);
            for t in 0..frames {
                let s = &x[t * HOP..t * HOP + N_FFT];
                let (re, im) = (dot(re_w, s), dot(im_w, s));
                mag[f * frames + t] = (re * re + im * im).sqrt();
            }
        }
        let (mut y, mut t) = (mag, frames);
        for conv in &self.convs {
            (y, t) = conv.forward_relu(&y, t);
        }
        debug_assert_eq!(t, 1, "four convolutions bring 4 frames to 1");
        // LSTMCell, PyTorch's gate order: input, forget, cell, output.
        let mut gates = self.b.clone();
        for (g, out) in gates.iter_mut().enumerate() {
            let wi = &self.w_ih[g * HIDDEN..(g + 1) * HIDDEN];
            let wh = &self.w_hh[g * HIDDEN..(g + 1) * HIDDEN];
            *out += wi.iter().zip(&y).map(|(a, b)| a * b).sum::<f32>()
                + wh.iter().zip(h.iter()).map(|(a, b)| a * b).sum::<f32>();
        }
        for j in 0..HIDDEN {
            let (i, f, g, o) = (gates[j], gates[HIDDEN + j], gates[2 * HIDDEN + j], gates[3 * HIDDEN + j]);
            c[j] = sigmoid(f) * c[j] + sigmoid(i) * g.tanh();
            h[j] = sigmoid(o) * c[j].tanh();
        }
        let logit: f32 = self.final_w.iter().zip(h.iter()).map(|(w, h)| w * h.max(0.0)).sum::<f32>() + self.final_b;
        sigmoid(logit)
    }

    /// Speech probability of every 512-sample chunk of a 16-kHz waveform (the last chunk
    /// zero-padded), streaming from a zero state as Silero's `get_speech_timestamps` does.
    pub fn probabilities(&self, wave: &[f32]) -> Vec<f32> {
        let chunks = wave.len().div_ceil(CHUNK);
        let mut padded = vec![0.0f32; CONTEXT + chunks * CHUNK];
        padded[CONTEXT..CONTEXT + wave.len()].copy_from_slice(wave);
        let (mut h, mut c) = (vec![0.0f32; HIDDEN], vec![0.0f32; HIDDEN]);
        (0..chunks).map(|i| self.step(&padded[i * CHUNK..i * CHUNK + CONTEXT + CHUNK], &mut h, &mut c)).collect()
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
