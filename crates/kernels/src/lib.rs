//! Kernels that burn's CPU backend lacks, run on tensors' values: bf16 matrix products
//! ([`bf16`], AMX or AVX512_BF16 where the CPU has them) and the frozen linear layer built on them
//! ([`linear`]), with its own operation in burn's autodiff graph.

pub mod bf16;
pub mod linear;

pub use linear::{Bf16Weight, linear, supports};
