//! The frozen CNN feature encoder on the CPU, outside burn: the same network as
//! [`FeatureEncoder::forward`](super::FeatureEncoder::forward), computed channels-last.
//!
//! Why: the CNN is most of wav2vec2's inference time on a CPU (10 s of audio: 512 channels at
//! 32,000 then 16,000 ... frames) and in most recipes it does not train. Channels-last, the
//! receptive field of output frame `t` is one contiguous run of `kernel × channels` values
//! starting at `t × stride × channels`, so each convolution is a single GEMM whose left operand
//! is the input itself read with a row stride of `stride × channels` — no im2col buffer. The
//! normalisation and activation after it are one fused, vectorised pass, with an `erf` that
//! vectorises (libm's does not). Used only where nothing in the CNN needs a gradient.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::TensorData;
use rayon::prelude::*;

use speechtune_kernels::bf16::{PackedB, matmul_new};

use super::FeatureEncoder;
use crate::layers::Activation;

/// Elements per parallel task in the elementwise passes.
const CHUNK: usize = 1 << 15;

struct NeedsGrad(bool);

impl ModuleVisitor for NeedsGrad {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0 |= param.val().is_require_grad();
    }
}

/// True where one of `module`'s parameters trains (needs a gradient): then the native
/// convolutions, whose results are constants, do not apply.
pub(crate) fn trains<M: Module>(module: &M) -> bool {
    let mut v = NeedsGrad(false);
    module.visit(&mut v);
    v.0
}

/// One layer's weights, read out of the module once per call.
struct Layer<'a> {
    /// `[kernel × c_in, c_out]`, row `j × c_in + c` holding `W[:, c, j]` (empty with `packed`).
    weight: &'a [f32],
    /// The same matrix in bf16 ([`FeatureEncoder::use_bf16`]).
    packed: Option<&'a PackedB>,
    bias: Option<Vec<f32>>,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    /// Per-channel normalisation over time (GroupNorm with one group per channel), γ and β.
    group_norm: Option<(Vec<f32>, Vec<f32>)>,
    /// Per-frame normalisation over channels, γ, β and ε.
    layer_norm: Option<(Vec<f32>, Vec<f32>, f32)>,
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default()
}

/// Values the native products read: a CPU tensor's own storage where it already holds them in
/// the order needed (a frozen weight), else a vector made for the call.
enum Values {
    Stored(FlexTensor),
    Made(Vec<f32>),
}

/// The CPU tensor behind `t` (through autodiff), where it is float32 on the CPU.
fn storage<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    let plain = if t.device().is_autodiff() { t.clone().inner() } else { t.clone() };
    plain.try_into_primitive::<Flex>().ok().filter(|f| f.dtype() == burn::tensor::DType::F32)
}

impl Values {
    /// `t`'s values in row-major order.
    fn of<const D: usize>(t: Tensor<D>) -> Self {
        match storage(&t) {
            Some(f) if f.as_slice::<f32>().is_some() => Self::Stored(f),
            _ => Self::Made(values(t)),
        }
    }

    /// A conv weight `W` (`[c_out, c_in, kernel]`) as the matrix `[kernel × c_in, c_out]` whose
    /// row `j × c_in + c` holds `W[:, c, j]`: the weight's storage where it is stored that way
    /// (`FeatureEncoder::load` on the CPU), else relaid out in parallel.
    fn conv_matrix(w: Tensor<3>) -> Self {
        let [c_out, c_in, kernel] = w.dims();
        if let Some(t) = storage(&w)
            && t.layout().strides() == [1, c_out as isize, (c_in * c_out) as isize]
            && t.layout().start_offset() == 0
            && t.storage::<f32>().len() == c_out * c_in * kernel
        {
            return Self::Stored(t);
        }
        let w = values(w);
        let mut out = vec![0.0f32; w.len()];
        out.par_chunks_mut((c_in * c_out).max(1)).enumerate().for_each(|(j, rows)| {
            for c in 0..c_in {
                for o in 0..c_out {
                    rows[c * c_out + o] = w[(o * c_in + c) * kernel + j];
                }
            }
        });
        Self::Made(out)
    }

