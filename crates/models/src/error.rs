use std::path::PathBuf;

/// Everything that can go wrong while loading or running an upstream model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{dir} has no config.json: point speechtune at a Hugging Face model directory (config.json + model.safetensors)"
    )]
    MissingConfig { dir: PathBuf },
    #[error("cannot parse {path}: {source}")]
    Config { path: PathBuf, source: serde_json::Error },
    #[error("{path}: model_type \"{model_type}\" is not supported; supported: {}", supported.join(", "))]
    UnsupportedModelType { path: PathBuf, model_type: String, supported: Vec<&'static str> },
    #[error("{path}: {what} is not supported")]
    Unsupported { path: PathBuf, what: String },
    #[error("{dir} has no weights: expected model.safetensors, model.safetensors.index.json or pytorch_model.bin")]
    NoWeights { dir: PathBuf },
    #[error("cannot read PyTorch checkpoint {path}: {reason}")]
    TorchCheckpoint { path: PathBuf, reason: String },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("tensor \"{name}\" not found in {files}")]
    MissingTensor { name: String, files: String },
    #[error("tensor \"{name}\" in {file} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch { name: String, file: PathBuf, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor \"{name}\" in {file} has dtype {dtype}, expected a float type (f32, f16, bf16, f64)")]
    UnsupportedDtype { name: String, file: PathBuf, dtype: String },
    #[error("bad input: {0}")]
    Input(String),
    #[error(transparent)]
    Audio(#[from] speechtune_audio::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// An error and its causes on one line, `outer: cause: ...`, as users see it (the CLI and the
/// Python package). A cause whose text the message already holds is not repeated: several
/// errors name their source in their own message (`cannot read {path}: {source}`).
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out = format!("{out}: {text}");
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let e = super::Error::Io { path: "x.bin".into(), source: io };
        assert_eq!(super::one_line(&e), "cannot read x.bin: gone");
        let outer = anyhow::Error::new(e).context("loading model");
        assert_eq!(super::one_line(outer.as_ref()), "loading model: cannot read x.bin: gone");
    }
}
