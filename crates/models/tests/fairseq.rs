//! fairseq checkpoints (tests/fixtures/fairseq, written in fairseq's on-disk forms by
//! scripts/make_fairseq_fixtures.py) imported by speechtune: the same tensors as transformers'
//! own conversion scripts produce from them, bit for bit, the same configuration as the source
//! model's, and hidden states within 1e-5 of what transformers computes from its conversion.

mod common;

use std::path::Path;

use common::{fixtures, max_abs_diff, reference, values};
use speechtune_models::burn::prelude::*;
use speechtune_models::burn::tensor::TensorData;
use speechtune_models::fairseq::{Kind, import};
use speechtune_models::{ModelInput, Upstream};

/// (checkpoint, the fixture it was made from, expected kind)
const CHECKPOINTS: [(&str, &str, Kind); 4] = [
    ("wav2vec2-base-args", "pretrain-base", Kind::Pretraining),
    ("xlsr-omegaconf", "pretrain-xlsr", Kind::Pretraining),
    ("wav2vec2-ctc", "wav2vec2-xlsr", Kind::Ctc),
    ("data2vec-audio", "data2vec-audio", Kind::Data2Vec),
];

/// The architecture fields of a transformers config that must survive the round trip.
const ARCH_FIELDS: [&str; 17] = [
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "conv_dim",
    "conv_kernel",
    "conv_stride",
    "conv_bias",
    "feat_extract_norm",
    "do_stable_layer_norm",
    "num_conv_pos_embeddings",
    "num_conv_pos_embedding_groups",
    "conv_pos_kernel_size",
    "num_codevectors_per_group",
    "codevector_dim",
];

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn fairseq_checkpoints_convert_like_transformers() {
    let dev = Device::flex();
    for (name, source, kind) in CHECKPOINTS {
        let dir = fixtures().join("fairseq");
        let out = tempfile::tempdir().unwrap();
        let dict = (kind == Kind::Ctc).then(|| dir.join("dict.ltr.txt"));
        let imported = import(&dir.join(format!("{name}.pt")), out.path(), dict.as_deref())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(imported.kind, kind, "{name}");

        // Tensors: the same names and identical values as transformers' conversion.
        let want = reference(&dir.join(format!("{name}.reference.safetensors")));
        let got = reference(&out.path().join("model.safetensors"));
        let mut want_names: Vec<&str> = want.keys().filter_map(|k| k.strip_prefix("weight.")).collect();
        let mut got_names: Vec<&str> = got.keys().map(String::as_str).collect();
        want_names.sort();
        got_names.sort();
        assert_eq!(got_names, want_names, "{name}: tensor names");
        for (k, (shape, v)) in &got {
            let (wshape, w) = &want[&format!("weight.{k}")];
            assert_eq!(shape, wshape, "{name}: {k} shape");
            assert!(v.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}: {k} differs");
        }

        // Config: the architecture of the model the checkpoint was made from.
        let cfg = json(&out.path().join("config.json"));
        let src = json(&fixtures().join(source).join("config.json"));
        for field in ARCH_FIELDS {
            if let Some(v) = src.get(field) {
                if field == "num_codevectors_per_group" && kind != Kind::Pretraining {
                    continue; // transformers' defaults, not part of a model without a quantizer
                }
                if field == "codevector_dim" && kind != Kind::Pretraining {
                    continue;
                }
                assert_eq!(cfg.get(field), Some(v), "{name}: config {field}");
            }
        }
        if kind == Kind::Pretraining {
            for field in
                ["num_codevector_groups", "proj_codevector_dim", "num_negatives", "contrastive_logits_temperature"]
            {
                assert_eq!(cfg.get(field), src.get(field), "{name}: config {field}");
            }
        }
        if kind == Kind::Ctc {
            assert_eq!(cfg["vocab_size"], src["vocab_size"], "{name}: vocab size");
            let vocab = json(&out.path().join("vocab.json"));
            assert_eq!(
                (vocab["<pad>"].as_u64(), vocab["<s>"].as_u64(), vocab["|"].as_u64()),
                (Some(0), Some(1), Some(4))
            );
        }
        // The task's normalisation: off for the base checkpoint, on for the others.
        let pre = json(&out.path().join("preprocessor_config.json"));
        assert_eq!(pre["do_normalize"].as_bool(), Some(name != "wav2vec2-base-args"), "{name}: do_normalize");

        // Hidden states: speechtune on its conversion vs transformers on its own.
        let up = Upstream::load(out.path(), &dev).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (_, x) = &want["input_values"];
        let samples = Tensor::<2>::from_data(TensorData::new(x.clone(), [1, x.len()]), &dev);
        let outputs = up.model.forward(ModelInput::Waveform { samples, lengths: vec![x.len()] }).unwrap();
        let n = want.keys().filter(|k| k.starts_with("hidden_states.")).count();
        assert_eq!(outputs.hidden_states.len(), n, "{name}: number of hidden states");
        let mut worst = 0.0f32;
        for (i, h) in outputs.hidden_states.iter().enumerate() {
            let d = max_abs_diff(
                &format!("{name} hidden_states.{i}"),
                &h.dims()[1..],
                &values(h),
                &want[&format!("hidden_states.{i}")],
            );
            assert!(d <= 1e-5, "{name}: hidden_states.{i} differs by {d}");
            worst = worst.max(d);
        }
        println!(
            "{name}: {:?}, {} tensors, hidden states within {worst:.1e}, unused {:?}",
            imported.kind, imported.tensors, imported.unused
        );
    }
}

#[test]
fn pickles_that_ask_to_run_code_are_refused() {
    let dir = fixtures().join("fairseq");
    let out = tempfile::tempdir().unwrap();
    let e = import(&dir.join("malicious.pt"), out.path(), None).unwrap_err().to_string();
    assert!(e.contains("malicious.pt") && e.contains("system") && e.contains("does not do"), "{e}");
    assert!(std::fs::read_dir(out.path()).unwrap().next().is_none(), "nothing written");
}

#[test]
fn a_state_dict_is_not_a_fairseq_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    let bin = fixtures().join("wav2vec2-base-bin").join("pytorch_model.bin");
    let e = import(&bin, out.path(), None).unwrap_err().to_string();
    assert!(e.contains("pytorch_model.bin") && e.contains("no \"model\" entry"), "{e}");
}
