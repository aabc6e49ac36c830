//! What sits on top of an upstream: the featurizer (weighted sum of hidden states), task heads,
//! losses, the metrics speech papers report, and CTC decoding.

pub mod ctc;
mod featurizer;
mod heads;
mod loss;
pub mod metrics;

pub use featurizer::Featurizer;
pub use heads::{
    AttentiveStatsClassifier, Classifier, CtcHead, LinearHead, MeanPoolClassifier, ProjectorClassifier,
    SuperbDownstream, frame_mask,
};
pub use loss::{ctc_loss, token_cross_entropy};
