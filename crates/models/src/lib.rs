//! Pretrained speech upstreams in burn, loaded from Hugging Face model directories:
//! wav2vec2 (base and large/XLS-R layouts), HuBERT, data2vec-audio, WavLM and the Whisper encoder.
//! Every hidden state matches transformers' `output_hidden_states` (see `tests/parity.rs`).

pub mod augment;
pub mod builtin;
pub mod config;
mod device;
mod error;
pub mod export;
pub mod fairseq;
pub use speechtune_kernels::fastmath;
pub mod frontend;
pub mod hub;
pub mod layers;
pub mod peft;
mod precision;
pub mod ssl;
pub mod state;
#[cfg(test)]
mod testing;
mod upstream;
pub mod weights;
pub mod whisper;

pub use augment::{AugmentConfig, Perturb};
pub use burn;
pub use config::{ModelConfig, SUPPORTED_MODEL_TYPES};
pub use device::parse_device;
pub use error::{Error, Result, one_line};
pub use frontend::{FrontEnd, ModelInput};
pub use precision::Precision;
pub use upstream::{Upstream, UpstreamModel, UpstreamOutput};
