//! Output files of the CLI are written atomically (see `speechtune_models::weights::save`).

pub use speechtune_models::weights::{write_atomic, write_safetensors};
