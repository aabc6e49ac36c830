//! Multi-head self-attention as one operation: `softmax(scale · Q Kᵀ + mask) V` per head, read
//! from and written to the projections' `[batch, time, heads × head_dim]` layout, with its own
//! backward pass on burn's autodiff graph.
//!
//! Composed from burn's operations, attention splits the heads out with copies, materialises the
//! scaled scores, the masked scores and the probabilities as separate tensors, and its
//! elementwise steps (scale, mask, the softmax's backward) run on one thread. Here each
//! (sequence, head) pair is one task on the thread pool: two products through strided views of
//! Q, K and V, the mask and the softmax in place between them, and the output written straight
//! into its columns.
//!
//! The graph does not keep the probabilities `P` (`batch × heads × time²` values: for 2 × 20 s
//! through wav2vec2-base, 1.15 GB over the 12 layers), only each row's softmax statistics (its
//! maximum and `1 / Σ`); the backward pass recomputes `P` from Q, K and those, bit for bit, at the
//! cost of one more `Q Kᵀ` product per head (as flash attention does). Then, per head,
//! `dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, `dQ = scale · dS K`,
//! `dK = scale · dSᵀ Q`.

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use rayon::prelude::*;

use crate::fastmath::{exp_rows, softmax_rows, softmax_rows_again, softmax_rows_stats};
use crate::graph::{GraphOp, GraphTensor, Shared, View, contiguous, dims, mm, on_graph, sum_by, tensor, values};

/// Sizes of one call: `batch` sequences of `time` steps, `heads` heads of `head_dim` values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub batch: usize,
    pub time: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl Shape {
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Offset of head `h` of sequence `b` in a `[batch, time, width]` tensor.
    fn offset(&self, task: usize) -> usize {
        let (b, h) = (task / self.heads, task % self.heads);
        b * self.time * self.width() + h * self.head_dim
    }

    fn tasks(&self) -> usize {
        self.batch * self.heads
    }

    /// Values in each of q, k, v (`[batch, time, width]`), after checking them and the mask's.
    fn check(&self, q: &[f32], k: &[f32], v: &[f32], mask: Option<&[f32]>) -> usize {
        let n = self.batch * self.time * self.width();
        assert!(q.len() == n && k.len() == n && v.len() == n, "attention inputs of {n} values each");
        if let Some(m) = mask {
            assert_eq!(m.len(), self.batch * self.time, "a key mask of batch × time values");
        }
        assert!(self.head_dim > 0 || n == 0, "heads of at least one value");
        n
    }

    /// Task `task`'s key mask (its sequence's `time` values), added to each row of its scores.
    fn add_mask(&self, scores: &mut [f32], mask: Option<&[f32]>, task: usize) {
        let t = self.time;
        if let Some(m) = mask {
            let m = &m[(task / self.heads) * t..][..t];
            for row in scores.chunks_exact_mut(t) {
                row.iter_mut().zip(m).for_each(|(a, b)| *a += b);
            }
        }
    }
}

/// Task `task`'s scores `scale · Q Kᵀ + mask` (t × t), written to `p`.
///
/// # Safety
/// `p` valid for `t · t` writes; `q`, `k` and `mask` of the sizes [`forward_values`] checks.
unsafe fn scores<'a>(
    q: &[f32],
    k: &[f32],
    mask: Option<&[f32]>,
    s: Shape,
    scale: f32,
    task: usize,
    p: *mut f32,
) -> &'a mut [f32] {
    let (t, w, hd) = (s.time, s.width(), s.head_dim);
    let o = s.offset(task);
    // SAFETY: the views stay inside q and k (o + (t - 1)·w + hd ≤ n); the slice is made once
    // the product has written all of it (hd > 0).
    let p = unsafe {
        mm(t, t, hd, p, t, View::rows(q, o, w), View::cols(k, o, w), scale, false, gemm::Parallelism::None);
        std::slice::from_raw_parts_mut(p, t * t)
    };
    s.add_mask(p, mask, task);
    p
}

/// `softmax(scale · Q Kᵀ + mask) V` per head on values: `q`, `k`, `v` are `[batch, time,
/// heads × head_dim]` row-major, `mask` (optional) adds `mask[b · time + s]` to every score of
/// key `s` in sequence `b`. Returns the output (same layout) and, with `keep`, the softmax
/// statistics [`backward_values`] reads (`[batch, heads, time, 2]`: each row's maximum score
/// and `1 / Σ`).
pub fn forward_values(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[f32]>,
    s: Shape,
    scale: f32,
    keep: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let (t, w, hd) = (s.time, s.width(), s.head_dim);
    let n = s.check(q, k, v, mask);
    // The output is written in full by the products below (each head's columns of every row),
    // so it is not zeroed first.
    let mut out: Vec<f32> = Vec::with_capacity(n);
    let mut stats = vec![0.0f32; if keep { s.tasks() * t * 2 } else { 0 }];
    let dst = Shared(out.as_mut_ptr());
    // Task `task`'s probabilities in `p` (t × t values), its statistics to `stats` with `keep`.
    let head = |task: usize, p: &mut Vec<f32>, stats: &mut [f32]| {
        // SAFETY: p has room for t × t values, which `scores` writes before anything reads them.
        let p = unsafe { scores(q, k, mask, s, scale, task, p.as_mut_ptr()) };
        if keep {
            softmax_rows_stats(p, t, stats)
        } else {
            softmax_rows(p, t)
        }
        // SAFETY: the view stays inside v; each task writes its own head's columns of `out`.
        unsafe {
            let o = s.offset(task);
            mm(t, hd, t, dst.at(o), w, View::rows(p, 0, t), View::rows(v, o, w), 1.0, false, gemm::Parallelism::None);
        }
    };
    let per_task = if keep { 2 * t } else { 0 };
    // Per thread (and per split of the work: rayon may call it several times), never zeroed:
    // `scores` writes all t × t values first (zeroing cost 4.5 % of a 30-s Whisper encoder's
    // time, t = 1,500).
    let scratch = || Vec::<f32>::with_capacity(t * t);
    if keep && t > 0 {
        stats.par_chunks_mut(per_task).enumerate().for_each_init(scratch, |p, (task, st)| head(task, p, st));
    } else {
        (0..s.tasks()).into_par_iter().for_each_init(scratch, |p, task| head(task, p, &mut []));
    }
    // SAFETY: every task wrote its head's columns of all rows of `out` (heads × head_dim =
    // width).
    unsafe { out.set_len(n) };
    (out, keep.then_some(stats))
}

