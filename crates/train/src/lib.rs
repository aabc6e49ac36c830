//! Fine-tuning: the run configuration, the task model (upstream with PEFT layers, featurizer,
//! heads) and the training loop with evaluation.

pub mod checkpoint;
mod clip;
pub mod config;
pub mod distributed;
mod error;
pub mod eval;
pub mod feature_cache;
pub mod fit;
pub mod infer;
pub mod lur;
mod model;
pub mod optim;
pub mod prepare;
pub mod pretrain;
mod run;
mod schedule;
pub mod seq2seq;
pub mod shard;
mod tensorboard;

pub use config::RunConfig;
pub use error::{Error, Result};
pub use eval::{EvalReport, Prediction};
pub use feature_cache::CacheStats;
pub use fit::peak_rss;
pub use model::{Method, TaskModel, TaskOutput, count_parameters, load_upstream};
pub use run::{RunSummary, TrainOptions, train};
pub use schedule::Schedule;
