//! Kernels that burn's CPU backend lacks, run on tensors' values: bf16 matrix products
//! ([`bf16`], AMX or AVX512_BF16 where the CPU has them), vectorised activations and softmax
//! ([`fastmath`]), and operations that enter burn's autodiff graph as one node each with their
//! own backward pass: the frozen bf16 linear layer ([`linear`]) and multi-head attention
//! ([`attention`]).

pub mod attention;
pub mod bf16;
pub mod fastmath;
mod graph;
pub mod linear;

pub use attention::attention;
pub use graph::supports;
pub use linear::{Bf16Weight, linear};
