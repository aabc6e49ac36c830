//! Parameter-efficient fine-tuning, the Rust way: every projection a method may target is a
//! [`Proj`] (a linear layer plus optional method layers), built when the upstream is loaded;
//! methods are attached by [`TargetSpec`] matching on the projection's checkpoint name.

pub mod adapter;
pub mod bitfit;
pub mod conv_adapter;
pub mod lora;
pub mod mask;
pub mod prefix;
mod proj;
mod target;

pub use adapter::{AdapterConfig, Bottleneck, Placement, adapt};
pub use conv_adapter::{ConvAdapter, ConvAdapterConfig, conv_adapt};
pub use lora::{LoraConfig, LoraLayer};
pub use mask::{MaskConfig, MaskLayer, PruneScope, ScoreInit, magnitude_masks};
pub use prefix::{Prefix, PrefixConfig};
pub use proj::Proj;
pub use target::{TargetSpec, Targets, layer_index};