    fn get(&self) -> &[f32] {
        match self {
            // (Stored by `of` only where `as_slice` holds; by `conv_matrix` with offset 0 and the
            // storage's exact size.)
            Self::Stored(t) => t.as_slice::<f32>().unwrap_or_else(|| t.storage::<f32>()),
            Self::Made(v) => v,
        }
    }
}

impl FeatureEncoder {
    /// True where [`FeatureEncoder::forward_native`] may replace the burn graph: on the flex
    /// (CPU) device, with no CNN parameter that trains.
    pub fn native_applies(&self, device: &Device) -> bool {
        !trains(self) && *device == Device::flex()
    }

    /// Mixed precision: the native CNN's products with bf16 inputs (weights packed now) and f32
    /// sums; normalisations and activations stay f32. A layer that folds its group norm into its
    /// weights ([`folded_group_norm_conv`]: wav2vec2's first, 10 samples per receptive field)
    /// stays f32: its product is a small part of its work, and the folding saves the rest.
    /// False (and f32) where the CNN does not run natively (one of its parameters trains, or it
    /// is not on the CPU).
    pub fn use_bf16(&mut self) -> bool {
        let on_cpu = self.layers.first().is_some_and(|l| l.conv.weight.device() == Device::flex());
        self.bf16 = (on_cpu && !trains(self)).then(|| {
            let packed = self.layers.iter().map(|l| {
                let [_, c_in, kernel] = l.conv.weight.dims();
                let folds = l.group_norm.is_some() && kernel * c_in <= FOLDED_FIELD;
                (!folds).then(|| conv_packed(l.conv.weight.val()))
            });
            std::sync::Arc::new(packed.collect())
        });
        self.bf16.is_some()
    }

    /// `[batch, samples]` → `[batch, frames, channels]` (what `forward(..).swap_dims(1, 2)`
    /// gives), computed without burn; the result is a constant on `samples`' device.
    pub fn forward_native(&self, samples: Tensor<2>) -> Tensor<3> {
        let device = samples.device();
        let [batch, n] = samples.dims();
        let waves = values(samples);
        // The f32 weights of the layers not packed in bf16, as `[kernel × c_in, c_out]`: the
        // stored values where the weight is stored that way (FeatureEncoder::load on the CPU),
        // else relaid out for this call.
        let packed = |i: usize| self.bf16.as_ref().and_then(|p| p[i].as_ref());
        let weights: Vec<Option<Values>> = (self.layers.iter().enumerate())
            .map(|(i, l)| packed(i).is_none().then(|| Values::conv_matrix(l.conv.weight.val())))
            .collect();
        let layers: Vec<Layer> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let [c_out, c_in, kernel] = l.conv.weight.dims();
                Layer {
                    weight: weights[i].as_ref().map_or(&[][..], Values::get),
                    packed: packed(i),
                    bias: l.conv.bias.as_ref().map(|b| values(b.val())),
                    c_in,
                    c_out,
                    kernel,
                    stride: l.conv.stride,
                    group_norm: l.group_norm.as_ref().map(|g| (values(g.weight.val()), values(g.bias.val()))),
                    layer_norm: l.layer_norm.as_ref().map(|g| {
                        let gamma = g.weight.as_ref().map(|w| values(w.val())).unwrap_or_default();
                        let beta = g.bias.as_ref().map(|b| values(b.val())).unwrap_or_default();
                        (gamma, beta, g.eps as f32)
                    }),
                }
            })
            .collect();
        let mut out = Vec::new();
        let mut frames = 0;
        let mut channels = 0;
        for b in 0..batch {
            let mut x = waves[b * n..(b + 1) * n].to_vec();
            let mut t = n;
            for layer in &layers {
                let (y, t_out) = conv_layer(&x, t, layer, self.activation);
                x = y;
                t = t_out;
            }
            frames = t;
            channels = layers.last().map_or(1, |l| l.c_out);
            out.extend_from_slice(&x);
        }
        Tensor::from_data(TensorData::new(out, [batch, frames, channels]), &device)
    }
}

