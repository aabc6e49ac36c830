use std::sync::Arc;

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use speechtune_kernels::Bf16Weight;

use crate::lora::LoraLayer;
use crate::mask::MaskLayer;

/// Every projection a PEFT method may target: the pretrained linear layer and the method
/// layers attached to it. `name` is the module's path in the checkpoint (relative to the base
/// model), used for target matching and for naming saved adapter weights.
#[derive(Module, Debug)]
pub struct Proj {
    pub base: Linear,
    pub lora: Option<LoraLayer>,
    /// S3-Router binary mask over the base weight.
    pub mask: Option<MaskLayer>,
    pub name: String,
    /// The frozen weight in bf16 for [`Proj::use_bf16`]'s products; not saved (rebuilt from
    /// `base.weight`).
    #[module(skip)]
    pub bf16: Option<Arc<Bf16Weight>>,
}

impl Proj {
    pub fn new(base: Linear, name: impl Into<String>) -> Self {
        Self { base, lora: None, mask: None, name: name.into(), bf16: None }
    }

    pub fn d_in(&self) -> usize {
        self.base.weight.dims()[0]
    }

    pub fn d_out(&self) -> usize {
        self.base.weight.dims()[1]
    }

    /// For training through this projection while its weight stays frozen: a widening layer
    /// (`d_out > d_in`, the feed-forward's first) gets its weight stored as `[out, in]` rows and
    /// seen as `[in, out]` (same values, same shape). The backward pass's `dY · Wᵀ` then reads
    /// contiguous rows: with the `[in, out]` storage `Wᵀ` is strided with 3072-long columns,
    /// which makes that product 1.8× slower on the CPU (bench/README). Inference keeps
    /// `[in, out]`, whose forward product is the faster one. Trainable and masked weights are
    /// left alone (they are replaced or recomputed each step).
    pub fn relayout_for_backward(&mut self) {
        let w = &self.base.weight;
        if self.d_out() <= self.d_in() || self.mask.is_some() || self.bf16.is_some() || w.val().is_require_grad() {
            return;
        }
        let device = w.device();
        self.base.weight =
            self.base.weight.clone().map(|t| Tensor::from_data(t.transpose().into_data(), &device).transpose());
    }

    /// Mixed precision: the base product `x · W` in bf16 with f32 sums (on the CPU backend,
    /// [`speechtune_kernels::linear`]), forward and, on the autodiff graph, backward — where the
    /// weight is frozen and unmasked (a trained or masked weight changes every step and stays
    /// f32, as do the method layers and the bias). Returns whether this projection switched.
    ///
    /// The switched weight's values live only in its bf16 packing: `base.weight` becomes a
    /// placeholder of the same shape, id and gradient flag, a bf16 zero broadcast to `[d_in,
    /// d_out]` (no storage of its own), so a frozen weight costs its packings (2 bytes per value
    /// each; training adds the backward pass's) instead of 4 bytes plus them. Readers of the
    /// values get them with [`Proj::weight_f32`]; [`Proj::use_f32`] stores them as f32 again, and
    /// a merge works from them. Call it again after putting a new f32 `base.weight` in place.
    pub fn use_bf16(&mut self) -> bool {
        let w = self.base.weight.val();
        let eligible = self.mask.is_none() && !w.is_require_grad() && w.device().inner() == Device::flex();
        if !eligible {
            // (Switched, then unfrozen or masked: the values back from the packing.)
            self.use_f32();
            return false;
        }
        // (A float32 `base.weight` beside a packing was put there since: packed anew.)
        if self.bf16.is_none() || w.dtype() == DType::F32 {
            let [d_in, d_out] = w.dims();
            self.bf16 = Some(Arc::new(Bf16Weight::from_tensor(w)));
            self.base.weight = self
                .base
                .weight
                .clone()
                .map(|t| Tensor::<2>::zeros([1, 1], &t.device()).cast(DType::BF16).expand([d_in, d_out]));
        }
        true
    }

    /// Back to f32 products, with the weight's values stored as f32 again (after
    /// [`Proj::use_bf16`] the bf16 ones: what was dropped is not recovered).
    pub fn use_f32(&mut self) {
        if self.bf16.is_some() {
            // (On the placeholder's device, with its gradient flag.)
            let w = self.weight_f32();
            self.base.weight = self.base.weight.clone().map(|t| if t.is_require_grad() { w.require_grad() } else { w });
            self.bf16 = None;
        } else if self.base.weight.val().dtype() != DType::F32 {
            self.base.weight = self.base.weight.clone().map(|t| t.cast(DType::F32));
        }
    }

    /// True where neither weight nor bias trains and the weight is float32: the base product
    /// then runs as [`speechtune_kernels::frozen_linear`] on the CPU.
    fn frozen_f32(&self) -> bool {
        let w = self.base.weight.val();
        w.dtype() == DType::F32
            && !w.is_require_grad()
            && !self.base.bias.as_ref().is_some_and(|b| b.val().is_require_grad())
    }

