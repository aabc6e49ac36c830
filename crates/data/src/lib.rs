//! Speech corpora for fine-tuning: readers for the layouts speech people use (ML-SUPERB,
//! Common Voice, TSV/JSONL manifests, tar shards), text normalisation and character vocabularies,
//! deterministic sampling (10-min / 1-h subsets, few-shot), and batching by audio seconds with
//! decoding on worker threads.

mod batching;
pub mod corpus;
mod error;
mod item;
mod loader;
pub mod readers;
mod rng;
mod sampling;
pub mod shard_writer;
pub mod text;
mod vocab;

pub use batching::{Batch, BatchPlan, plan_batches};
pub use error::{Error, Problem, Problems, Result};
pub use item::{AudioSource, Split, Utterance};
pub use loader::{CacheHandle, Loader, LoaderOptions, load_audio};
pub use rng::Rng;
pub use sampling::{SampleOptions, drop_longer_than, few_shot, subset_by_duration};
pub use vocab::Vocab;
