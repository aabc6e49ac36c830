//! fairseq checkpoints → Hugging Face model directories.
//!
//! Reads a fairseq `.pt` file (wav2vec 2.0 pre-training in the base or large/XLS-R layout,
//! a fine-tuned `wav2vec_ctc` model, data2vec-audio pre-trained or fine-tuned) with the
//! non-executing unpickler, translates its configuration (`cfg` as omegaconf data or plain
//! dicts, or the legacy `args` Namespace) into a transformers config, and renames its tensors
//! with the rules of transformers' conversion scripts
//! (`convert_wav2vec2_original_pytorch_checkpoint_to_pytorch.py`,
//! `convert_data2vec_audio_original_pytorch_checkpoint_to_pytorch.py`): the same substring
//! matching in the same order, so both produce the same tensors. Pre-training checkpoints keep
//! the quantizer and projections (`Wav2Vec2ForPreTraining`), so `pretrain` can continue them;
//! fine-tuned ones keep the CTC projection as `lm_head`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::weights::{Weights, write_atomic, write_safetensors};
use crate::{Error, Result};

/// What a checkpoint holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// wav2vec 2.0 pre-training (`Wav2Vec2ForPreTraining`).
    Pretraining,
    /// wav2vec 2.0 fine-tuned with CTC (`Wav2Vec2ForCTC`).
    Ctc,
    /// data2vec-audio pre-training (`Data2VecAudioModel`; the regression head is dropped).
    Data2Vec,
    /// data2vec-audio fine-tuned with CTC (`Data2VecAudioForCTC`).
    Data2VecCtc,
}

impl Kind {
    pub fn architecture(self) -> &'static str {
        match self {
            Kind::Pretraining => "Wav2Vec2ForPreTraining",
            Kind::Ctc => "Wav2Vec2ForCTC",
            Kind::Data2Vec => "Data2VecAudioModel",
            Kind::Data2VecCtc => "Data2VecAudioForCTC",
        }
    }

    fn data2vec(self) -> bool {
        matches!(self, Kind::Data2Vec | Kind::Data2VecCtc)
    }

    fn finetuned(self) -> bool {
        matches!(self, Kind::Ctc | Kind::Data2VecCtc)
    }
}

/// What `import` wrote.
#[derive(Debug)]
pub struct Imported {
    pub kind: Kind,
    /// The transformers config written as config.json.
    pub config: Value,
    /// Number of tensors in model.safetensors.
    pub tensors: usize,
    /// Checkpoint tensors no rule maps (as transformers' script reports them as unused).
    pub unused: Vec<String>,
    pub files: Vec<PathBuf>,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::TorchCheckpoint { path: path.to_path_buf(), reason: reason.into() }
}

/// The model and task configuration of a checkpoint, as plain JSON objects.
struct Configs {
    /// The architecture: the pre-training model's configuration (for fine-tuned checkpoints,
    /// `w2v_args`), with the fine-tuning overrides applied.
    arch: Map<String, Value>,
    /// The fine-tuned model's own configuration (final_dropout, ...), empty for pre-training.
    finetune: Map<String, Value>,
    normalize: bool,
    criterion: Map<String, Value>,
}

fn object(v: Option<&Value>) -> Map<String, Value> {
    v.and_then(|v| v.as_object()).cloned().unwrap_or_default()
}

/// (model, task, criterion) configuration.
type Parts = (Map<String, Value>, Map<String, Value>, Map<String, Value>);

/// `cfg` (split into model/task/criterion) or the legacy flat `args`.
fn split(raw: &Value) -> Option<Parts> {
    match (raw.get("cfg"), raw.get("args")) {
        (Some(cfg @ Value::Object(c)), _) if c.contains_key("model") => {
            Some((object(cfg.get("model")), object(cfg.get("task")), object(cfg.get("criterion"))))
        }
        (_, Some(Value::Object(args))) => Some((args.clone(), args.clone(), args.clone())),
        _ => None,
    }
}

