use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("--set {0}")]
    Override(String),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("training stopped: {0}")]
    Diverged(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Data(#[from] speechtune_data::Error),
    #[error(transparent)]
    Model(#[from] speechtune_models::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
