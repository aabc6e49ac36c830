//! BitFit (Ben Zaken et al., 2022): train only the bias terms of the pretrained model — every
//! parameter whose module path ends in `bias` (linear, convolution and layer-norm biases).

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;

struct BiasesTrain {
    path: Vec<String>,
    count: usize,
}

impl ModuleMapper for BiasesTrain {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let bias = self.path.last().is_some_and(|n| n == "bias" || n == "beta");
        if bias {
            self.count += param.shape().num_elements();
            param.set_require_grad(true)
        } else {
            param.set_require_grad(false)
        }
    }
}

/// Freeze every parameter of `m` except its biases; returns the module and how many bias values
/// now train.
pub fn train_biases<M: Module>(m: M) -> (M, usize) {
    let mut mapper = BiasesTrain { path: Vec::new(), count: 0 };
    let m = m.map(&mut mapper);
    (m, mapper.count)
}