fn configs(path: &Path, raw: &Value, finetuned: bool) -> Result<Configs> {
    let (model, task, criterion) = split(raw).ok_or_else(|| {
        bad(path, "no configuration: neither \"cfg\" (with a \"model\" entry) nor an \"args\" Namespace")
    })?;
    let normalize_of = |m: &Map<String, Value>| m.get("normalize").and_then(Value::as_bool);
    if !finetuned {
        let normalize = normalize_of(&task).or(normalize_of(&model)).unwrap_or(false);
        return Ok(Configs { arch: model, finetune: Map::new(), normalize, criterion });
    }
    let w2v = match model.get("w2v_args") {
        Some(Value::Object(w)) => Value::Object(w.clone()),
        _ => {
            let from = model.get("w2v_path").and_then(Value::as_str).unwrap_or("?");
            return Err(bad(
                path,
                format!(
                    "a fine-tuned checkpoint without \"w2v_args\" (the pre-trained model's configuration; it names \
                     w2v_path {from}): import the pre-training checkpoint instead"
                ),
            ));
        }
    };
    let (mut arch, pre_task, _) = split(&json!({"cfg": w2v, "args": w2v})).expect("an object");
    // fairseq's Wav2VecEncoder overrides these of the pre-trained model's configuration.
    for (from, to) in [
        ("dropout", "dropout"),
        ("attention_dropout", "attention_dropout"),
        ("activation_dropout", "activation_dropout"),
        ("dropout_input", "dropout_input"),
        ("mask_prob", "mask_prob"),
        ("mask_length", "mask_length"),
        ("mask_channel_prob", "mask_channel_prob"),
        ("mask_channel_length", "mask_channel_length"),
        ("layerdrop", "encoder_layerdrop"),
        ("feature_grad_mult", "feature_grad_mult"),
    ] {
        if let Some(v) = model.get(from) {
            arch.insert(to.to_string(), v.clone());
        }
    }
    let normalize = normalize_of(&task).or(normalize_of(&model)).or(normalize_of(&pre_task)).unwrap_or(false);
    Ok(Configs { arch, finetune: model, normalize, criterion })
}