/// A conv weight `W` (`[c_out, c_in, kernel]`) packed for the bf16 products as the matrix
/// `B[j·c_in + c, o] = W[o, c, j]` (the layout the native convolutions read).
pub fn conv_packed(w: Tensor<3>) -> PackedB {
    let [c_out, c_in, kernel] = w.dims();
    let w = values(w);
    PackedB::from_fn(kernel * c_in, c_out, |q, o| w[(o * c_in + q % c_in) * kernel + q / c_in])
}

/// Convolutions with zero padding (`groups` = 1), each followed by its bias and `act`, outside
/// burn and channels-last, as [`FeatureEncoder::forward_native`] runs the CNN (Whisper's
/// front-end: 3 taps, then 3 taps of stride 2). `x` is `[batch, c_in, time]`, as burn's
/// convolution takes it; returns `[batch, time', c_out]` (burn's result after `swap_dims(1, 2)`),
/// a constant on `x`'s device. `packed`: each convolution's weight in bf16 ([`conv_packed`]),
/// else the f32 weights.
pub fn padded_convs_native(
    x: Tensor<3>,
    convs: &[&crate::layers::Conv1d],
    packed: Option<&[PackedB]>,
    act: Activation,
) -> Tensor<3> {
    let device = x.device();
    let [batch, c_in, time] = x.dims();
    assert!(convs.iter().all(|c| c.groups == 1), "convolutions of one group");
    assert!(packed.is_none_or(|p| p.len() == convs.len()), "one packed weight per convolution");
    let xv = values(x);
    let weights: Vec<Option<Values>> =
        convs.iter().map(|c| packed.is_none().then(|| Values::conv_matrix(c.weight.val()))).collect();
    let layers: Vec<Layer> = (convs.iter().enumerate())
        .map(|(i, c)| {
            let [c_out, c_in, kernel] = c.weight.dims();
            Layer {
                weight: weights[i].as_ref().map_or(&[][..], Values::get),
                packed: packed.map(|p| &p[i]),
                bias: c.bias.as_ref().map(|b| values(b.val())),
                c_in,
                c_out,
                kernel,
                stride: c.stride,
                group_norm: None,
                layer_norm: None,
            }
        })
        .collect();
    let (mut out, mut frames, mut channels) = (Vec::new(), time, c_in);
    for b in 0..batch {
        // [c_in, time] → [time, c_in]
        let src = &xv[b * c_in * time..][..c_in * time];
        let mut x = vec![0.0f32; time * c_in];
        for (c, channel) in src.chunks_exact(time.max(1)).enumerate() {
            channel.iter().enumerate().for_each(|(t, &v)| x[t * c_in + c] = v);
        }
        let (mut t, mut c) = (time, c_in);
        for (conv, layer) in convs.iter().zip(&layers) {
            let p = conv.padding;
            let mut padded = vec![0.0f32; (t + 2 * p) * c];
            padded[p * c..(p + t) * c].copy_from_slice(&x);
            (x, t) = conv_layer(&padded, t + 2 * p, layer, act);
            c = layer.c_out;
        }
        (frames, channels) = (t, c);
        out.extend_from_slice(&x);
    }
    Tensor::from_data(TensorData::new(out, [batch, frames, channels]), &device)
}

