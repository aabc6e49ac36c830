//! Whisper as a whole model against transformers 4.46.3 (`scripts/make_whisper_fixtures.py`,
//! fixture `whisper-seq2seq`: 2 encoder + 2 decoder layers, vocabulary 64): teacher-forced decoder
//! logits, and greedy and 3-beam generation with a forced prefix, suppressed tokens and tokens
//! suppressed at the first step, with an end token that is never produced and one that is.

mod common;

use std::collections::HashMap;

use common::{fixtures, reference, values};
use speechtune_models::burn::prelude::*;
use speechtune_models::burn::tensor::{Int, TensorData};
use speechtune_models::config::ModelConfig;
use speechtune_models::weights::Weights;
use speechtune_models::whisper::seq2seq::{GenerateOptions, WhisperSeq2Seq};

/// Integer tensors of the reference file.
fn int_reference() -> HashMap<String, (Vec<usize>, Vec<i64>)> {
    let path = fixtures().join("whisper-seq2seq/reference.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype() == safetensors::Dtype::I64)
        .map(|(name, v)| {
            let vals = v.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
            (name, (v.shape().to_vec(), vals))
        })
        .collect()
}

fn load() -> (WhisperSeq2Seq, Tensor<3>, Device) {
    let device = Device::flex();
    let dir = fixtures().join("whisper-seq2seq");
    let ModelConfig::Whisper(cfg) = ModelConfig::from_dir(&dir).unwrap() else { panic!("a Whisper config") };
    let mut w = Weights::open_dir(&dir).unwrap();
    let model = WhisperSeq2Seq::load(&cfg, &mut w, &device).unwrap();
    let r = reference(&dir.join("reference.safetensors"));
    let (shape, feats) = r["input_features"].clone();
    let features = Tensor::<3>::from_data(TensorData::new(feats, [shape[0], shape[1], shape[2]]), &device);
    let enc = model.encode(features, true).unwrap();
    (model, enc, device)
}

#[test]
fn decoder_logits_match_transformers() {
    let (model, enc, device) = load();
    let ints = int_reference();
    let (shape, tokens) = ints["tokens"].clone();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(tokens, [shape[0], shape[1]]), &device);
    let got = values(&model.logits(&enc, tokens.clone()).unwrap());
    let r = reference(&fixtures().join("whisper-seq2seq/reference.safetensors"));
    let (want_shape, want) = &r["logits"];
    assert_eq!(want_shape[..2], [2, 7]);
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(d <= 1e-4 * scale.max(1.0), "logits differ by {d} (largest {scale})");
    // Decoding one token at a time with the key/value cache gives the same logits.
    let mut cache = None;
    let mut steps = Vec::new();
    for t in 0..7 {
        let one = tokens.clone().narrow(1, t, 1);
        steps.push(model.decoder.forward(one, &enc, &mut cache).unwrap());
    }
    let cached = values(&Tensor::cat(steps, 1));
    let d = cached.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(d <= 1e-4 * scale.max(1.0), "cached decoding differs by {d}");
}

/// Mixed precision: every projection of both halves and the output projection in bf16; the
/// logits (full and cached decoding) within 3 % of their scale of transformers' f32 logits.
#[test]
fn bf16_decoder_logits_stay_near_transformers() {
    let (mut model, _, device) = load();
    let projections = model.projections_mut().len();
    // The projections, the decoder's output projection and the encoder's front-end.
    assert_eq!(model.set_precision(speechtune_models::Precision::Bf16), projections + 2);
    assert!(model.encoder.frontend_bf16.is_some(), "the front-end's convolutions in bf16");
    assert!(model.encoder.layers.iter().all(|l| l.bf16_attention), "the encoder's attention in bf16");
    let r = reference(&fixtures().join("whisper-seq2seq/reference.safetensors"));
    let (shape, feats) = r["input_features"].clone();
    let features = Tensor::<3>::from_data(TensorData::new(feats, [shape[0], shape[1], shape[2]]), &device);
    let enc = model.encode(features, true).unwrap();
    let (shape, tokens) = int_reference()["tokens"].clone();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(tokens, [shape[0], shape[1]]), &device);
    let want = &r["logits"].1;
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let full = values(&model.logits(&enc, tokens.clone()).unwrap());
    let mut cache = None;
    let steps: Vec<_> =
        (0..7).map(|t| model.decoder.forward(tokens.clone().narrow(1, t, 1), &enc, &mut cache).unwrap()).collect();
    let cached = values(&Tensor::cat(steps, 1));
    for (what, got) in [("full", full), ("cached", cached)] {
        let d = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max) / scale;
        assert!(d < 0.03 && d > 1e-5, "{what} logits in bf16 differ by {d} of their scale");
    }
}

