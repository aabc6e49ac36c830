//! The task model: upstream (with its PEFT layers), featurizer and heads, and which of its
//! parameters train.

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use speechtune_models::{ModelInput, Perturb, Precision, Upstream, UpstreamModel, UpstreamOutput};
use speechtune_tasks::{
    AttentiveStatsClassifier, Classifier, CtcHead, Featurizer, LinearHead, MeanPoolClassifier, ProjectorClassifier,
    SuperbDownstream,
};

use crate::Result;
use crate::config::{CtcHeadKind, MethodConfig, Pooling, RunConfig};

pub use crate::config::MethodConfig as Method;

#[derive(Module, Debug)]
pub struct TaskModel {
    pub upstream: UpstreamModel,
    pub featurizer: Featurizer,
    /// CTC head (ASR and joint ASR + LID).
    pub ctc: Option<CtcHead>,
    /// Utterance classifier (LID, labels).
    pub classifier: Option<Classifier>,
}

pub struct TaskOutput {
    /// `[batch, frames, vocab]`
    pub ctc_logits: Option<Tensor<3>>,
    /// `[batch, classes]`
    pub class_logits: Option<Tensor<2>>,
    pub frame_lengths: Vec<usize>,
}

impl TaskModel {
    /// Put heads on a loaded upstream (on the training device) and set what trains.
    pub fn build(
        upstream: UpstreamModel,
        cfg: &RunConfig,
        vocab: usize,
        classes: usize,
        device: &Device,
    ) -> Result<Self> {
        let mut upstream = match &cfg.method {
            MethodConfig::Full { .. } => upstream,
            _ => upstream.no_grad(),
        };
        match &cfg.method {
            MethodConfig::Frozen => {}
            MethodConfig::Lora(l) => {
                upstream.attach_lora(l, device)?;
            }
            MethodConfig::Adapter(a) => {
                upstream.attach_adapters(a, device);
            }
            MethodConfig::ConvAdapter(c) => {
                upstream.attach_conv_adapters(c, device);
            }
            MethodConfig::Prefix(p) => {
                upstream.attach_prefixes(p, device);
            }
            MethodConfig::Bitfit => {
                upstream.train_biases_only();
            }
            MethodConfig::S3Router(s) => {
                upstream.attach_masks(&s.mask());
            }
            MethodConfig::Full { freeze_cnn, .. } => {
                if let (true, UpstreamModel::Ssl(m)) = (freeze_cnn, &mut upstream) {
                    m.feature_encoder = m.feature_encoder.clone().no_grad();
                }
            }
        }
        // Gradients flow through the frozen layers for every method but a frozen upstream.
        if !matches!(cfg.method, MethodConfig::Frozen) {
            upstream.relayout_for_backward();
        }
        if cfg.train.precision != Precision::F32 && upstream.set_precision(cfg.train.precision) == 0 {
            return Err(cfg.precision_unusable());
        }
        let d = upstream.hidden_size();
        let n_hidden = upstream.num_layers() + 1;
        let featurizer = Featurizer::new(n_hidden, cfg.upstream.exclude_cnn, cfg.upstream.layer_norm, device);
        let kind = cfg.task.kind;
        let ctc = kind.has_ctc().then(|| match cfg.task.head {
            CtcHeadKind::Superb => CtcHead::Superb(SuperbDownstream::new(d, vocab, cfg.task.dropout, device)),
            CtcHeadKind::Linear => CtcHead::Linear(LinearHead::new(d, vocab, device)),
        });
        let classify = matches!(
            kind,
            crate::config::TaskKind::Lid | crate::config::TaskKind::Classify | crate::config::TaskKind::CtcPlusLid
        );
        let classifier = classify.then(|| match cfg.task.pooling {
            Pooling::Mean => Classifier::Mean(MeanPoolClassifier::new(d, classes, device)),
            Pooling::AttentiveStats => Classifier::AttentiveStats(AttentiveStatsClassifier::new(d, classes, device)),
            Pooling::Projector => Classifier::Projector(ProjectorClassifier::new(d, classes, device)),
        });
        let mut model = Self { upstream, featurizer, ctc, classifier };
        if let MethodConfig::S3Router(s) = &cfg.method
            && !s.trainable_proj
        {
            model.featurizer = model.featurizer.no_grad();
            model.ctc = model.ctc.map(|h| h.no_grad());
            model.classifier = model.classifier.map(|h| h.no_grad());
        }
        Ok(model)
    }

    /// `perturb`: training-time masking and LayerDrop; `detach_upstream`: no gradient flows
    /// into the upstream (fairseq's `freeze_finetune_updates` phase).
    pub fn forward(
        &self,
        input: ModelInput,
        perturb: Option<&mut Perturb>,
        detach_upstream: bool,
    ) -> Result<TaskOutput> {
        let out = self.upstream.forward_perturbed(input, perturb)?;
        Ok(self.heads(out, detach_upstream))
    }

    /// Featurizer and heads on the upstream's output (computed now, or cached).
    pub fn heads(&self, out: UpstreamOutput, detach_upstream: bool) -> TaskOutput {
        let mut out = out;
        if detach_upstream {
            out.hidden_states = out.hidden_states.into_iter().map(|h| h.detach()).collect();
        }
        let x = self.featurizer.forward(&out.hidden_states);
        let lengths = out.frame_lengths;
        let last = out.hidden_states.last().cloned().unwrap_or_else(|| x.clone());
        TaskOutput {
            ctc_logits: self.ctc.as_ref().map(|h| h.forward(x.clone(), last, &lengths)),
            class_logits: self.classifier.as_ref().map(|h| h.forward(x, &lengths)),
            frame_lengths: lengths,
        }
    }
}

struct Counter {
    trainable: usize,
    total: usize,
}

impl ModuleVisitor for Counter {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let n = param.shape().num_elements();
        self.total += n;
        if param.val().is_require_grad() {
            self.trainable += n;
        }
    }
}

/// (trainable, total) parameters; trainable is meaningful on an autodiff device.
pub fn count_parameters<M: Module>(m: &M) -> (usize, usize) {
    let mut c = Counter { trainable: 0, total: 0 };
    m.visit(&mut c);
    (c.trainable, c.total)
}

/// Load the configured upstream.
pub fn load_upstream(cfg: &RunConfig, device: &Device) -> Result<Upstream> {
    Ok(speechtune_models::export::Source::parse(&cfg.upstream.model, cfg.upstream.seed).open(device)?.0)
}