/// One conv layer, channels-last: `x` is `[t_in, c_in]`; returns `[t_out, c_out]` and `t_out`.
fn conv_layer(x: &[f32], t_in: usize, l: &Layer, act: Activation) -> (Vec<f32>, usize) {
    let t_out = if t_in < l.kernel { 0 } else { (t_in - l.kernel) / l.stride + 1 };
    if let Some((gamma, beta)) = &l.group_norm
        && l.packed.is_none()
        && l.kernel * l.c_in <= FOLDED_FIELD
        && t_out > 0
    {
        return (folded_group_norm_conv(x, t_out, l, gamma, beta, act), t_out);
    }
    let mut y = match l.packed {
        Some(packed) => matmul_new(x, t_out, l.stride * l.c_in, packed),
        None => {
            let mut y = speechtune_kernels::zeros(t_out * l.c_out);
            if t_out > 0 {
                // y[t, o] = Σ_q x[t·stride·c_in + q] · weight[q, o], q over kernel × c_in.
                // SAFETY: the last row read ends at (t_out-1)·stride·c_in + kernel·c_in ≤
                // t_in·c_in, inside x; weight is [kernel·c_in, c_out] and y [t_out, c_out].
                unsafe {
                    gemm_rows(
                        &mut y,
                        t_out,
                        l.c_out,
                        l.kernel * l.c_in,
                        x,
                        l.stride * l.c_in,
                        l.weight,
                        gemm::Parallelism::Rayon(0),
                    )
                };
            }
            y
        }
    };
    let c = l.c_out;
    if let Some((gamma, beta)) = &l.group_norm {
        // Statistics per channel over all frames (f64 sums: 32,000 frames for 10 s).
        let bias = l.bias.clone().unwrap_or_else(|| vec![0.0; c]);
        let sum = channel_sums(&y, c, |i, v| (v + bias[i]) as f64);
        let mean: Vec<f64> = sum.iter().map(|s| s / t_out.max(1) as f64).collect();
        let sq = channel_sums(&y, c, |i, v| {
            let d = (v + bias[i]) as f64 - mean[i];
            d * d
        });
        // y' = γ (y + b − μ) / σ + β = y · scale + shift
        let scale: Vec<f32> =
            sq.iter().zip(gamma).map(|(s, &g)| (g as f64 / (s / t_out.max(1) as f64 + 1e-5).sqrt()) as f32).collect();
        let shift: Vec<f32> = (0..c).map(|i| beta[i] + (bias[i] as f64 - mean[i]) as f32 * scale[i]).collect();
        affine_activate(&mut y, &scale, &shift, act);
    } else if let Some((gamma, beta, eps)) = &l.layer_norm {
        let bias = l.bias.clone().unwrap_or_else(|| vec![0.0; c]);
        y.par_chunks_mut(c * (CHUNK / c).max(1)).for_each(|rows| {
            for row in rows.chunks_exact_mut(c) {
                for (v, &b) in row.iter_mut().zip(&bias) {
                    *v += b;
                }
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
                let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
                let inv = 1.0 / (var + *eps as f64).sqrt();
                for (i, v) in row.iter_mut().enumerate() {
                    *v = ((*v as f64 - mean) * inv) as f32 * gamma.get(i).copied().unwrap_or(1.0)
                        + beta.get(i).copied().unwrap_or(0.0);
                }
                act.apply_slice(row);
            }
        });
    } else {
        let shift = l.bias.clone().unwrap_or_else(|| vec![0.0; c]);
        affine_activate(&mut y, &vec![1.0; c], &shift, act);
    }
    (y, t_out)
}

/// Receptive fields of at most this many values (`kernel × c_in`) fold a group norm after the
/// convolution into its weights ([`folded_group_norm_conv`]): wav2vec2's first layer, 10 samples.
const FOLDED_FIELD: usize = 64;