#[test]
fn greedy_and_beam_search_give_transformers_tokens() {
    let (model, enc, _) = load();
    let ints = int_reference();
    let list = |k: &str| ints[k].1.iter().map(|&x| x as u32).collect::<Vec<u32>>();
    let (eos, early) = (list("eos")[0], list("early_eos")[0]);
    for (key, beams, end) in
        [("greedy", 1, eos), ("beam3", 3, eos), ("greedy_early", 1, early), ("beam3_early", 3, early)]
    {
        let o = GenerateOptions {
            prefix: list("prefix"),
            max_new_tokens: list("max_new")[0] as usize,
            eos: end,
            pad: eos,
            suppress: list("suppress"),
            begin_suppress: list("begin_suppress"),
            beams,
            length_penalty: 1.0,
        };
        let got = model.generate(&enc, &o).unwrap();
        let (shape, flat) = &ints[key];
        for (i, row) in flat.chunks(shape[1]).enumerate() {
            // transformers pads finished rows; ours stop after the end token.
            let mut want: Vec<u32> = row.iter().map(|&x| x as u32).collect();
            if let Some(p) = want.iter().skip(o.prefix.len()).position(|&t| t == end) {
                want.truncate(o.prefix.len() + p + 1);
            }
            assert_eq!(got[i], want, "{key}, item {i}");
        }
    }
}

/// The tokenizer read from tokenizer.json, and from the slow files alone, against transformers'
/// `WhisperTokenizerFast` / `WhisperTokenizer` (which agree): ids, the English transcription
/// prefix, decoded text with and without special tokens; the language table.
#[test]
fn tokenizer_matches_transformers_from_both_file_layouts() {
    use speechtune_models::whisper::tokenizer::{Task, WhisperTokenizer};
    let dir = fixtures().join("whisper-seq2seq");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_reference.json")).unwrap()).unwrap();
    // The slow layout: the same folder without tokenizer.json.
    let slow = tempfile::tempdir().unwrap();
    for f in ["vocab.json", "merges.txt", "added_tokens.json"] {
        std::fs::copy(dir.join(f), slow.path().join(f)).unwrap();
    }
    for from in [dir.clone(), slow.path().to_path_buf()] {
        let t = WhisperTokenizer::load(&from).unwrap();
        assert_eq!(t.vocab_size() as u64, reference["vocab_size"].as_u64().unwrap(), "{from:?}");
        assert_eq!(t.languages().len(), 100);
        assert_eq!(t.languages()[2].0, "de");
        let en = t.language("english").unwrap();
        assert_eq!(t.language("eng").unwrap(), en);
        assert!(t.language("klingon").is_err());
        let prefix = t.prefix(Some(en), Some(Task::Transcribe), false).unwrap();
        let eot = t.special("<|endoftext|>").unwrap();
        for case in reference["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let ids: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(t.encode(text).unwrap(), ids, "{from:?}: {text:?}");
            let full: Vec<u32> = [prefix.clone(), ids, vec![eot]].concat();
            let want: Vec<u32> =
                case["with_prefix"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(full, want, "{text:?}");
            assert_eq!(t.decode(&full, false).unwrap(), case["decoded"].as_str().unwrap(), "{from:?}");
            assert_eq!(t.decode(&full, true).unwrap(), case["decoded_skip_special"].as_str().unwrap(), "{from:?}");
        }
    }
    let missing = tempfile::tempdir().unwrap();
    let err = WhisperTokenizer::load(missing.path()).unwrap_err().to_string();
    assert!(err.contains("vocab.json") && err.contains("no tokenizer"), "{err}");
}
