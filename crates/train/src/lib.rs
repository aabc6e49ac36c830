//! Fine-tuning: the run configuration, the task model (upstream with PEFT layers, featurizer,
//! heads) and the training loop with evaluation.

pub mod checkpoint;
pub mod config;
mod error;
mod model;
mod run;
mod schedule;

pub use config::RunConfig;
pub use error::{Error, Result};
pub use model::{Method, TaskModel, TaskOutput, count_parameters, load_upstream};
pub use run::{EvalReport, RunSummary, train};
pub use schedule::Schedule;