/// A convolution followed by group norm (one group per channel, statistics over time) and the
/// activation, written once: each channel's output is a linear function of the receptive field
/// `f_t` (`kernel × c_in` values), so its mean over time is `b_c + w_c·μ` and its variance
/// `w_cᵀ Σ w_c`, with `μ` and `Σ` the mean and covariance of the receptive fields (f64). The
/// normalisation then folds into the weights, `act(f_t · (w_c s_c) + β_c − s_c w_c·μ)` with
/// `s_c = γ_c / √(var_c + 1e-5)` (the bias cancels), computed in blocks of frames, each block's
/// product and activation on one thread while its values are in cache. The unfolded path
/// computes the products, two passes of statistics over them, then the affine map and the
/// activation: for wav2vec2-base's first layer (512 channels × 16,000 frames per 5 s) the
/// statistics passes alone took longer than the product.
fn folded_group_norm_conv(
    x: &[f32],
    t_out: usize,
    l: &Layer,
    gamma: &[f32],
    beta: &[f32],
    act: Activation,
) -> Vec<f32> {
    let (q, row, c) = (l.kernel * l.c_in, l.stride * l.c_in, l.c_out);
    let field = |t: usize| &x[t * row..t * row + q];
    // Σ f_t and Σ f_t f_tᵀ (upper triangle) in one vector, f64, in parallel over fixed blocks of
    // frames added in order (the same sums whatever the pool's scheduling).
    let frames_per_task = 1024;
    let parts = (0..t_out.div_ceil(frames_per_task))
        .into_par_iter()
        .map(|task| {
            let mut acc = vec![0.0f64; q + q * q];
            let (s, xx) = acc.split_at_mut(q);
            for t in task * frames_per_task..((task + 1) * frames_per_task).min(t_out) {
                let f = field(t);
                for i in 0..q {
                    let fi = f[i] as f64;
                    s[i] += fi;
                    for j in i..q {
                        xx[i * q + j] += fi * f[j] as f64;
                    }
                }
            }
            acc
        })
        .collect();
    let mut sums = speechtune_kernels::add_in_order(parts);
    sums.resize(q + q * q, 0.0);
    let (sum, cross) = sums.split_at(q);
    let n = t_out as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let cov = |i: usize, j: usize| {
        let (i, j) = (i.min(j), i.max(j));
        cross[i * q + j] / n - mean[i] * mean[j]
    };
    // Per channel: w_c·μ, w_cᵀ Σ w_c, then the folded weights and shift.
    let w = |j: usize, o: usize| l.weight[j * c + o] as f64;
    let mut folded = vec![0.0f32; q * c];
    let mut shift = vec![0.0f32; c];
    for o in 0..c {
        let wmu: f64 = (0..q).map(|j| w(j, o) * mean[j]).sum();
        let var: f64 = (0..q).map(|i| (0..q).map(|j| w(i, o) * w(j, o) * cov(i, j)).sum::<f64>()).sum();
        let s = gamma[o] as f64 / (var.max(0.0) + 1e-5).sqrt();
        for j in 0..q {
            folded[j * c + o] = (w(j, o) * s) as f32;
        }
        shift[o] = (beta[o] as f64 - s * wmu) as f32;
    }
    let rows = (CHUNK / c.max(1)).max(1);
    let mut y: Vec<f32> = Vec::with_capacity(t_out * c);
    y.spare_capacity_mut()[..t_out * c].par_chunks_mut(rows * c).enumerate().for_each(|(b, block)| {
        let (t0, m) = (b * rows, block.len() / c);
        // SAFETY: `mm` overwrites all m × c values of the block (k = q > 0), and reads
        // fields t0..t0 + m, which end at (t0 + m - 1)·row + q ≤ x.len() as t0 + m ≤ t_out; the
        // folded weight is [q, c].
        let block = unsafe {
            let ptr = block.as_mut_ptr() as *mut f32;
            speechtune_kernels::mm(
                m,
                c,
                q,
                ptr,
                c,
                speechtune_kernels::View { ptr: x[t0 * row..].as_ptr(), rs: row as isize, cs: 1 },
                speechtune_kernels::View::rows(&folded, 0, c),
                1.0,
                false,
                gemm::Parallelism::None,
            );
            std::slice::from_raw_parts_mut(ptr, m * c)
        };
        for r in block.chunks_exact_mut(c) {
            r.iter_mut().zip(&shift).for_each(|(v, s)| *v += s);
        }
        act.apply_slice(block);
    });
    // SAFETY: the blocks above cover all t_out × c values, each written.
    unsafe { y.set_len(t_out * c) };
    y
}

/// `y[t, o] = Σ_q a[t·a_row + q] · w[q·n + o]` for t < m, q < k, o < n: one GEMM whose left
/// operand is `a` read with a row stride of `a_row` (rows may overlap: a convolution's receptive
/// fields), `w` row-major `[k, n]`, `y` row-major `[m, n]` (overwritten).
///
/// # Safety
/// `a` must hold `(m - 1) · a_row + k` values, `w` `k · n` and `y` `m · n`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_rows(
    y: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_row: usize,
    w: &[f32],
    par: gemm::Parallelism,
) {
    debug_assert!(m == 0 || ((m - 1) * a_row + k <= a.len() && k * n <= w.len() && m * n <= y.len()));
    let (a, w) = (
        speechtune_kernels::View { ptr: a.as_ptr(), rs: a_row as isize, cs: 1 },
        speechtune_kernels::View::rows(w, 0, n),
    );
    // SAFETY: the caller guarantees the sizes above.
    unsafe { speechtune_kernels::mm(m, n, k, y.as_mut_ptr(), n, a, w, 1.0, false, par) }
}

