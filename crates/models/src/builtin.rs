//! Upstreams compiled into the program, accepted by name wherever a model directory is:
//! `builtin:tiny` (seeded random weights, for tests) and `builtin:tiny-pretrained` (the
//! wav2vec 2.0 model of `models/tiny-pretrained`, pre-trained by speechtune on a synthetic
//! multilingual corpus; see that folder's README), embedded so that `speechtune demo` works
//! from any directory after `cargo install`.

/// Seeded random weights in the shape of [`TINY_PRETRAINED`].
pub const TINY: &str = "builtin:tiny";
/// The committed pre-trained tiny model.
pub const TINY_PRETRAINED: &str = "builtin:tiny-pretrained";
/// Every built-in name, for error messages.
pub const NAMES: [&str; 2] = [TINY, TINY_PRETRAINED];

/// The files of `models/tiny-pretrained` that make the model (a `Wav2Vec2ForPreTraining`
/// directory: the quantizer is kept, so `speechtune pretrain` can continue from it).
pub const TINY_PRETRAINED_FILES: [(&str, &[u8]); 3] = [
    ("config.json", include_bytes!("../../../models/tiny-pretrained/config.json")),
    ("preprocessor_config.json", include_bytes!("../../../models/tiny-pretrained/preprocessor_config.json")),
    ("model.safetensors", include_bytes!("../../../models/tiny-pretrained/model.safetensors")),
];