    /// True where [`Proj::forward`] of `x` runs its base product as
    /// [`speechtune_kernels::dense::linear`]: a float32 weight that trains, on the CPU's autodiff
    /// graph, with no mask or bf16 packing.
    fn dense_on_graph<const D: usize>(&self, x: &Tensor<D>) -> bool {
        self.mask.is_none()
            && self.bf16.is_none()
            && !self.frozen_f32()
            && speechtune_kernels::supports(x)
            && speechtune_kernels::supports(&self.base.weight.val())
            && x.device().is_autodiff()
    }

    /// `forward(f(z))` for an activation `f` (`act`: `f` and `f` with its slope, see
    /// [`speechtune_kernels::rowwise::activation`]): where the product is
    /// [`speechtune_kernels::dense::linear`] and no LoRA update reads the activation, one
    /// operation that keeps only `z` ([`speechtune_kernels::dense::linear_after`]); else
    /// `forward(activate(z))`.
    pub fn forward_after<const D: usize>(
        &self,
        z: Tensor<D>,
        act: (speechtune_kernels::rowwise::Plain, speechtune_kernels::rowwise::WithSlope),
        activate: impl FnOnce(Tensor<D>) -> Tensor<D>,
    ) -> Tensor<D> {
        if self.lora.is_none() && self.dense_on_graph(&z) {
            let b = self.base.bias.as_ref().map(|b| b.val());
            return speechtune_kernels::dense::linear_after(z, act, self.base.weight.val(), b);
        }
        self.forward(activate(z))
    }

