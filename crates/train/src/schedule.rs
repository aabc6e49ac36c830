use serde::{Deserialize, Serialize};

/// Learning-rate schedules: linear warmup then linear or cosine decay to zero, fairseq's
/// polynomial decay (warmup, then `(1 - progress)^power` down to `end_lr`; wav2vec 2.0
/// pre-training uses power 1), or fairseq's tri-stage (warmup, hold, exponential decay to
/// `final_lr_scale`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    Linear {
        warmup_steps: usize,
    },
    Cosine {
        warmup_steps: usize,
    },
    Polynomial {
        warmup_steps: usize,
        #[serde(default = "one")]
        power: f64,
        #[serde(default)]
        end_lr: f64,
    },
    TriStage {
        warmup_ratio: f64,
        hold_ratio: f64,
        decay_ratio: f64,
        init_lr_scale: f64,
        final_lr_scale: f64,
    },
}

fn one() -> f64 {
    1.0
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::Linear { warmup_steps: 0 }
    }
}

impl Schedule {
    /// Learning rate at `step` (0-based) of `total`, for peak rate `peak`.
    pub fn lr(&self, peak: f64, step: usize, total: usize) -> f64 {
        let (s, n) = (step as f64, total.max(1) as f64);
        match *self {
            Schedule::Linear { warmup_steps: w }
            | Schedule::Cosine { warmup_steps: w }
            | Schedule::Polynomial { warmup_steps: w, .. }
                if step < w =>
            {
                peak * (s + 1.0) / w as f64
            }
            Schedule::Polynomial { warmup_steps: w, power, end_lr } => {
                let left = ((n - s) / (n - w as f64).max(1.0)).clamp(0.0, 1.0);
                end_lr + (peak - end_lr) * left.powf(power)
            }
            Schedule::Linear { warmup_steps: w } => peak * ((n - s) / (n - w as f64).max(1.0)).clamp(0.0, 1.0),
            Schedule::Cosine { warmup_steps: w } => {
                let p = ((s - w as f64) / (n - w as f64).max(1.0)).clamp(0.0, 1.0);
                peak * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
            Schedule::TriStage { warmup_ratio, hold_ratio, decay_ratio, init_lr_scale, final_lr_scale } => {
                let (w, h, d) = (warmup_ratio * n, hold_ratio * n, decay_ratio * n);
                if s < w {
                    peak * (init_lr_scale + (1.0 - init_lr_scale) * s / w)
                } else if s < w + h {
                    peak
                } else if s < w + h + d {
                    peak * (final_lr_scale.ln() * (s - w - h) / d).exp()
                } else {
                    peak * final_lr_scale
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polynomial_decays_to_its_end_rate() {
        let s = Schedule::Polynomial { warmup_steps: 10, power: 2.0, end_lr: 0.1 };
        assert!((s.lr(1.0, 4, 110) - 0.5).abs() < 1e-12);
        assert!((s.lr(1.0, 60, 110) - (0.1 + 0.9 * 0.25)).abs() < 1e-12, "{}", s.lr(1.0, 60, 110));
        assert!((s.lr(1.0, 110, 110) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn linear_warms_up_then_decays_to_zero() {
        let s = Schedule::Linear { warmup_steps: 10 };
        assert!((s.lr(1.0, 0, 100) - 0.1).abs() < 1e-12);
        assert!((s.lr(1.0, 9, 100) - 1.0).abs() < 1e-12);
        assert!((s.lr(1.0, 55, 100) - 0.5).abs() < 1e-12);
        assert_eq!(s.lr(1.0, 100, 100), 0.0);
    }

    #[test]
    fn cosine_and_tri_stage_shapes() {
        let c = Schedule::Cosine { warmup_steps: 0 };
        assert!((c.lr(2.0, 50, 100) - 1.0).abs() < 1e-12);
        let t = Schedule::TriStage {
            warmup_ratio: 0.1,
            hold_ratio: 0.4,
            decay_ratio: 0.5,
            init_lr_scale: 0.01,
            final_lr_scale: 0.05,
        };
        assert!((t.lr(1.0, 0, 100) - 0.01).abs() < 1e-12);
        assert_eq!(t.lr(1.0, 30, 100), 1.0);
        assert!((t.lr(1.0, 75, 100) - 0.05f64.sqrt()).abs() < 1e-9, "halfway through decay: sqrt(final)");
        assert!((t.lr(1.0, 100, 100) - 0.05).abs() < 1e-12);
    }
}
