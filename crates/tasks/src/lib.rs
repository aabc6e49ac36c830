//! What sits on top of an upstream: task heads and losses (to come with the training engine),
//! the metrics speech papers report, and CTC decoding.

pub mod ctc;
pub mod metrics;