    /// The weight's values as f32: `base.weight`, or after [`Proj::use_bf16`] the packing's bf16
    /// values (`base.weight` is then a placeholder), on `base.weight`'s device.
    pub fn weight_f32(&self) -> Tensor<2> {
        let w = self.base.weight.val();
        match &self.bf16 {
            Some(packed) => {
                let values = TensorData::new(packed.values(), [packed.d_in(), packed.d_out()]);
                Tensor::from_data(values, &w.device())
            }
            None if w.dtype() == DType::F32 => w,
            None => w.cast(DType::F32),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if let Some(lora) = &self.lora
            && self.mask.is_none()
            && (self.bf16.is_some() || self.frozen_f32())
            && !self.base.bias.as_ref().is_some_and(|b| b.val().is_require_grad())
            && speechtune_kernels::supports(&x)
            && x.device().is_autodiff()
        {
            // Training on the CPU: base product (f32, or bf16 under mixed precision), bias, the
            // update's dropout and the update as one operation.
            let bias = self.base.bias.as_ref().map(|b| b.val());
            let update = lora.fused_update(&x.device());
            return match &self.bf16 {
                Some(w) => speechtune_kernels::dense::bf16_linear_lora(x, w, bias, update),
                None => speechtune_kernels::dense::frozen_linear_lora(x, self.base.weight.val(), bias, update),
            };
        }
        let base = match (&self.mask, &self.bf16) {
            (None, Some(w)) if speechtune_kernels::supports(&x) => {
                let y = speechtune_kernels::linear(x.clone(), w);
                match &self.base.bias {
                    Some(b) => y + b.val().unsqueeze::<D>(),
                    None => y,
                }
            }
            (None, None) if self.frozen_f32() && speechtune_kernels::supports(&x) => speechtune_kernels::frozen_linear(
                x.clone(),
                self.base.weight.val(),
                self.base.bias.as_ref().map(|b| b.val()),
            ),
            (None, None) if self.dense_on_graph(&x) => speechtune_kernels::dense::linear(
                x.clone(),
                self.base.weight.val(),
                self.base.bias.as_ref().map(|b| b.val()),
            ),
            (None, None) => self.base.forward(x.clone()),
            (None, Some(_)) => {
                // Not the kernel's input (another device or dtype): the bf16 values in x's dtype.
                let y = x.clone().matmul(self.weight_f32().cast(x.dtype()).unsqueeze::<D>());
                match &self.base.bias {
                    Some(b) => y + b.val().unsqueeze::<D>(),
                    None => y,
                }
            }
            (Some(m), _) => {
                let w = (self.weight_f32() * m.mask()).unsqueeze::<D>();
                let y = x.clone().matmul(w);
                match &self.base.bias {
                    Some(b) => y + b.val().unsqueeze::<D>(),
                    None => y,
                }
            }
        };
        match &self.lora {
            None => base,
            Some(lora) => base + lora.forward(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::nn::Linear;
    use burn::prelude::*;
    use burn::tensor::{DType, Distribution, TensorData};

    use super::Proj;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
    }

    fn proj(d_in: usize, d_out: usize, device: &Device) -> Proj {
        let w = Tensor::<2>::random([d_in, d_out], Distribution::Normal(0.0, 1.0), device);
        let b = Tensor::<1>::random([d_out], Distribution::Normal(0.0, 1.0), device);
        Proj::new(Linear { weight: Param::from_tensor(w), bias: Some(Param::from_tensor(b)) }, "p").no_grad()
    }

    /// Output and input gradient of `p` at `x` (tracked) under the upstream gradient `r`.
    fn output_and_grad(p: &Proj, x: &TensorData, r: &Tensor<3>, device: &Device) -> (Vec<f32>, Vec<f32>) {
        let x = Tensor::<3>::from_data(x.clone(), device).require_grad();
        let y = p.forward(x.clone());
        let grads = (y.clone() * r.clone()).sum().backward();
        (values(y), values(x.grad(&grads).unwrap()))
    }

    /// The relayout changes the storage, never the values: same weight, output and input
    /// gradient; the weight stays frozen under the same parameter id; a trainable projection
    /// keeps its weight as it was, still trainable.
    #[test]
    fn relayout_for_backward_changes_no_value() {
        let device = Device::flex().autodiff();
        let x = Tensor::<3>::random([2, 5, 24], Distribution::Normal(0.0, 1.0), &device).into_data();
        let mut wide = proj(24, 96, &device);
        let r = Tensor::<3>::random([2, 5, 96], Distribution::Normal(0.0, 1.0), &device);
        let (weight, id) = (values(wide.base.weight.val()), wide.base.weight.id);
        let before = output_and_grad(&wide, &x, &r, &device);
        wide.relayout_for_backward();
        assert_eq!(values(wide.base.weight.val()), weight);
        assert_eq!(wide.base.weight.id, id);
        assert!(!wide.base.weight.val().is_require_grad());
        assert_eq!(wide.base.weight.dims(), [24, 96]);
        let after = output_and_grad(&wide, &x, &r, &device);
        for (a, b) in before.0.iter().chain(&before.1).zip(after.0.iter().chain(&after.1)) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
        }

        let mut trainable = proj(24, 96, &device);
        trainable.base.weight = trainable.base.weight.set_require_grad(true);
        let w = values(trainable.base.weight.val());
        trainable.relayout_for_backward();
        assert!(trainable.base.weight.val().is_require_grad(), "a trained weight stays trainable");
        assert_eq!(values(trainable.base.weight.val()), w);
    }

    /// bf16 products: the output and the input gradient within bf16 rounding of f32's; only
    /// a frozen, unmasked weight switches, and it keeps only its bf16 values (stored as bf16,
    /// same id); back to f32 with those values.
    #[test]
    fn bf16_products_follow_f32_within_rounding() {
        use speechtune_kernels::bf16::{from_bf16, to_bf16};
        let device = Device::flex().autodiff();
        let x = Tensor::<3>::random([2, 5, 24], Distribution::Normal(0.0, 1.0), &device).into_data();
        let r = Tensor::<3>::random([2, 5, 40], Distribution::Normal(0.0, 1.0), &device);
        let mut p = proj(24, 40, &device);
        let f32_out = output_and_grad(&p, &x, &r, &device);
        let (w, id) = (values(p.base.weight.val()), p.base.weight.id);
        assert!(p.use_bf16());
        assert_eq!(p.base.weight.val().dtype(), DType::BF16, "the f32 copy is dropped");
        assert_eq!(p.base.weight.id, id);
        assert_eq!(p.base.weight.dims(), [24, 40]);
        let placeholder = p.base.weight.val().inner().try_into_primitive::<burn::backend::Flex>().unwrap();
        assert_eq!(placeholder.layout().strides(), [0, 0], "no storage beside the packing");
        let rounded: Vec<f32> = w.iter().map(|&v| from_bf16(to_bf16(v))).collect();
        assert_ne!(rounded, w);
        assert_eq!(values(p.weight_f32()), rounded);
        let bf16_out = output_and_grad(&p, &x, &r, &device);
        // Inputs rounded to 8 significant bits: relative error ~2^-9 per term, over 24 (40) terms.
        let scale = |v: &[f32]| v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        for (f, b) in [(&f32_out.0, &bf16_out.0), (&f32_out.1, &bf16_out.1)] {
            let diff = f.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(diff > 0.0 && diff < 0.02 * scale(f), "{diff} vs scale {}", scale(f));
        }
        p.use_f32();
        assert_eq!(p.base.weight.val().dtype(), DType::F32);
        assert_eq!(values(p.base.weight.val()), rounded, "back to f32 with the bf16 values");
        let mut same = proj(24, 40, &device);
        same.base.weight = Param::from_tensor(Tensor::from_data(TensorData::new(rounded, [24, 40]), &device));
        same.base.bias = p.base.bias.clone();
        assert_eq!(output_and_grad(&p, &x, &r, &device), output_and_grad(&same, &x, &r, &device));
        assert_ne!(output_and_grad(&p, &x, &r, &device), f32_out);

        let mut trainable = proj(24, 40, &device);
        trainable.base.weight = trainable.base.weight.set_require_grad(true);
        assert!(!trainable.use_bf16(), "a trained weight stays f32");
        // A switched weight that trains since goes back to f32 and still runs.
        assert!(p.use_bf16());
        p.base.weight = p.base.weight.clone().set_require_grad(true);
        assert!(!p.use_bf16());
        assert_eq!(p.base.weight.val().dtype(), DType::F32);
        assert_eq!(output_and_grad(&p, &x, &r, &device).0.len(), 2 * 5 * 40);
    }
}