/// Rows of queries per block of [`forward_values_bf16`]: their scores (rows × time f32, and the
/// product's bf16 copy of them) stay in L2 between the two products (t = 1,500: 384 + 192 KiB).
const QUERY_BLOCK: usize = 64;

/// [`forward_values`] with its products in bf16, as PyTorch's autocast runs attention: Q, K, V
/// and the probabilities rounded to bf16 ([`crate::bf16`], AMX or AVX512_BF16), scores, sums and
/// outputs in f32. Per head, Kᵀ (scaled) and V are packed once; then per block of
/// [`QUERY_BLOCK`] queries the scores' product, one pass that turns the scores into
/// `exp(s − max)` (unnormalised, with each row's Σ), the product with V (which rounds them to
/// bf16 on the way in), and its rows scaled by `1 / Σ` on their way into the output. With
/// `keep`, each row's statistics (as [`forward_values`]') for [`backward_values_bf16`].
pub fn forward_values_bf16(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[f32]>,
    s: Shape,
    scale: f32,
    keep: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    use crate::bf16::{PackedB, matmul};
    let (t, w, hd) = (s.time, s.width(), s.head_dim);
    let n = s.check(q, k, v, mask);
    let mut kept = vec![0.0f32; if keep { s.tasks() * t * 2 } else { 0 }];
    if n == 0 {
        return (Vec::new(), keep.then_some(kept));
    }
    // Written in full below (each head's columns of every row), so not zeroed first.
    let mut out: Vec<f32> = Vec::with_capacity(n);
    let (dst, kept_at) = (Shared(out.as_mut_ptr()), Shared(kept.as_mut_ptr()));
    let rows = QUERY_BLOCK.min(t);
    (0..s.tasks()).into_par_iter().for_each_init(
        || (vec![0.0f32; rows * t], vec![0.0f32; rows * hd], vec![0.0f32; 2 * rows]),
        |(scores, o, stats), task| {
            let at = s.offset(task);
            let kt = PackedB::from_strided_transposed(&k[at..], w, hd, t, scale);
            let vp = PackedB::from_strided_rows(&v[at..], w, t, hd, 1.0);
            for r0 in (0..t).step_by(rows) {
                let m = rows.min(t - r0);
                let (scores, o, stats) = (&mut scores[..m * t], &mut o[..m * hd], &mut stats[..2 * m]);
                matmul(&q[at + r0 * w..], m, w, &kt, scores, false);
                s.add_mask(scores, mask, task);
                exp_rows(scores, t, stats);
                matmul(scores, m, t, &vp, o, false);
                for (i, (row, st)) in o.chunks_exact(hd).zip(stats.chunks_exact(2)).enumerate() {
                    // SAFETY: row r0 + i < t of this task's head: its own hd columns of `out`.
                    let dst = unsafe { std::slice::from_raw_parts_mut(dst.at(at + (r0 + i) * w), hd) };
                    dst.iter_mut().zip(row).for_each(|(d, &x)| *d = x * st[1]);
                }
                if keep {
                    // SAFETY: rows r0.. of this task's statistics, inside `kept` (keep: tasks × t × 2).
                    unsafe { std::slice::from_raw_parts_mut(kept_at.at((task * t + r0) * 2), 2 * m) }
                        .copy_from_slice(stats);
                }
            }
        },
    );
    // SAFETY: every task wrote its head's columns of all rows of `out`.
    unsafe { out.set_len(n) };
    (out, keep.then_some(kept))
}

