//! Parameter-efficient fine-tuning, the Rust way: every projection a method may target is a
//! [`Proj`] (a linear layer plus optional method layers), built when the upstream is loaded;
//! methods are attached by [`TargetSpec`] matching on the projection's checkpoint name.

pub mod adapter;
pub mod lora;
mod proj;
mod target;

pub use adapter::{AdapterConfig, Bottleneck, Placement, adapt};
pub use lora::{LoraConfig, LoraLayer};
pub use proj::Proj;
pub use target::{TargetSpec, Targets, layer_index};
