//! LoRA (Hu et al., 2021) as Hugging Face peft implements it for `nn.Linear`:
//! `y = W x + b + (alpha / r) · B A dropout(x)`, A Kaiming-uniform, B zero, so the output is
//! unchanged at initialisation.

mod config;
mod layer;

pub use config::LoraConfig;
pub use layer::LoraLayer;
