//! Gradient clipping by the global norm over every parameter, as PyTorch's `clip_grad_norm_`
//! (and so fairseq and transformers' Trainer) does. burn's optimiser option clips each tensor
//! by its own norm, which is a different method.

use std::collections::HashSet;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.powf_scalar(2.0).sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + s,
                None => s,
            });
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f32,
    seen: HashSet<ParamId>,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        // A parameter shared by two modules is visited twice but scaled once.
        if self.seen.insert(param.id)
            && let Some(g) = self.grads.remove::<D>(param.id)
        {
            self.grads.register(param.id, g * self.factor);
        }
    }
}

/// The global gradient norm; when `max_norm` is given and exceeded, every gradient is scaled
/// by `max_norm / (norm + 1e-6)` as PyTorch does.
pub fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: Option<f32>) -> f32 {
    let mut v = SquaredNorm { grads, total: None };
    model.visit(&mut v);
    let norm = v.total.map(|t| t.into_scalar::<f32>().sqrt()).unwrap_or(0.0);
    if let Some(max) = max_norm
        && norm > max
    {
        let mut s = Scale { grads, factor: max / (norm + 1e-6), seen: HashSet::new() };
        model.visit(&mut s);
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};

    #[test]
    fn clips_the_norm_over_all_parameters_together() {
        let device = Device::flex().autodiff();
        let layer: Linear = LinearConfig::new(3, 2).init(&device);
        let x = Tensor::<2>::from_floats([[1.0, -2.0, 3.0]], &device);
        let loss = (layer.forward(x) * 10.0).sum();
        let mut grads = GradientsParams::from_grads(loss.backward(), &layer);
        let w = layer.weight.id;
        let b = layer.bias.as_ref().unwrap().id;
        let norm_of = |g: &GradientsParams| {
            let a: f32 = g.get::<2>(w).unwrap().powf_scalar(2.0).sum().into_scalar();
            let c: f32 = g.get::<1>(b).unwrap().powf_scalar(2.0).sum().into_scalar();
            (a + c).sqrt()
        };
        // d/dW = 10·x per output (2 × 14·100), d/db = 10 per output: √(2·1400 + 200) = √3000.
        let before = norm_of(&grads);
        assert!((before - 3000f32.sqrt()).abs() < 1e-3, "{before}");
        let reported = clip_global_norm(&layer, &mut grads, Some(1.0));
        assert!((reported - before).abs() < 1e-3);
        assert!((norm_of(&grads) - 1.0).abs() < 1e-4, "clipped to the max norm");
        // Directions are kept: bias gradient / weight gradient ratio unchanged.
        let bias: Vec<f32> = grads.get::<1>(b).unwrap().into_data().try_to_vec().unwrap();
        assert!((bias[0] - 10.0 / 3000f32.sqrt()).abs() < 1e-4, "{bias:?}");
        let unclipped = clip_global_norm(&layer, &mut grads, Some(5.0));
        assert!((unclipped - 1.0).abs() < 1e-4 && (norm_of(&grads) - 1.0).abs() < 1e-4);
    }
}