/// `Σ_t f(c, y[t, c])` for each channel `c` of `y` (`[frames, channels]`), in f64, in parallel
/// over blocks of frames added in order.
fn channel_sums(y: &[f32], channels: usize, f: impl Fn(usize, f32) -> f64 + Sync) -> Vec<f64> {
    let c = channels.max(1);
    let parts = y
        .par_chunks(c * (CHUNK / c).max(1))
        .map(|rows| {
            let mut s = vec![0.0f64; c];
            for row in rows.chunks_exact(c) {
                for (i, (s, &v)) in s.iter_mut().zip(row).enumerate() {
                    *s += f(i, v);
                }
            }
            s
        })
        .collect::<Vec<_>>();
    let mut total = speechtune_kernels::add_in_order(parts);
    total.resize(c, 0.0);
    total
}

/// `y[t, c] ← act(y[t, c] · scale[c] + shift[c])`, in parallel over blocks of rows.
fn affine_activate(y: &mut [f32], scale: &[f32], shift: &[f32], act: Activation) {
    let c = scale.len();
    y.par_chunks_mut(c * (CHUNK / c).max(1)).for_each(|rows| {
        for row in rows.chunks_exact_mut(c) {
            for ((v, &a), &b) in row.iter_mut().zip(scale).zip(shift) {
                *v = *v * a + b;
            }
        }
        act.apply_slice(rows);
    });
}

/// The positional convolution's weight-normed weight `W = v · g / ‖v‖` (`v`: `[dim, dim /
/// groups, kernel]`, `g`: `[1, 1, kernel]`, the norm over the first two dimensions per tap, as
/// torch's `weight_norm(dim=2)`) laid out for [`pos_conv_native`]:
/// `wg[g][(j·cg + c)·cg + o] = W[g·cg + o, c, j]`. Computed per call, in parallel.
pub fn pos_conv_weight(g: Tensor<3>, v: Tensor<3>) -> Vec<f32> {
    let [_, cg, kernel] = v.dims();
    let (g, v) = (values(g), Values::of(v));
    let v = v.get();
    assert_eq!(g.len(), kernel, "weight_g of one value per tap");
    // ‖v‖ per tap j, over (o, c): f64 sums per block of 64 output channels, each row of v
    // holding one (o, c)'s taps.
    let squares: Vec<Vec<f64>> = v
        .par_chunks((cg * kernel).max(1) * 64)
        .map(|block| {
            let mut s = vec![0.0f64; kernel];
            for row in block.chunks_exact(kernel.max(1)) {
                for (s, &x) in s.iter_mut().zip(row) {
                    *s += (x as f64) * (x as f64);
                }
            }
            s
        })
        .collect();
    let mut squares = speechtune_kernels::add_in_order(squares);
    squares.resize(kernel, 0.0);
    let scale: Vec<f32> = squares.iter().zip(&g).map(|(s, &g)| g / s.sqrt() as f32).collect();
    // One task per group. Its output channels in blocks of 16: the block's taps of input
    // channel c (16 runs of `kernel` values of v) stay in L1 while each (tap, c) row of the
    // output gets its 16 values in one run. (Reading v in output order instead touches each
    // cache line of the group's 1.2 MB once per tap: 128 passes on wav2vec2-base.)
    const BLOCK: usize = 16;
    let mut wg = vec![0.0f32; v.len()];
    let per_group = (kernel * cg * cg).max(1);
    wg.par_chunks_mut(per_group).zip(v.par_chunks(per_group)).for_each(|(out, vg)| {
        for o0 in (0..cg).step_by(BLOCK) {
            let ob = BLOCK.min(cg - o0);
            for c in 0..cg {
                for (j, &s) in scale.iter().enumerate() {
                    let run = &mut out[(j * cg + c) * cg + o0..][..ob];
                    for (i, w) in run.iter_mut().enumerate() {
                        *w = vg[((o0 + i) * cg + c) * kernel + j] * s;
                    }
                }
            }
        }
    });
    wg
}

