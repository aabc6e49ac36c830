//! The optimiser of every training loop: burn's AdamW, with the update of float32 parameters on
//! the CPU fused into one parallel pass ([`speechtune_kernels::optim`]). Same arithmetic, same
//! state (burn's `AdamWState`), so checkpoints and resumption are unchanged; other devices and
//! precisions take burn's own update.

use burn::optim::{AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, LearningRate, ModuleOptimizer, Optimizer};
use burn::prelude::*;
use speechtune_kernels::optim as fused;

/// AdamW with β = (0.9, 0.999), the given ε and decoupled weight decay.
pub fn adamw(epsilon: f32, weight_decay: f32) -> ModuleOptimizer {
    let (beta_1, beta_2) = (0.9, 0.999);
    let burn = AdamWConfig::new()
        .with_beta_1(beta_1)
        .with_beta_2(beta_2)
        .with_epsilon(epsilon)
        .with_weight_decay(weight_decay)
        .build();
    ModuleOptimizer::from(FusedAdamW { burn, beta_1, beta_2, epsilon, weight_decay })
}

#[derive(Clone)]
struct FusedAdamW {
    /// The same optimiser for tensors the fused update does not take.
    burn: AdamW,
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let fusable = fused::applies(&tensor)
            && fused::applies(&grad)
            && state.as_ref().is_none_or(|s| {
                let m = &s.momentum;
                m.max_moment_2.is_none() && fused::applies(&m.moment_1) && fused::applies(&m.moment_2)
            });
        if !fusable {
            return self.burn.step(lr, tensor, grad, state);
        }
        let time = state.as_ref().map_or(1, |s| s.momentum.time + 1);
        let step = fused::AdamW {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
            lr,
            time,
        };
        let moments = state.map(|s| (s.momentum.moment_1, s.momentum.moment_2));
        let (tensor, m, v) = fused::adamw(tensor, grad, moments, &step);
        (tensor, Some(AdamWState::new(AdaptiveMomentumState::new(time, m, v))))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        AdamW::to_device(state, device)
    }
}
