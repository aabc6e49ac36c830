use serde::{Deserialize, Serialize};

use crate::target::{TargetSpec, Targets};

/// LoRA settings, with the field names of peft's `LoraConfig` (and its `adapter_config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: Targets,
    pub layers_to_transform: Option<Vec<usize>>,
    /// Scale by `alpha / sqrt(r)` instead of `alpha / r` (rsLoRA).
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            target_modules: Targets::Names(vec!["q_proj".into(), "v_proj".into()]),
            layers_to_transform: None,
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    pub fn scaling(&self) -> f64 {
        if self.use_rslora { self.lora_alpha / (self.r as f64).sqrt() } else { self.lora_alpha / self.r as f64 }
    }

    pub fn target(&self) -> TargetSpec {
        TargetSpec {
            target_modules: self.target_modules.clone(),
            layers_to_transform: self.layers_to_transform.clone(),
        }
    }
}
