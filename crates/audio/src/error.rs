use std::path::PathBuf;

/// Everything that can go wrong while reading or transforming audio.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open audio file {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("cannot read audio file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("audio file {path} contains no samples")]
    Empty { path: PathBuf },
    #[error("cannot encode FLAC: {reason}")]
    Encode { reason: String },
    #[error("cannot resample from {from} Hz to {to} Hz: {reason}")]
    Resample { from: u32, to: u32, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;