/// The positional convolution's weight for [`pos_conv_native`]: f32 as laid out by
/// [`pos_conv_weight`], or each group's `[kernel × cg, cg]` block packed for the bf16 products
/// ([`pos_conv_packed`]).
#[derive(Clone, Copy)]
pub enum PosConvWeight<'a> {
    F32(&'a [f32]),
    Bf16(&'a [PackedB]),
}

/// Mixed precision: each group's block of [`pos_conv_weight`]'s layout packed for the bf16
/// products (`kernel × cg` rows, `cg` columns).
pub fn pos_conv_packed(wg: &[f32], groups: usize, cg: usize, kernel: usize) -> Vec<PackedB> {
    let block = kernel * cg * cg;
    (0..groups).map(|g| PackedB::from_rows(&wg[g * block..(g + 1) * block], kernel * cg, cg)).collect()
}

/// The positional convolution (`Wav2Vec2PositionalConvEmbedding`: grouped, symmetric padding
/// `kernel / 2`, the extra frame of an even kernel dropped) with its bias and activation, outside
/// burn: `x` `[batch, time, dim]` channels-last, `weight` [`PosConvWeight`] (`cg = dim / groups`
/// channels per group, `kernel` taps); returns `[batch, time, dim]` as a constant on `x`'s
/// device. The input is first laid out per group, `[time + kernel - 1, dim / groups]` with the
/// padding as zero rows, so the receptive field of output frame `t` is one contiguous run of
/// `kernel × dim / groups` values starting at row `t`: one product per batch item and group
/// reading that buffer with a row stride of one row — no im2col (burn's grouped convolution
/// spends ~4× the time of its products on wav2vec2-base).
pub fn pos_conv_native(
    x: Tensor<3>,
    weight: PosConvWeight,
    cg: usize,
    kernel: usize,
    bias: Tensor<1>,
    groups: usize,
    act: Activation,
) -> Tensor<3> {
    let device = x.device();
    let [batch, time, dim] = x.dims();
    match weight {
        PosConvWeight::F32(wg) => {
            assert_eq!(wg.len(), groups * kernel * cg * cg, "a relayout of the positional convolution's weight")
        }
        PosConvWeight::Bf16(p) => assert!(
            p.len() == groups && p.iter().all(|b| b.k() == kernel * cg && b.n() == cg),
            "the positional convolution's packed weight: one [kernel × cg, cg] block per group"
        ),
    }
    let (xv, bias) = (values(x), values(bias));
    let rows = time + kernel - 1;
    let pad = kernel / 2;
    let blocks: Vec<Vec<f32>> = (0..batch * groups)
        .into_par_iter()
        .map(|bg| {
            let (b, g) = (bg / groups, bg % groups);
            let mut xg = vec![0.0f32; rows * cg];
            for t in 0..time {
                let src = &xv[(b * time + t) * dim + g * cg..][..cg];
                xg[(t + pad) * cg..][..cg].copy_from_slice(src);
            }
            // y[t, o] = Σ_q xg[t·cg + q] · wg[g][q, o], q over kernel × cg.
            match weight {
                PosConvWeight::Bf16(packed) => matmul_new(&xg, time, cg, &packed[g]),
                PosConvWeight::F32(wg) => {
                    let mut y = vec![0.0f32; time * cg];
                    if time > 0 {
                        // SAFETY: the last row read ends at (time-1)·cg + kernel·cg = rows·cg,
                        // inside xg; wg's block g is [kernel·cg, cg] and y [time, cg].
                        unsafe {
                            gemm_rows(
                                &mut y,
                                time,
                                cg,
                                kernel * cg,
                                &xg,
                                cg,
                                &wg[g * kernel * cg * cg..],
                                gemm::Parallelism::None,
                            )
                        };
                    }
                    y
                }
            }
        })
        .collect();
    let mut out = vec![0.0f32; batch * time * dim];
    for (bg, y) in blocks.iter().enumerate() {
        let (b, g) = (bg / groups, bg % groups);
        for t in 0..time {
            out[(b * time + t) * dim + g * cg..][..cg].copy_from_slice(&y[t * cg..][..cg]);
        }
    }
    affine_activate(&mut out, &vec![1.0; dim], &bias, act);
    Tensor::from_data(TensorData::new(out, [batch, time, dim]), &device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// Whisper's front-end outside burn: two padded convolutions (3 taps, then 3 taps of stride
    /// 2, odd and even lengths) with bias and GELU equal burn's, in f32; in bf16 they are their
    /// definition on bf16-rounded inputs and weights (burn's convolutions of the rounded values,
    /// the first one's output rounded before the second) and differ from f32's.
    #[test]
    fn padded_convs_equal_burns_and_their_bf16_definition() {
        use crate::layers::Conv1d;
        use speechtune_kernels::bf16::{from_bf16, to_bf16};
        let device = Device::flex();
        let normal = Distribution::Normal(0.0, 1.0);
        let conv = |c_in: usize, c_out: usize, stride: usize| Conv1d {
            weight: Param::from_tensor(Tensor::random([c_out, c_in, 3], normal, &device)),
            bias: Some(Param::from_tensor(Tensor::random([c_out], normal, &device))),
            stride,
            padding: 1,
            groups: 1,
        };
        let (c1, c2) = (conv(5, 6, 1), conv(6, 6, 2));
        let round = |t: Tensor<3>| {
            let dims = t.dims();
            let v: Vec<f32> = values(t).iter().map(|&x| from_bf16(to_bf16(x))).collect();
            Tensor::<3>::from_data(TensorData::new(v, dims), &device)
        };
        let gelu = Activation::Gelu;
        for time in [11usize, 12] {
            let x = Tensor::<3>::random([2, 5, time], normal, &device);
            let graph = values(gelu.forward(c2.forward(gelu.forward(c1.forward(x.clone())))).swap_dims(1, 2));
            let native = padded_convs_native(x.clone(), &[&c1, &c2], None, gelu);
            assert_eq!(native.dims(), [2, time.div_ceil(2), 6]);
            let native = values(native);
            let diff = |a: &[f32], b: &[f32]| crate::testing::max_diff_of_scale(a, b, &graph);
            assert!(
                diff(&native, &graph) < 1e-5,
                "time {time}: f32 {} of the scale from burn's",
                diff(&native, &graph)
            );

            let packed = [conv_packed(c1.weight.val()), conv_packed(c2.weight.val())];
            let bf16 = values(padded_convs_native(x.clone(), &[&c1, &c2], Some(&packed), gelu));
            let rounded = |c: &Conv1d| Conv1d { weight: Param::from_tensor(round(c.weight.val())), ..c.clone() };
            let (r1, r2) = (rounded(&c1), rounded(&c2));
            let want = values(gelu.forward(r2.forward(round(gelu.forward(r1.forward(round(x)))))).swap_dims(1, 2));
            assert!(
                diff(&bf16, &want) < 1e-5,
                "time {time}: bf16 {} of the scale from its definition",
                diff(&bf16, &want)
            );
            assert!(
                diff(&bf16, &graph) > 1e-4 && diff(&bf16, &graph) < 0.03,
                "time {time}: bf16 {} from f32",
                diff(&bf16, &graph)
            );
        }
    }

    /// The relaid weight against `W = v · g / ‖v‖` composed from burn's operations, on a shape
    /// whose channels per group (20) are not a multiple of the 16-channel blocks.
    #[test]
    fn pos_conv_weight_is_the_weight_normed_kernel_relaid() {
        let device = Device::flex();
        let (dim, groups, kernel) = (60, 3, 5);
        let cg = dim / groups;
        let v = Tensor::<3>::random([dim, cg, kernel], Distribution::Normal(0.0, 1.0), &device);
        let g = Tensor::<3>::random([1, 1, kernel], Distribution::Uniform(0.5, 2.0), &device);
        let norm = v.clone().powf_scalar(2.0).sum_dim(0).sum_dim(1).sqrt();
        let w = values(v.clone() * (g.clone() / norm));
        let wg = pos_conv_weight(g, v);
        assert_eq!(wg.len(), w.len());
        for grp in 0..groups {
            for j in 0..kernel {
                for c in 0..cg {
                    for o in 0..cg {
                        let want = w[((grp * cg + o) * cg + c) * kernel + j];
                        let got = wg[grp * kernel * cg * cg + (j * cg + c) * cg + o];
                        assert!(
                            (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                            "[{grp}, {j}, {c}, {o}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