/// [`backward_values`] for [`forward_values_bf16`] (mixed precision in training, as autocast's
/// attention backward): its five products per head in bf16 with f32 sums, by blocks of
/// [`QUERY_BLOCK`] queries whose scores, probabilities and their gradients (`rows × time` each)
/// stay in cache. Per block: the scores again (the forward's product, so bit for bit its scores)
/// and `P` from the kept statistics; `dP = dO Vᵀ`; `dS = P ⊙ (dP − rowsum(dP ⊙ P))`; the
/// block's rows of `dQ = scale · dS K`; and the block's share of `dVᵀ += dOᵀ P` and
/// `dKᵀ += scale · Qᵀ dS`, whose right-hand sides (`P`, `dS`) are packed as they are, so no
/// `time × time` matrix is ever transposed. The softmax's backward and the statistics stay f32.
#[allow(clippy::too_many_arguments)]
pub fn backward_values_bf16(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[f32]>,
    stats: &[f32],
    d_out: &[f32],
    s: Shape,
    scale: f32,
    need: [bool; 3],
) -> [Option<Vec<f32>>; 3] {
    use crate::bf16::{PackedB, matmul};
    let (t, w, hd) = (s.time, s.width(), s.head_dim);
    let (n, grads, [dq, dk, dv]) = Grads::new(q, k, v, mask, stats, d_out, s, need);
    let need_ds = need[0] || need[1];
    let rows = QUERY_BLOCK.min(t);
    // `head_dim × rows` transposed copies of a block of `src` (dO or Q), for the left-hand side
    // of the `dVᵀ` and `dKᵀ` products.
    let transpose_block = |src: &[f32], at: usize, r0: usize, m: usize, out: &mut [f32]| {
        for i in 0..m {
            let row = &src[at + (r0 + i) * w..][..hd];
            for (c, &x) in row.iter().enumerate() {
                out[c * m + i] = x;
            }
        }
    };
    // `hd × t` (transposed) into this head's columns of a `[time, width]` gradient.
    let write_transposed = |g: Shared, at: usize, xt: &[f32]| {
        for r in 0..t {
            // SAFETY: row r < t of this task's head: its own hd columns of the gradient.
            let dst = unsafe { std::slice::from_raw_parts_mut(g.at(at + r * w), hd) };
            dst.iter_mut().enumerate().for_each(|(c, d)| *d = xt[c * t + r]);
        }
    };
    if n > 0 {
        (0..s.tasks()).into_par_iter().for_each_init(
            || Scratch::new(rows, t, hd),
            |b, task| {
                let at = s.offset(task);
                let stats = &stats[task * 2 * t..][..2 * t];
                let kt = PackedB::from_strided_transposed(&k[at..], w, hd, t, scale);
                let vt = need_ds.then(|| PackedB::from_strided_transposed(&v[at..], w, hd, t, 1.0));
                let ks = dq.map(|_| PackedB::from_strided_rows(&k[at..], w, t, hd, scale));
                for r0 in (0..t).step_by(rows) {
                    let m = rows.min(t - r0);
                    let (p, ds) = (&mut b.p[..m * t], &mut b.ds[..m * t]);
                    // The forward pass's probabilities again.
                    matmul(&q[at + r0 * w..], m, w, &kt, p, false);
                    s.add_mask(p, mask, task);
                    softmax_rows_again(p, t, &stats[2 * r0..][..2 * m]);
                    let first = r0 == 0;
                    if dv.is_some() {
                        transpose_block(d_out, at, r0, m, &mut b.lhs[..hd * m]);
                        let pb = PackedB::from_strided_rows(p, t, m, t, 1.0);
                        matmul(&b.lhs[..hd * m], hd, m, &pb, &mut b.dvt, !first);
                    }
                    let Some(vt) = &vt else { continue };
                    matmul(&d_out[at + r0 * w..], m, w, vt, ds, false);
                    softmax_backward_rows(ds, p, t);
                    if let (Some(dq), Some(ks)) = (dq, &ks) {
                        let blk = &mut b.dq[..m * hd];
                        matmul(ds, m, t, ks, blk, false);
                        for (i, row) in blk.chunks_exact(hd).enumerate() {
                            // SAFETY: row r0 + i < t of this task's head: its own hd columns.
                            unsafe { std::slice::from_raw_parts_mut(dq.at(at + (r0 + i) * w), hd) }
                                .copy_from_slice(row);
                        }
                    }
                    if dk.is_some() {
                        transpose_block(q, at, r0, m, &mut b.lhs[..hd * m]);
                        let db = PackedB::from_strided_rows(ds, t, m, t, scale);
                        matmul(&b.lhs[..hd * m], hd, m, &db, &mut b.dkt, !first);
                    }
                }
                if let Some(dv) = dv {
                    write_transposed(dv, at, &b.dvt);
                }
                if let Some(dk) = dk {
                    write_transposed(dk, at, &b.dkt);
                }
            },
        );
    }
    // SAFETY: every task wrote its head's columns of all rows of each asked-for gradient.
    unsafe { grads.written(n) }
}

/// The gradients a backward pass writes: those asked for (`need` = [q, k, v]), allocated but not
/// zeroed, since the per-head tasks write every value of them (each head's columns of every row).
struct Grads([Option<Vec<f32>>; 3]);

