//! A module's parameters by module path (`encoder.layers.3.conv_adapter.up.weight`): what a run
//! saves of the parts it trained, and loads back into a model built the same way.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::TensorData;

use crate::peft::NamedTensor;
use crate::weights::Weights;
use crate::{Error, Result};

/// Name → (shape, row-major f32 values).
pub type TensorMap = HashMap<String, (Vec<usize>, Vec<f32>)>;

struct Named {
    path: Vec<String>,
    trainable_only: bool,
    out: Vec<NamedTensor>,
}

impl ModuleVisitor for Named {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        if self.trainable_only && !t.is_require_grad() {
            return;
        }
        let dims = t.dims().to_vec();
        let v = t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
        self.out.push((self.path.iter().filter(|p| !p.is_empty()).cloned().collect::<Vec<_>>().join("."), dims, v));
    }
}

/// `(path, shape, values)` of the parameters of `m` (only those that require gradients when
/// `trainable_only`, meaningful on an autodiff device), paths prefixed by `prefix`.
pub fn named_parameters<M: Module>(m: &M, prefix: &str, trainable_only: bool) -> Vec<NamedTensor> {
    let mut v = Named { path: vec![prefix.to_string()], trainable_only, out: Vec::new() };
    m.visit(&mut v);
    v.out
}

struct Loader<'a> {
    path: Vec<String>,
    tensors: &'a TensorMap,
    used: HashSet<String>,
    errors: Vec<String>,
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.iter().filter(|p| !p.is_empty()).cloned().collect::<Vec<_>>().join(".");
        let Some((shape, values)) = self.tensors.get(&name) else { return param };
        self.used.insert(name.clone());
        let dims = param.dims().to_vec();
        if *shape != dims {
            self.errors.push(format!("tensor {name} has shape {shape:?}, the model expects {dims:?}"));
            return param;
        }
        let values = values.clone();
        param.map(|t| {
            let grad = t.is_require_grad();
            let device = t.device();
            Tensor::<D>::from_data(TensorData::new(values, dims), &device).set_require_grad(grad)
        })
    }
}

/// Replace the parameters of `m` named in `tensors` (paths under `prefix`); every tensor must
/// find its parameter with the same shape. `source` names the file in errors.
pub fn load_named<M: Module>(m: M, prefix: &str, tensors: &TensorMap, source: &Path) -> Result<M> {
    let mut l = Loader { path: vec![prefix.to_string()], tensors, used: HashSet::new(), errors: Vec::new() };
    let m = m.map(&mut l);
    let mut unused: Vec<&String> = tensors.keys().filter(|k| !l.used.contains(*k)).collect();
    unused.sort();
    if let Some(first) = unused.first() {
        l.errors.push(format!(
            "{} tensor(s) match no parameter of the model built from the run's config, e.g. {first}",
            unused.len()
        ));
    }
    if l.errors.is_empty() {
        Ok(m)
    } else {
        Err(Error::Safetensors { path: source.to_path_buf(), reason: l.errors.join("; ") })
    }
}

/// Every tensor of a safetensors file as f32.
pub fn read_safetensors(path: &Path) -> Result<TensorMap> {
    let w = Weights::open_safetensors(&[path.to_path_buf()])?;
    let mut out = HashMap::new();
    for name in w.names() {
        let shape = w.shape(name).unwrap_or_default();
        out.insert(name.to_string(), (shape.clone(), w.values(name, &shape)?));
    }
    Ok(out)
}
