//! Every task × method trains for a few steps on a small corpus cut from the demo corpus.

use std::path::PathBuf;

mod common;

use common::{METHODS, config, losses, mini_corpus, opts};
use speechtune_train::{RunConfig, train};

#[test]
fn every_task_and_method_trains() {
    let tmp = tempfile::tempdir().unwrap();
    mini_corpus(tmp.path());
    let mut trainable_by_method = std::collections::BTreeMap::new();
    for task in ["asr", "lid", "classify", "joint_asr_lid", "ctc_plus_lid"] {
        for (name, method) in METHODS {
            let out = tmp.path().join(format!("run-{task}-{name}"));
            let s = train(&config(tmp.path(), &out, task, method, ""), &opts())
                .unwrap_or_else(|e| panic!("{task} × {name}: {e}"));
            assert_eq!((s.steps, s.skipped_steps), (3, 0), "{task} × {name}");
            assert_eq!(s.last.utterances, 4, "{task} × {name}");
            if task == "lid" || task == "classify" {
                assert!(s.last.accuracy.is_some() && s.last.per_language.len() == 2, "{task} × {name}");
                assert_eq!(s.last.confusion.iter().flatten().sum::<usize>(), 4, "{task} × {name}");
            } else {
                assert!(s.last.cer > 0.0, "{task} × {name}: CER {}", s.last.cer);
            }
            let ckpt = out.join("checkpoints/step-3");
            let mut files = vec![
                "config.toml",
                "vocab.json",
                "classes.json",
                "eval.json",
                "heads.safetensors",
                "resume/state.json",
                "resume/model.bpk",
                "resume/optim.bpk",
            ];
            match name {
                "frozen" => {}
                "lora" => files.extend(["adapter_model.safetensors", "adapter_config.json"]),
                _ => files.push("upstream.safetensors"),
            }
            for f in files {
                assert!(ckpt.join(f).is_file(), "{task} × {name}: {f}");
            }
            assert!(out.join("best/heads.safetensors").is_file() && out.join("summary.json").is_file());
            let classes: Vec<String> =
                serde_json::from_str(&std::fs::read_to_string(ckpt.join("classes.json")).unwrap()).unwrap();
            let expect: &[&str] = if task == "classify" { &["germanic", "romance"] } else { &["deu", "spa"] };
            assert_eq!(classes, expect, "{task} × {name}");
            let losses = losses(&out);
            assert!(losses.len() == 3 && losses.iter().all(|l| l.is_finite()), "{task} × {name}: {losses:?}");
            trainable_by_method.entry(task).or_insert_with(Vec::new).push((
                name,
                s.trainable_parameters,
                s.total_parameters,
            ));
        }
    }
    for (task, rows) in trainable_by_method {
        let n = |m: &str| rows.iter().find(|r| r.0 == m).unwrap().1;
        let frozen = n("frozen");
        let total = rows.iter().find(|r| r.0 == "full").unwrap().2;
        assert!(
            frozen < n("bitfit") && n("bitfit") < n("lora") && n("lora") < n("full") && n("full") < total,
            "{task}: {rows:?}"
        );
        // LoRA r=4 on q and v of 4 layers of width 128: 4 × 2 × (128×4 + 4×128).
        assert_eq!(n("lora") - frozen, 4 * 2 * (128 * 4 + 4 * 128), "{task}");
        // Houlsby adapters, 2 per layer, 128 → 16 → 128 with biases.
        assert_eq!(n("adapter") - frozen, 4 * 2 * (128 * 16 + 16 + 16 * 128 + 128), "{task}");
        // Prefix: 4 layers × 4 tokens × (key + value) of width 128.
        assert_eq!(n("prefix") - frozen, 4 * 4 * 2 * 128, "{task}");
        // ConvAdapter per layer: LayerNorm 2·128, grouped conv 128→64 (k=3, 2 inputs each) + bias,
        // conv 64→64 k=5 + bias, conv 64→128 k=3 + bias, SE 128→8→128 with biases.
        let conv =
            2 * 128 + (64 * 2 * 3 + 64) + (64 * 64 * 5 + 64) + (128 * 64 * 3 + 128) + (128 * 8 + 8 + 8 * 128 + 128);
        assert_eq!(n("conv_adapter") - frozen, 4 * conv, "{task}");
        // S3-Router: a score per weight of q, k, v, out (128×128) and the FFN (128×256, 256×128).
        assert_eq!(n("s3_router") - frozen, 4 * (4 * 128 * 128 + 2 * 128 * 256), "{task}");
    }
}

#[test]
fn every_shipped_config_parses() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo")).join("../../configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let pretraining = path.file_name().is_some_and(|f| f.to_string_lossy().starts_with("pretrain_"));
        if path.extension().is_some_and(|e| e == "toml") {
            if pretraining {
                let p = speechtune_train::pretrain::PretrainConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
                assert!(dir.join("..").join(&p.model.from).is_file(), "{}: model.from", path.display());
            } else {
                RunConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
            }
            n += 1;
        }
    }
    // One per task × method, each of that task and method, ...
    for task in ["asr", "lid", "classify", "joint_asr_lid", "ctc_plus_lid"] {
        for (method, _) in METHODS {
            let cfg = RunConfig::load(&dir.join(format!("{task}_{method}.toml")), &[]).unwrap();
            assert_eq!(cfg.method.name(), method);
            assert_eq!(serde_json::to_value(cfg.task.kind).unwrap(), task);
        }
    }
    // ... the demo's two (the demo and its LID probe), the two pre-training configs, and the
    // three for Whisper (seed 003's LID with LoRA and frozen, seq2seq ASR with LoRA).
    for (name, kind, method) in [
        ("whisper_lid_lora", "lid", "lora"),
        ("whisper_lid_frozen", "lid", "frozen"),
        ("whisper_seq2seq_lora", "seq2seq_asr", "lora"),
    ] {
        let cfg = RunConfig::load(&dir.join(format!("{name}.toml")), &[]).unwrap();
        assert_eq!((serde_json::to_value(cfg.task.kind).unwrap(), cfg.method.name()), (kind.into(), method));
    }
    assert_eq!(n, 5 * METHODS.len() + 4 + 3);
}

#[test]
fn early_stopping_and_the_linear_ctc_head() {
    let tmp = tempfile::tempdir().unwrap();
    mini_corpus(tmp.path());
    // lr 0: nothing improves after the first evaluation, so patience 2 stops at step 3.
    let out = tmp.path().join("stop");
    let extra = "eval_every = 1\nearly_stopping_patience = 2\nbest_metric = \"wer\"";
    let mut cfg = config(tmp.path(), &out, "asr", "kind = \"frozen\"", extra);
    cfg.train.steps = 10;
    cfg.train.lr = 0.0;
    cfg.task.head = speechtune_train::config::CtcHeadKind::Linear;
    let s = train(&cfg, &opts()).unwrap();
    assert!(s.stopped_early);
    assert_eq!((s.steps, s.best.step), (3, 1));
    assert_eq!(s.last.wer, s.best.wer);
    let best: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("best/eval.json")).unwrap()).unwrap();
    assert_eq!(best["step"], 1);
    // fairseq's head: one linear layer (128 → vocabulary) on the last hidden state.
    let bytes = std::fs::read(out.join("best/heads.safetensors")).unwrap();
    let heads = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = heads.names().into_iter().map(String::from).collect();
    names.sort();
    assert_eq!(names, ["ctc.Linear.out.bias", "ctc.Linear.out.weight", "featurizer.weights"]);
    assert_eq!(heads.tensor("ctc.Linear.out.weight").unwrap().shape()[0], 128);
}