impl Grads {
    /// After checking the backward pass's inputs: the number of values in each of q, k, v, the
    /// gradients, and pointers to them that the tasks share.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn new(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        mask: Option<&[f32]>,
        stats: &[f32],
        d_out: &[f32],
        s: Shape,
        need: [bool; 3],
    ) -> (usize, Self, [Option<Shared>; 3]) {
        let n = s.check(q, k, v, mask);
        assert_eq!(d_out.len(), n, "an output gradient of {n} values");
        assert_eq!(stats.len(), s.tasks() * s.time * 2, "softmax statistics of {} heads × {} rows", s.tasks(), s.time);
        let mut grads: [Option<Vec<f32>>; 3] = need.map(|on| on.then(|| Vec::with_capacity(n)));
        let ptrs = grads.each_mut().map(|g| g.as_mut().map(|g| Shared(g.as_mut_ptr())));
        (n, Grads(grads), ptrs)
    }

    /// The gradients, their `n` values each marked written.
    ///
    /// # Safety
    /// Every value of every asked-for gradient has been written through the pointers.
    unsafe fn written(mut self, n: usize) -> [Option<Vec<f32>>; 3] {
        for g in self.0.iter_mut().flatten() {
            // SAFETY: the caller's guarantee; the capacity is n (`new`).
            unsafe { g.set_len(n) };
        }
        self.0
    }
}

/// The softmax's backward pass over rows of `t` scores, in place: `ds` holds `dP` and becomes
/// `dS = P ⊙ (dP − rowsum(dP ⊙ P))`.
fn softmax_backward_rows(ds: &mut [f32], p: &[f32], t: usize) {
    for (d, p) in ds.chunks_exact_mut(t).zip(p.chunks_exact(t)) {
        let dot = sum_by(d, p, |a, b| a * b);
        d.iter_mut().zip(p).for_each(|(d, p)| *d = p * (*d - dot));
    }
}

/// One thread's buffers for [`backward_values_bf16`]: a block's probabilities and score
/// gradients (`rows × time`), its `dQ` rows, a transposed block of dO or Q, and the head's `dVᵀ`
/// and `dKᵀ` (`head_dim × time`, accumulated over the blocks).
struct Scratch {
    p: Vec<f32>,
    ds: Vec<f32>,
    dq: Vec<f32>,
    lhs: Vec<f32>,
    dvt: Vec<f32>,
    dkt: Vec<f32>,
}

impl Scratch {
    fn new(rows: usize, t: usize, hd: usize) -> Self {
        let z = |n: usize| vec![0.0f32; n];
        Scratch { p: z(rows * t), ds: z(rows * t), dq: z(rows * hd), lhs: z(hd * rows), dvt: z(hd * t), dkt: z(hd * t) }
    }
}

/// The gradients of [`forward_values`]'s inputs from the output's gradient `d_out`, for those
/// asked for (`need` = [q, k, v]), given its `mask` and the softmax statistics it kept.
#[allow(clippy::too_many_arguments)]
pub fn backward_values(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[f32]>,
    stats: &[f32],
    d_out: &[f32],
    s: Shape,
    scale: f32,
    need: [bool; 3],
) -> [Option<Vec<f32>>; 3] {
    let (t, w, hd) = (s.time, s.width(), s.head_dim);
    // Each asked-for gradient is written in full by its per-head products (k = time > 0 where
    // n > 0).
    let (n, grads, [dq, dk, dv]) = Grads::new(q, k, v, mask, stats, d_out, s, need);
    let need_ds = need[0] || need[1];
    (0..s.tasks()).into_par_iter().for_each_init(
        // Buffers written in full before they are read (p by `scores`, ds by the dP product).
        || (Vec::<f32>::with_capacity(t * t), Vec::<f32>::with_capacity(if need_ds { t * t } else { 0 })),
        |(p, ds), task| {
            let o = s.offset(task);
            // The forward pass's probabilities again.
            // SAFETY: p has room for t × t values, which `scores` writes first.
            let p = unsafe { scores(q, k, mask, s, scale, task, p.as_mut_ptr()) };
            softmax_rows_again(p, t, &stats[task * 2 * t..][..2 * t]);
            let p = &*p;
            let none = gemm::Parallelism::None;
            // SAFETY: all views stay inside their slices (see forward_values); each task writes
            // its own head's columns of the gradients and its own buffer.
            unsafe {
                if let Some(dv) = dv {
                    mm(t, hd, t, dv.at(o), w, View::cols(p, 0, t), View::rows(d_out, o, w), 1.0, false, none);
                }
                if !need_ds {
                    return;
                }
                mm(t, t, hd, ds.as_mut_ptr(), t, View::rows(d_out, o, w), View::cols(v, o, w), 1.0, false, none);
            }
            // SAFETY: the product above wrote all t × t values of ds.
            let ds = unsafe { std::slice::from_raw_parts_mut(ds.as_mut_ptr(), t * t) };
            softmax_backward_rows(ds, p, t);
            unsafe {
                if let Some(dq) = dq {
                    mm(t, hd, t, dq.at(o), w, View::rows(ds, 0, t), View::rows(k, o, w), scale, false, none);
                }
                if let Some(dk) = dk {
                    mm(t, hd, t, dk.at(o), w, View::cols(ds, 0, t), View::rows(q, o, w), scale, false, none);
                }
            }
        },
    );
    // SAFETY: every task wrote its head's columns of all rows of each asked-for gradient.
    unsafe { grads.written(n) }
}