/// `"[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2"` → (dim, kernel, stride) triples.
/// Only this form of Python expression (lists of int triples, `+`, `* n`) is accepted.
pub fn conv_layers(spec: &str) -> std::result::Result<Vec<(usize, usize, usize)>, String> {
    let s: String = spec.chars().filter(|c| !c.is_whitespace()).collect();
    let err = || format!("conv_feature_layers {spec:?} is not a sum of lists of (dim, kernel, stride) triples");
    let mut out = Vec::new();
    for term in s.split('+') {
        let (list, times) = match term.rsplit_once('*') {
            Some((l, n)) => (l, n.parse::<usize>().map_err(|_| err())?),
            None => (term, 1),
        };
        let inner = list.strip_prefix('[').and_then(|l| l.strip_suffix(']')).ok_or_else(err)?;
        let mut triples = Vec::new();
        for t in inner.split("),").map(|t| t.trim_start_matches('(').trim_end_matches(')')).filter(|t| !t.is_empty()) {
            let v = t
                .split(',')
                .map(|x| x.parse::<usize>().map_err(|_| err()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            match v[..] {
                [d, k, st] if d > 0 && k > 0 && st > 0 => triples.push((d, k, st)),
                _ => return Err(err()),
            }
        }
        if times > 1024 {
            return Err(err());
        }
        for _ in 0..times {
            out.extend_from_slice(&triples);
        }
    }
    if out.is_empty() {
        return Err(err());
    }
    Ok(out)
}

/// The transformers config of a checkpoint.
fn hf_config(path: &Path, kind: Kind, c: &Configs, shapes: &HashMap<String, Vec<usize>>) -> Result<Value> {
    let a = &c.arch;
    let num = |k: &str, d: f64| a.get(k).and_then(Value::as_f64).unwrap_or(d);
    let int = |k: &str, d: usize| a.get(k).and_then(Value::as_u64).map_or(d, |v| v as usize);
    let flag = |k: &str, d: bool| a.get(k).and_then(Value::as_bool).unwrap_or(d);
    let text = |k: &str, d: &str| a.get(k).and_then(Value::as_str).unwrap_or(d).to_string();
    let unsupported = |what: String| Error::Unsupported { path: path.to_path_buf(), what };

    let layer_type = text("layer_type", "transformer");
    if layer_type != "transformer" {
        return Err(unsupported(format!("layer_type \"{layer_type}\" (only the Transformer encoder converts)")));
    }
    let conv = conv_layers(&text("conv_feature_layers", "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2"))
        .map_err(|e| bad(path, e))?;
    let extractor = text("extractor_mode", "default");
    let feat_extract_norm = match extractor.as_str() {
        "default" => "group",
        "layer_norm" => "layer",
        other => return Err(unsupported(format!("extractor_mode \"{other}\""))),
    };
    let act = text("activation_fn", "gelu");
    let hidden = int("encoder_embed_dim", 768);
    let mut cfg = json!({
        "architectures": [kind.architecture()],
        "model_type": if kind.data2vec() { "data2vec-audio" } else { "wav2vec2" },
        "hidden_size": hidden,
        "num_hidden_layers": int("encoder_layers", 12),
        "num_attention_heads": int("encoder_attention_heads", 12),
        "intermediate_size": int("encoder_ffn_embed_dim", 3072),
        "hidden_act": act,
        "layer_norm_eps": 1e-5,
        "feat_extract_activation": "gelu",
        "conv_dim": conv.iter().map(|t| t.0).collect::<Vec<_>>(),
        "conv_kernel": conv.iter().map(|t| t.1).collect::<Vec<_>>(),
        "conv_stride": conv.iter().map(|t| t.2).collect::<Vec<_>>(),
        "num_feat_extract_layers": conv.len(),
        "conv_bias": flag("conv_bias", false),
        "num_conv_pos_embedding_groups": int("conv_pos_groups", 16),
        "hidden_dropout": num("dropout", 0.1),
        "attention_dropout": num("attention_dropout", 0.1),
        "activation_dropout": num("activation_dropout", 0.0),
        "feat_proj_dropout": num("dropout_input", 0.0),
        "layerdrop": num("encoder_layerdrop", 0.0),
        "apply_spec_augment": true,
        "mask_time_prob": num("mask_prob", 0.65),
        "mask_time_length": int("mask_length", 10),
        "mask_feature_prob": num("mask_channel_prob", 0.0),
        "mask_feature_length": int("mask_channel_length", 10),
        "vocab_size": 32,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    });
    let m = cfg.as_object_mut().expect("an object");
    let depth = int("pos_conv_depth", 1);
    if kind.data2vec() {
        if extractor != "layer_norm" {
            return Err(unsupported("data2vec-audio with a group-norm feature encoder".into()));
        }
        m.insert("conv_pos_kernel_size".into(), json!((int("conv_pos", 95) / depth.max(1)).max(3)));
        m.insert("num_conv_pos_embeddings".into(), json!(depth));
    } else {
        if depth > 1 {
            return Err(unsupported(format!("pos_conv_depth {depth} in wav2vec2 (transformers' Wav2Vec2 has one)")));
        }
        m.insert("feat_extract_norm".into(), json!(feat_extract_norm));
        m.insert("do_stable_layer_norm".into(), json!(flag("layer_norm_first", false)));
        m.insert("num_conv_pos_embeddings".into(), json!(int("conv_pos", 128)));
    }
    if kind == Kind::Pretraining {
        if !flag("quantize_targets", false) {
            return Err(unsupported("a pre-training checkpoint without quantized targets (quantize_targets)".into()));
        }
        if flag("quantize_input", false) || flag("target_glu", false) || int("quantizer_depth", 1) != 1 {
            return Err(unsupported("quantize_input, target_glu or quantizer_depth > 1".into()));
        }
        let final_dim = match int("final_dim", 0) {
            0 => hidden,
            d => d,
        };
        let codevector_dim = match int("latent_dim", 0) {
            0 => final_dim,
            d => d,
        };
        m.insert("num_codevectors_per_group".into(), json!(int("latent_vars", 320)));
        m.insert("num_codevector_groups".into(), json!(int("latent_groups", 2)));
        m.insert("codevector_dim".into(), json!(codevector_dim));
        m.insert("proj_codevector_dim".into(), json!(final_dim));
        m.insert("num_negatives".into(), json!(int("num_negatives", 100)));
        m.insert("contrastive_logits_temperature".into(), json!(num("logit_temp", 0.1)));
        m.insert("feat_quantizer_dropout".into(), json!(num("dropout_features", 0.0)));
        let weights = c.criterion.get("loss_weights").and_then(Value::as_array);
        if let Some(w) = weights.and_then(|w| w.first()).and_then(Value::as_f64) {
            m.insert("diversity_loss_weight".into(), json!(w));
        }
    }
    if kind.finetuned() {
        let rows = shapes
            .get("w2v_encoder.proj.weight")
            .map(|s| s[0])
            .ok_or_else(|| bad(path, "a fine-tuned checkpoint without its CTC projection w2v_encoder.proj.weight"))?;
        m.insert("vocab_size".into(), json!(rows));
        let fd = c.finetune.get("final_dropout").and_then(Value::as_f64).unwrap_or(0.0);
        m.insert("final_dropout".into(), json!(fd));
        m.insert("ctc_loss_reduction".into(), json!("sum"));
    }
    Ok(cfg)
}

/// transformers' conversion scripts: fairseq name fragment → transformers name (`*` = layer),
/// tried in order, first match wins. Both scripts share the Transformer layers' rules.
const LAYER_RULES: &[(&str, &str)] = &[
    ("self_attn.k_proj", "encoder.layers.*.attention.k_proj"),
    ("self_attn.v_proj", "encoder.layers.*.attention.v_proj"),
    ("self_attn.q_proj", "encoder.layers.*.attention.q_proj"),
    ("self_attn.out_proj", "encoder.layers.*.attention.out_proj"),
    ("self_attn_layer_norm", "encoder.layers.*.layer_norm"),
    ("fc1", "encoder.layers.*.feed_forward.intermediate_dense"),
    ("fc2", "encoder.layers.*.feed_forward.output_dense"),
    ("final_layer_norm", "encoder.layers.*.final_layer_norm"),
];
/// The wav2vec2 script's rules before and after the layers'.
const W2V_HEAD: &[(&str, &str)] =
    &[("post_extract_proj", "feature_projection.projection"), ("encoder.pos_conv.0", "encoder.pos_conv_embed.conv")];
const W2V_TAIL: &[(&str, &str)] = &[
    ("encoder.layer_norm", "encoder.layer_norm"),
    ("adapter_layer", "encoder.layers.*.adapter_layer"),
    ("w2v_model.layer_norm", "feature_projection.layer_norm"),
    ("quantizer.weight_proj", "quantizer.weight_proj"),
    ("quantizer.vars", "quantizer.codevectors"),
    ("project_q", "project_q"),
    ("final_proj", "project_hid"),
    ("w2v_encoder.proj", "lm_head"),
    ("mask_emb", "masked_spec_embed"),
    ("pooling_layer.linear", "projector"),
    ("pooling_layer.projection", "classifier"),
];
const W2V_TOP_LEVEL: &[&str] = &[
    "lm_head",
    "quantizer.weight_proj",
    "quantizer.codevectors",
    "project_q",
    "project_hid",
    "projector",
    "classifier",
];

/// The data2vec-audio script's own rules (its positional convs are handled apart).
const D2V_HEAD: &[(&str, &str)] =
    &[("post_extract_proj", "feature_projection.projection"), ("models.0.layer_norm", "feature_projection.layer_norm")];
const D2V_TAIL: &[(&str, &str)] = &[
    ("encoder.layer_norm", "encoder.layer_norm"),
    ("w2v_model.layer_norm", "feature_projection.layer_norm"),
    ("w2v_encoder.proj", "lm_head"),
    ("mask_emb", "masked_spec_embed"),
];
const D2V_TOP_LEVEL: &[&str] = &["lm_head"];

/// The parameter suffix transformers gives a fairseq tensor (weight norm as the
/// parametrizations transformers ≥ 4.40 saves).
fn weight_type(name: &str) -> Option<&'static str> {
    if name.contains("weight_g") {
        Some("parametrizations.weight.original0")
    } else if name.contains("weight_v") {
        Some("parametrizations.weight.original1")
    } else if name.contains("bias") {
        Some("bias")
    } else if name.contains("weight") {
        Some("weight")
    } else {
        None
    }
}

/// The transformers name of a fairseq tensor, or `None` for tensors transformers leaves unused.
pub fn hf_name(name: &str, kind: Kind, group_norm: bool) -> Option<String> {
    let prefix = match kind {
        Kind::Pretraining | Kind::Ctc => "wav2vec2.",
        Kind::Data2VecCtc => "data2vec_audio.",
        Kind::Data2Vec => "",
    };
    let last = name.rsplit('.').next().unwrap_or(name);
    if let Some(rest) = name.split("conv_layers.").last().filter(|_| name.contains("conv_layers")) {
        let mut items = rest.split('.');
        let layer: usize = items.next()?.parse().ok()?;
        let part: usize = items.next()?.parse().ok()?;
        let module = match part {
            0 => "conv",
            2 if kind.data2vec() || !group_norm || layer == 0 => "layer_norm",
            _ => return None,
        };
        let param = if kind.data2vec() {
            last
        } else if name.contains("bias") {
            "bias"
        } else if name.contains("weight") {
            "weight"
        } else {
            return None;
        };
        return Some(format!("{prefix}feature_extractor.conv_layers.{layer}.{module}.{param}"));
    }
    if kind.data2vec() && name.contains("pos_conv") {
        let rest = name.split("pos_conv.").last()?;
        let mut items = rest.split('.');
        let layer: usize = items.next()?.parse().ok()?;
        let part: usize = items.next()?.parse().ok()?;
        return (part == 0).then(|| format!("{prefix}encoder.pos_conv_embed.layers.{layer}.conv.{last}"));
    }
    let (head, tail, top) =
        if kind.data2vec() { (D2V_HEAD, D2V_TAIL, D2V_TOP_LEVEL) } else { (W2V_HEAD, W2V_TAIL, W2V_TOP_LEVEL) };
    let first = name.split('.').next().unwrap_or(name);
    for &(key, mapped) in head.iter().chain(LAYER_RULES).chain(tail) {
        let bare = key.rsplit("w2v_model.").next().unwrap_or(key);
        if !(name.contains(key) || bare == first) {
            continue;
        }
        let mut target = if top.contains(&mapped) { mapped.to_string() } else { format!("{prefix}{mapped}") };
        if target.contains('*') {
            let before = name.split(key).next().unwrap_or("");
            let parts: Vec<&str> = before.split('.').collect();
            let layer = parts.len().checked_sub(2).map(|i| parts[i])?;
            target = target.replace('*', layer);
        }
        return Some(match weight_type(name) {
            Some(w) => format!("{target}.{w}"),
            None => target,
        });
    }
    None
}

/// `dict.ltr.txt` (fairseq's target dictionary) → vocab.json as transformers' script writes it:
/// fairseq's `<s> <pad> </s> <unk>` first, with `<pad>` (the CTC blank) and `<s>` swapped.
fn vocab_of_dict(path: &Path, text: &str) -> Result<Map<String, Value>> {
    let mut vocab = Map::new();
    for (i, s) in ["<pad>", "<s>", "</s>", "<unk>"].iter().enumerate() {
        vocab.insert(s.to_string(), json!(i));
    }
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let symbol = line.split_whitespace().next().unwrap_or_default();
        let mut fields = line.split_whitespace().skip(1);
        if fields.next().is_some_and(|c| c.parse::<i64>().is_err()) {
            return Err(Error::Input(format!("{}:{}: expected \"SYMBOL COUNT\", got {line:?}", path.display(), n + 1)));
        }
        if !vocab.contains_key(symbol) {
            let id = vocab.len();
            vocab.insert(symbol.to_string(), json!(id));
        }
    }
    Ok(vocab)
}

