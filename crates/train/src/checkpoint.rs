//! What a run keeps: only what was trained. The featurizer and heads go to `heads.safetensors`
//! (names are module paths, e.g. `ctc.proj.weight`); LoRA goes to `adapter_model.safetensors` +
//! `adapter_config.json` in Hugging Face peft's format, loadable by peft on the same base model;
//! bottleneck adapters to `adapters.safetensors` (`encoder.layers.{i}.adapter_ffn.down.weight`, ...).

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use speechtune_models::weights::{write_atomic, write_safetensors};

use crate::Result;
use crate::config::{MethodConfig, RunConfig};
use crate::model::TaskModel;

/// Every float parameter of a module with its dotted path.
struct Named {
    path: Vec<String>,
    out: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl ModuleVisitor for Named {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let v = param.val().into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
        self.out.push((self.path.join("."), param.val().dims().to_vec(), v));
    }
}

/// `(path, shape, values)` of every parameter of `m`, paths prefixed by `prefix`.
pub fn named_parameters<M: Module>(m: &M, prefix: &str) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut v = Named { path: vec![prefix.to_string()], out: Vec::new() };
    m.visit(&mut v);
    v.out
}

/// Write the trained parts of `model` into `dir`.
pub fn save(dir: &Path, model: &TaskModel, cfg: &RunConfig, upstream_prefix: &str) -> Result<()> {
    let mut heads = named_parameters(&model.featurizer, "featurizer");
    if let Some(h) = &model.ctc {
        heads.extend(named_parameters(h, "ctc"));
    }
    if let Some(h) = &model.lid {
        heads.extend(named_parameters(h, "lid"));
    }
    let meta = HashMap::from([("format".to_string(), "speechtune-heads".to_string())]);
    write_safetensors(&dir.join("heads.safetensors"), &heads, meta)?;
    if let MethodConfig::Adapter(_) = &cfg.method {
        let mut state = Vec::new();
        for (name, a) in model.upstream.adapters() {
            state.extend(named_parameters(a, &name));
        }
        let meta = HashMap::from([("format".to_string(), "speechtune-adapters".to_string())]);
        write_safetensors(&dir.join("adapters.safetensors"), &state, meta)?;
    }
    if let MethodConfig::Lora(l) = &cfg.method {
        let state = model.upstream.lora_state(upstream_prefix);
        write_safetensors(
            &dir.join("adapter_model.safetensors"),
            &state,
            HashMap::from([("format".into(), "pt".into())]),
        )?;
        let adapter_config = serde_json::json!({
            "peft_type": "LORA",
            "base_model_name_or_path": cfg.upstream.model,
            "r": l.r,
            "lora_alpha": l.lora_alpha,
            "lora_dropout": l.lora_dropout,
            "target_modules": l.target_modules,
            "layers_to_transform": l.layers_to_transform,
            "use_rslora": l.use_rslora,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "task_type": null,
        });
        write_atomic(
            &dir.join("adapter_config.json"),
            serde_json::to_string_pretty(&adapter_config).unwrap_or_default().as_bytes(),
        )?;
    }
    Ok(())
}