/// Multi-head self-attention of `q`, `k`, `v` (`[batch, time, heads × head_dim]`, float32 on
/// burn's CPU backend, see [`crate::supports`]) with scores scaled by `head_dim^-½`, and `mask`
/// (`batch × time` values, added to the scores of each key) where given. On the autodiff graph
/// it is one operation whose backward pass gives all three inputs their gradients.
///
/// With `bf16`, where the CPU has bf16 instructions ([`crate::bf16::native`]), the products run
/// in bf16 (mixed precision, as autocast's attention): [`forward_values_bf16`], and on the graph
/// [`backward_values_bf16`], whose recomputed scores are the forward's bit for bit.
///
/// # Panics
/// Where the inputs are not on the CPU backend, their shapes differ, or `heads` does not divide
/// their width.
pub fn attention(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    heads: usize,
    mask: Option<Vec<f32>>,
    bf16: bool,
) -> Tensor<3> {
    assert!(crate::supports(&q), "fused attention runs on the CPU backend's float32 tensors");
    let [batch, time, width] = q.dims();
    assert!(k.dims() == q.dims() && v.dims() == q.dims(), "q, k and v of one shape");
    assert!(heads > 0 && width % heads == 0, "{heads} heads do not divide a width of {width}");
    let shape = Shape { batch, time, heads, head_dim: width / heads };
    let scale = (shape.head_dim as f32).powf(-0.5);
    let op = Attention { shape, scale, mask: mask.map(Arc::new), bf16: bf16 && crate::bf16::native() };
    if q.device().is_autodiff() {
        on_graph(op, [q, k, v])
    } else {
        let [q, k, v] = [q, k, v].map(|t| contiguous(&crate::graph::flex(t)));
        let (out, _) = op.compute(&q, &k, &v, false);
        crate::graph::from_flex(out)
    }
}

#[derive(Debug, Clone)]
struct Attention {
    shape: Shape,
    scale: f32,
    mask: Option<Arc<Vec<f32>>>,
    /// Products in bf16 ([`forward_values_bf16`], [`backward_values_bf16`]).
    bf16: bool,
}

impl Attention {
    fn compute(&self, q: &FlexTensor, k: &FlexTensor, v: &FlexTensor, keep: bool) -> (FlexTensor, Option<Vec<f32>>) {
        let forward = if self.bf16 { forward_values_bf16 } else { forward_values };
        let (out, stats) = forward(values(q), values(k), values(v), self.mask(), self.shape, self.scale, keep);
        (tensor(out, dims(q)), stats)
    }

    fn mask(&self) -> Option<&[f32]> {
        self.mask.as_ref().map(|m| m.as_slice())
    }
}

/// What the backward pass reads: the inputs and the softmax statistics.
#[derive(Debug, Clone)]
struct Saved {
    op: Attention,
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    stats: Arc<Vec<f32>>,
}

impl Backward<Flex, 3> for Attention {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let s = ops.state;
        let d_out = contiguous(&grads.consume::<Flex>(&ops.node));
        let need = ops.parents.each_ref().map(Option::is_some);
        let backward = if s.op.bf16 { backward_values_bf16 } else { backward_values };
        let out = backward(
            values(&s.q),
            values(&s.k),
            values(&s.v),
            s.op.mask(),
            &s.stats,
            values(&d_out),
            s.op.shape,
            s.op.scale,
            need,
        );
        for (parent, grad) in ops.parents.into_iter().zip(out) {
            if let (Some(node), Some(grad)) = (parent, grad) {
                grads.register::<Flex>(node.id, tensor(grad, dims(&s.q)));
            }
        }
    }
}

