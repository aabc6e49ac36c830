//! Kernels that burn's CPU backend lacks, run on tensors' values: bf16 matrix products
//! ([`bf16`], AMX or AVX512_BF16 where the CPU has them), vectorised activations and softmax
//! ([`fastmath`]), operations that enter burn's autodiff graph as one node each with their own
//! backward pass: channels-last convolutions ([`conv`]), frozen linear layers in f32
//! ([`dense`], with LoRA's update and its [`dropout`]) and bf16 ([`linear`]), multi-head attention ([`attention`]), activations, softmax
//! and layer norm ([`rowwise`]), group norm over time ([`groupnorm`]); and AdamW's update as one
//! parallel pass ([`optim`]).

pub mod attention;
pub mod bf16;
pub mod conv;
pub mod dense;
pub mod dropout;
pub mod fastmath;
mod graph;
pub mod groupnorm;
pub mod linear;
pub mod optim;
pub mod rowwise;
#[cfg(test)]
mod testing;

pub use attention::attention;
pub use conv::{conv1d, conv1d_after};
pub use dense::frozen_linear;
pub use graph::{View, add_in_order, column_sums, mm, supports, zeros};
pub use linear::{Bf16Weight, linear};
