//! Audio input for speechtune: decoding (symphonia), downmix, resampling to 16 kHz (rubato),
//! waveform normalisation and Whisper's log-mel front-end. No deep-learning dependency, so it
//! builds in seconds and the data tools can use it alone.

mod decode;
mod error;
pub mod flac;
pub mod logmel;
mod normalize;
mod resample;
mod sanity;
pub mod segment;
pub mod vad;

pub use decode::{AudioInfo, Decoded, decode_bytes, decode_file, load_mono_16k, probe_file};
pub use error::{Error, Result};
pub use normalize::zero_mean_unit_var;
pub use resample::resample;

/// The sample rate every speechtune model consumes.
pub const SAMPLE_RATE: u32 = 16_000;