impl GraphOp<3> for Attention {
    fn run<C: CheckpointStrategy>(self, inputs: [GraphTensor; 3]) -> GraphTensor {
        let [q, k, v] = inputs.each_ref().map(|t| contiguous(t.primitive()));
        let prep = self.clone().prepare::<C>(inputs.each_ref().map(|t| t.node())).compute_bound().stateful();
        match prep {
            OpsKind::Tracked(prep) => {
                let (out, stats) = self.compute(&q, &k, &v, true);
                let stats = Arc::new(stats.expect("kept statistics"));
                prep.finish(Saved { op: self, q, k, v, stats }, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(self.compute(&q, &k, &v, false).0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_diff, vals};
    use burn::tensor::{Distribution, TensorData, activation};

    /// Attention composed from burn's operations (the models' former path).
    fn reference(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize, mask: Option<&[f32]>) -> Tensor<3> {
        let [b, t, d] = q.dims();
        let hd = d / heads;
        let split = |y: Tensor<3>| y.reshape([b, t, heads, hd]).swap_dims(1, 2);
        let q = split(q) * (hd as f64).powf(-0.5);
        let mut scores = q.matmul(split(k).swap_dims(2, 3));
        if let Some(m) = mask {
            let m = Tensor::<4>::from_data(TensorData::new(m.to_vec(), [b, 1, 1, t]), &scores.device());
            scores = scores + m;
        }
        activation::softmax(scores, 3).matmul(split(v)).swap_dims(1, 2).reshape([b, t, d])
    }

    /// Key mask of sequences of lengths 7 and 4 (large negative values, as the models add).
    fn mask(t: usize) -> Vec<f32> {
        (0..2 * t).map(|i| if i % t < [7, 4][i / t] { 0.0 } else { -1e9 }).collect()
    }

    #[test]
    fn inference_equals_burns_composition() {
        let device = Device::flex();
        let x = || Tensor::<3>::random([2, 7, 24], Distribution::Normal(0.0, 1.0), &device);
        let (q, k, v) = (x(), x(), x());
        for m in [None, Some(mask(7))] {
            let got = vals(attention(q.clone(), k.clone(), v.clone(), 3, m.clone(), false));
            let want = vals(reference(q.clone(), k.clone(), v.clone(), 3, m.as_deref()));
            let diff = max_diff(&got, &want);
            assert!(diff < 2e-6, "{diff}");
        }
    }

    /// On the graph, for both checkpointing strategies: the value and every input's gradient
    /// equal those of burn's composition; only the tracked inputs get gradients.
    #[test]
    fn gradients_equal_burns_composition() {
        for device in [Device::flex().autodiff(), Device::flex().autodiff().gradient_checkpointing()] {
            let x = || Tensor::<3>::random([2, 7, 24], Distribution::Normal(0.0, 1.0), &device);
            let (q, k, v, r) = (x().require_grad(), x().require_grad(), x().require_grad(), x());
            let m = mask(7);
            let y = attention(q.clone(), k.clone(), v.clone(), 4, Some(m.clone()), false);
            let grads = (y.clone() * r.clone()).sum().backward();
            let y_ref = reference(q.clone(), k.clone(), v.clone(), 4, Some(&m));
            let grads_ref = (y_ref.clone() * r.clone()).sum().backward();
            assert!(max_diff(&vals(y), &vals(y_ref)) < 2e-6);
            for t in [&q, &k, &v] {
                let got = vals(t.grad(&grads).expect("a gradient"));
                let want = vals(t.grad(&grads_ref).expect("a gradient"));
                let diff = max_diff(&got, &want);
                assert!(diff < 1e-5, "{diff}");
                assert!(want.iter().any(|g| g.abs() > 1e-3), "gradients that can fail");
            }
            // Only k tracked: q and v get none, k the same gradient as before.
            let k2 = k.clone().detach().require_grad();
            let y = attention(q.clone().detach(), k2.clone(), v.clone().detach(), 4, Some(m.clone()), false);
            let grads2 = (y * r).sum().backward();
            let diff = max_diff(&vals(k2.grad(&grads2).unwrap()), &vals(k.grad(&grads).unwrap()));
            assert!(diff < 1e-6, "{diff}");
            let frozen = attention(q.detach(), k.detach(), v.detach(), 4, None, false);
            assert!(!frozen.is_require_grad());
        }
    }

    /// Keys masked out get exactly no weight: their values do not reach the output.
    #[test]
    fn masked_keys_do_not_contribute() {
        let device = Device::flex();
        let q = Tensor::<3>::random([2, 7, 8], Distribution::Normal(0.0, 1.0), &device);
        let k = Tensor::<3>::random([2, 7, 8], Distribution::Normal(0.0, 1.0), &device);
        let v = Tensor::<3>::random([2, 7, 8], Distribution::Normal(0.0, 1.0), &device);
        let mut v2 = vals(v.clone());
        // Sequence 1 has 4 valid keys: change the values of keys 4..7.
        for v in &mut v2[7 * 8 + 4 * 8..] {
            *v += 100.0;
        }
        let v2 = Tensor::<3>::from_data(TensorData::new(v2, [2, 7, 8]), &device);
        for bf16 in [false, true] {
            let a = vals(attention(q.clone(), k.clone(), v.clone(), 2, Some(mask(7)), bf16));
            let b = vals(attention(q.clone(), k.clone(), v2.clone(), 2, Some(mask(7)), bf16));
            assert_eq!(a, b);
        }
    }

    /// The bf16 products follow their definition, computed here in f64: scores from Q and
    /// `scale · K` rounded to bf16, `exp(s − max)` rounded to bf16 times V rounded, divided by
    /// `Σ exp(s − max)`. Lengths past one block of queries and not a multiple of it, an odd
    /// head size (a half-filled pair of the packed keys), masked keys, two sequences.
    #[test]
    fn bf16_products_follow_their_definition() {
        let r = |x: f32| crate::bf16::from_bf16(crate::bf16::to_bf16(x));
        for (t, heads, hd) in [(77, 3, 5), (QUERY_BLOCK + 1, 2, 8)] {
            let (b, w) = (2, heads * hd);
            let mut seed = 0x9e37_79b9_u64;
            let mut x = || {
                (0..b * t * w)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
                    })
                    .collect::<Vec<f32>>()
            };
            let (q, k, v) = (x(), x(), x());
            let m: Vec<f32> = (0..b * t).map(|i| if i % t < [t, t / 2][i / t] { 0.0 } else { -1e9 }).collect();
            let s = Shape { batch: b, time: t, heads, head_dim: hd };
            let scale = (hd as f32).powf(-0.5);
            let (got, kept) = forward_values_bf16(&q, &k, &v, Some(&m), s, scale, true);
            assert_eq!(forward_values_bf16(&q, &k, &v, Some(&m), s, scale, false), (got.clone(), None));
            let kept = kept.expect("statistics");
            let at = |x: &[f32], bi: usize, i: usize, h: usize, d: usize| x[(bi * t + i) * w + h * hd + d];
            let mut worst = 0.0f64;
            for task in 0..b * heads {
                let (bi, h) = (task / heads, task % heads);
                for i in 0..t {
                    let scores: Vec<f64> = (0..t)
                        .map(|j| {
                            let dot: f64 = (0..hd)
                                .map(|d| r(at(&q, bi, i, h, d)) as f64 * r(at(&k, bi, j, h, d) * scale) as f64)
                                .sum();
                            dot + m[bi * t + j] as f64
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    let st = &kept[(task * t + i) * 2..][..2];
                    worst = worst.max((st[0] as f64 - max).abs()).max((st[1] as f64 * sum - 1.0).abs());
                    for d in 0..hd {
                        let want: f64 =
                            (0..t).map(|j| r(e[j] as f32) as f64 * r(at(&v, bi, j, h, d)) as f64).sum::<f64>() / sum;
                        worst = worst.max((at(&got, bi, i, h, d) as f64 - want).abs());
                    }
                }
            }
            // Sums in f32 (2.5e-7 here on each kernel); a wrong scale, mask, rounding or
            // normalisation is off by far more.
            assert!(worst < 5e-6, "t = {t}, head size {hd}: {worst}");
            // And within bf16's error of the f32 attention.
            let (f32_out, _) = forward_values(&q, &k, &v, Some(&m), s, scale, false);
            let diff = f32_out.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(diff > 0.0 && diff < 2e-2, "{diff}");
        }
        // No frames: no output (and no block of zero queries).
        let empty = Shape { batch: 1, time: 0, heads: 2, head_dim: 4 };
        assert!(forward_values_bf16(&[], &[], &[], None, empty, 0.5, false).0.is_empty());
        let [dq, dk, dv] = backward_values_bf16(&[], &[], &[], None, &[], &[], empty, 0.5, [true; 3]);
        assert!([dq, dk, dv].iter().all(|g| g.as_ref().is_some_and(Vec::is_empty)));
    }

    /// The bf16 backward pass follows its definition, computed here in f64 from the same
    /// roundings: scores from bf16 Q and `scale · K` (so `P` as the forward pass had it),
    /// `dP = dO Vᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, `dQ = dS (scale · K)`, `dV = Pᵀ dO`,
    /// `dK = (scale · dS)ᵀ Q`, each product's operands rounded to bf16. Lengths past one block
    /// of queries, an odd head size, masked keys, two sequences; only the asked-for gradients.
    #[test]
    fn bf16_backward_follows_its_definition() {
        let r = |x: f64| crate::bf16::from_bf16(crate::bf16::to_bf16(x as f32)) as f64;
        for (t, heads, hd) in [(77, 3, 5), (2 * QUERY_BLOCK + 3, 2, 8)] {
            let (b, w) = (2, heads * hd);
            let mut seed = 0x2545_f491_u64;
            let mut x = || {
                (0..b * t * w)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
                    })
                    .collect::<Vec<f32>>()
            };
            let (q, k, v, d_out) = (x(), x(), x(), x());
            let m: Vec<f32> = (0..b * t).map(|i| if i % t < [t, t / 2][i / t] { 0.0 } else { -1e9 }).collect();
            let s = Shape { batch: b, time: t, heads, head_dim: hd };
            let scale = (hd as f32).powf(-0.5);
            let (_, stats) = forward_values_bf16(&q, &k, &v, Some(&m), s, scale, true);
            let stats = stats.expect("statistics");
            let got = backward_values_bf16(&q, &k, &v, Some(&m), &stats, &d_out, s, scale, [true; 3]);
            let got = got.map(|g| g.expect("asked for"));
            let at = |x: &[f32], bi: usize, i: usize, h: usize, d: usize| x[(bi * t + i) * w + h * hd + d] as f64;
            let mut want = [vec![0.0f64; b * t * w], vec![0.0f64; b * t * w], vec![0.0f64; b * t * w]];
            for task in 0..b * heads {
                let (bi, h) = (task / heads, task % heads);
                let sk = |j: usize, d: usize| r(at(&k, bi, j, h, d) * scale as f64);
                for i in 0..t {
                    let scores: Vec<f64> = (0..t)
                        .map(|j| (0..hd).map(|d| r(at(&q, bi, i, h, d)) * sk(j, d)).sum::<f64>() + m[bi * t + j] as f64)
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    let p: Vec<f64> = e.iter().map(|e| e / sum).collect();
                    let dp: Vec<f64> = (0..t)
                        .map(|j| (0..hd).map(|d| r(at(&d_out, bi, i, h, d)) * r(at(&v, bi, j, h, d))).sum())
                        .collect();
                    let dot: f64 = dp.iter().zip(&p).map(|(a, b)| a * b).sum();
                    let ds: Vec<f64> = dp.iter().zip(&p).map(|(dp, p)| p * (dp - dot)).collect();
                    let idx = |j: usize, d: usize| (bi * t + j) * w + h * hd + d;
                    for j in 0..t {
                        for d in 0..hd {
                            want[0][idx(i, d)] += r(ds[j]) * sk(j, d);
                            want[1][idx(j, d)] += r(ds[j] * scale as f64) * r(at(&q, bi, i, h, d));
                            want[2][idx(j, d)] += r(p[j]) * r(at(&d_out, bi, i, h, d));
                        }
                    }
                }
            }
            let f32_stats = forward_values(&q, &k, &v, Some(&m), s, scale, true).1.expect("statistics");
            let f32_grads = backward_values(&q, &k, &v, Some(&m), &f32_stats, &d_out, s, scale, [true; 3]);
            for (name, ((g, want), f)) in ["dQ", "dK", "dV"].iter().zip(got.iter().zip(&want).zip(f32_grads)) {
                let scale = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
                let worst = g.iter().zip(want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0f64, f64::max) / scale;
                println!("{name} t = {t}: {worst:.2e} of its scale from the definition");
                assert!(worst < 2e-4, "{name}, t = {t}: {worst} of its scale from its definition");
                // Within bf16's error of the f32 backward pass, and not its values.
                let f = f.expect("asked for");
                let d = g.iter().zip(&f).map(|(a, b)| (a - b).abs() as f64).fold(0.0f64, f64::max) / scale;
                assert!(d > 1e-5 && d < 3e-2, "{name}, t = {t}: {d} of its scale from f32's");
            }
            // Only dK asked for: the same values, and no others.
            let only_k = backward_values_bf16(&q, &k, &v, Some(&m), &stats, &d_out, s, scale, [false, true, false]);
            assert!(only_k[0].is_none() && only_k[2].is_none());
            assert_eq!(only_k[1].as_ref(), Some(&got[1]));
        }
    }

    /// `bf16` runs the bf16 products where the CPU has bf16 instructions, off the graph and on
    /// it (there its gradients are [`backward_values_bf16`]'s), and the f32 ones elsewhere.
    #[test]
    fn bf16_products_run_where_native() {
        for device in [Device::flex(), Device::flex().autodiff()] {
            let x = || Tensor::<3>::random([2, 7, 24], Distribution::Normal(0.0, 1.0), &device);
            let tracked = || if device.is_autodiff() { x().require_grad() } else { x() };
            let (q, k, v) = (tracked(), tracked(), tracked());
            let d_out = x();
            let f32_out = vals(attention(q.clone(), k.clone(), v.clone(), 3, Some(mask(7)), false));
            let y = attention(q.clone(), k.clone(), v.clone(), 3, Some(mask(7)), true);
            let got = vals(y.clone());
            let s = Shape { batch: 2, time: 7, heads: 3, head_dim: 8 };
            let scale = 8f32.powf(-0.5);
            let [qv, kv, vv] = [&q, &k, &v].map(|t| vals(t.clone()));
            let (bf16_out, stats) = forward_values_bf16(&qv, &kv, &vv, Some(&mask(7)), s, scale, true);
            let native = crate::bf16::native();
            assert_eq!(got, if native { bf16_out } else { f32_out });
            if device.is_autodiff() {
                let grads = (y * d_out.clone()).sum().backward();
                let want = if native {
                    backward_values_bf16(
                        &qv,
                        &kv,
                        &vv,
                        Some(&mask(7)),
                        &stats.unwrap(),
                        &vals(d_out),
                        s,
                        scale,
                        [true; 3],
                    )
                } else {
                    let stats = forward_values(&qv, &kv, &vv, Some(&mask(7)), s, scale, true).1.unwrap();
                    backward_values(&qv, &kv, &vv, Some(&mask(7)), &stats, &vals(d_out), s, scale, [true; 3])
                };
                for (t, want) in [&q, &k, &v].into_iter().zip(want) {
                    assert_eq!(vals(t.grad(&grads).expect("a gradient")), want.expect("asked for"));
                }
            }
        }
    }

    /// The kept statistics are each row's maximum score and `1 / Σ exp(score − max)` (checked
    /// against f64 from the scores), two values per row and nothing of size time².
    #[test]
    fn only_softmax_statistics_are_kept() {
        let device = Device::flex();
        let (b, t, heads, hd) = (2, 7, 2, 4);
        let x = || vals(Tensor::<3>::random([b, t, heads * hd], Distribution::Normal(0.0, 1.0), &device));
        let (q, k, v) = (x(), x(), x());
        let m = mask(t);
        let s = Shape { batch: b, time: t, heads, head_dim: hd };
        let scale = (hd as f32).powf(-0.5);
        let (out, stats) = forward_values(&q, &k, &v, Some(&m), s, scale, true);
        let stats = stats.expect("statistics");
        assert_eq!(stats.len(), b * heads * t * 2);
        assert_eq!(forward_values(&q, &k, &v, Some(&m), s, scale, false), (out, None));
        for task in 0..b * heads {
            let (bi, h) = (task / heads, task % heads);
            for i in 0..t {
                let score = |j: usize| {
                    let dot: f64 = (0..hd)
                        .map(|d| {
                            q[(bi * t + i) * heads * hd + h * hd + d] as f64
                                * k[(bi * t + j) * heads * hd + h * hd + d] as f64
                        })
                        .sum();
                    dot * scale as f64 + m[bi * t + j] as f64
                };
                let max = (0..t).map(score).fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = (0..t).map(|j| (score(j) - max).exp()).sum();
                let (got_max, got_inv) = (stats[(task * t + i) * 2] as f64, stats[(task * t + i) * 2 + 1] as f64);
                assert!(
                    (got_max - max).abs() < 1e-5 * max.abs().max(1.0),
                    "row {i} of head {task}: max {got_max} vs {max}"
                );
                assert!((got_inv - 1.0 / sum).abs() < 1e-5, "row {i} of head {task}: 1/Σ {got_inv} vs {}", 1.0 / sum);
            }
        }
    }
}