/// A converted checkpoint, in memory.
#[derive(Debug)]
pub struct Converted {
    pub kind: Kind,
    /// config.json
    pub config: Value,
    /// preprocessor_config.json
    pub preprocessor: Value,
    /// vocab.json, from the dictionary
    pub vocab: Option<Map<String, Value>>,
    /// (transformers name, shape, values), sorted by name
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    pub unused: Vec<String>,
}

/// Convert a fairseq checkpoint's bytes (`checkpoint` names it in errors), with its target
/// dictionary's text (`dict`: path and contents) for fine-tuned models.
pub fn convert(checkpoint: &Path, bytes: Vec<u8>, dict: Option<(&Path, &str)>) -> Result<Converted> {
    let (weights, raw) = Weights::fairseq_from_bytes(checkpoint, bytes)?;
    let names: Vec<String> = weights.names().map(str::to_string).collect();
    let shapes: HashMap<String, Vec<usize>> =
        names.iter().filter_map(|n| weights.shape(n).map(|s| (n.clone(), s))).collect();
    let finetuned = names.iter().any(|n| n.starts_with("w2v_encoder."));
    let c = configs(checkpoint, &raw, finetuned)?;
    let model_name =
        c.arch.get("_name").or_else(|| c.arch.get("arch")).and_then(Value::as_str).unwrap_or_default().to_string();
    let data2vec = model_name.starts_with("data2vec") || names.iter().any(|n| n.contains("pos_conv.0.0.weight"));
    let kind = match (data2vec, finetuned) {
        (false, false) => Kind::Pretraining,
        (false, true) => Kind::Ctc,
        (true, false) => Kind::Data2Vec,
        (true, true) => Kind::Data2VecCtc,
    };
    if !model_name.is_empty() && !data2vec && !model_name.starts_with("wav2vec2") {
        return Err(Error::Unsupported {
            path: checkpoint.to_path_buf(),
            what: format!("fairseq model \"{model_name}\" (wav2vec2, wav2vec_ctc and data2vec_audio convert)"),
        });
    }
    let mut config = hf_config(checkpoint, kind, &c, &shapes)?;
    let group_norm = config.get("feat_extract_norm").and_then(Value::as_str) == Some("group");

    let vocab = match dict {
        None => None,
        Some((path, _)) if !kind.finetuned() => {
            return Err(Error::Input(format!(
                "{}: a dictionary is only used with a fine-tuned checkpoint",
                path.display()
            )));
        }
        Some((path, text)) => {
            let vocab = vocab_of_dict(path, text)?;
            let rows = config["vocab_size"].as_u64().unwrap_or(0) as usize;
            if vocab.len() != rows {
                return Err(Error::Input(format!(
                    "{} gives {} symbols (with <s> <pad> </s> <unk>), but the CTC projection has {rows} rows",
                    path.display(),
                    vocab.len()
                )));
            }
            Some(vocab)
        }
    };

    let mut tensors = Vec::new();
    let mut unused = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut sorted = names.clone();
    sorted.sort();
    for name in &sorted {
        let Some(target) = hf_name(name, kind, group_norm) else {
            unused.push(name.clone());
            continue;
        };
        if let Some(other) = seen.insert(target.clone(), name.clone()) {
            return Err(bad(checkpoint, format!("tensors {other} and {name} both map to {target}")));
        }
        let shape = shapes[name].clone();
        let values = weights.values(name, &shape)?;
        tensors.push((target, shape, values));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let preprocessor = json!({
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "sampling_rate": 16000,
        "padding_value": 0.0,
        "padding_side": "right",
        "do_normalize": c.normalize,
        "return_attention_mask": !group_norm,
    });
    config.as_object_mut().expect("object").insert(
        "speechtune_import".into(),
        json!({"from": checkpoint.file_name().map(|f| f.to_string_lossy().to_string()), "fairseq_model": model_name}),
    );
    Ok(Converted { kind, config, preprocessor, vocab, tensors, unused })
}

/// Convert `checkpoint` into a Hugging Face directory `out` (config.json, model.safetensors,
/// preprocessor_config.json, and vocab.json from `dict` for fine-tuned models). Each file is
/// written atomically, config.json last.
pub fn import(checkpoint: &Path, out: &Path, dict: Option<&Path>) -> Result<Imported> {
    let bytes = std::fs::read(checkpoint).map_err(|source| Error::Io { path: checkpoint.to_path_buf(), source })?;
    let dict_text = match dict {
        Some(d) => Some(std::fs::read_to_string(d).map_err(|source| Error::Io { path: d.to_path_buf(), source })?),
        None => None,
    };
    let c = convert(checkpoint, bytes, dict.zip(dict_text.as_deref()))?;
    let json_file = |name: &str, v: &Value| -> Result<PathBuf> {
        let path = out.join(name);
        write_atomic(&path, serde_json::to_string_pretty(v).expect("json").as_bytes())?;
        Ok(path)
    };
    let mut files = Vec::new();
    if let Some(vocab) = &c.vocab {
        files.push(json_file("vocab.json", &Value::Object(vocab.clone()))?);
        let tok = json!({
            "tokenizer_class": "Wav2Vec2CTCTokenizer", "unk_token": "<unk>", "pad_token": "<pad>",
            "bos_token": "<s>", "eos_token": "</s>", "word_delimiter_token": "|", "do_lower_case": false,
        });
        files.push(json_file("tokenizer_config.json", &tok)?);
    }
    let path = out.join("model.safetensors");
    write_safetensors(&path, &c.tensors, HashMap::from([("format".to_string(), "pt".to_string())]))?;
    files.push(path);
    files.push(json_file("preprocessor_config.json", &c.preprocessor)?);
    files.push(json_file("config.json", &c.config)?);
    Ok(Imported { kind: c.kind, config: c.config, tensors: c.tensors.len(), unused: c.unused, files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_layer_expressions() {
        let v = conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]").unwrap();
        assert_eq!(v.len(), 7);
        assert_eq!((v[0], v[4], v[6]), ((512, 10, 5), (512, 3, 2), (512, 2, 2)));
        assert_eq!(conv_layers("[(16,10,5),(16,3,2)]").unwrap(), vec![(16, 10, 5), (16, 3, 2)]);
        for bad in ["", "[(512, 10)]", "__import__('os')", "[(1,2,3)] * 99999999999", "[(0,2,2)]"] {
            assert!(conv_layers(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_follow_transformers_rules() {
        let w = |n| hf_name(n, Kind::Pretraining, true);
        assert_eq!(
            w("encoder.layers.3.self_attn.k_proj.weight").unwrap(),
            "wav2vec2.encoder.layers.3.attention.k_proj.weight"
        );
        assert_eq!(
            w("encoder.pos_conv.0.weight_g").unwrap(),
            "wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original0"
        );
        assert_eq!(w("layer_norm.bias").unwrap(), "wav2vec2.feature_projection.layer_norm.bias");
        assert_eq!(w("quantizer.vars").unwrap(), "quantizer.codevectors");
        assert_eq!(w("final_proj.weight").unwrap(), "project_hid.weight");
        assert_eq!(
            w("feature_extractor.conv_layers.0.2.weight").unwrap(),
            "wav2vec2.feature_extractor.conv_layers.0.layer_norm.weight"
        );
        assert_eq!(w("feature_extractor.conv_layers.1.2.weight"), None, "group norm only in layer 0");
        let ctc = hf_name("w2v_encoder.w2v_model.encoder.layers.11.fc2.bias", Kind::Ctc, false).unwrap();
        assert_eq!(ctc, "wav2vec2.encoder.layers.11.feed_forward.output_dense.bias");
        assert_eq!(hf_name("w2v_encoder.proj.weight", Kind::Ctc, false).unwrap(), "lm_head.weight");
        let d = hf_name("encoder.pos_conv.4.0.bias", Kind::Data2Vec, false).unwrap();
        assert_eq!(d, "encoder.pos_conv_embed.layers.4.conv.bias");
        assert_eq!(hf_name("final_proj.0.weight", Kind::Data2Vec, false), None);
    }
}
