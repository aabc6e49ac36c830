//! Every task × method trains for a few steps on a small corpus cut from the demo corpus.

use std::path::{Path, PathBuf};

use speechtune_train::{RunConfig, TrainOptions, train};

fn demo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/demo")
}

/// Two languages, 6 training and 2 dev utterances each, in ML-SUPERB layout, and the same
/// files in a TSV manifest whose `label` is the language family (for `classify`).
fn mini_corpus(root: &Path) {
    let mut manifest = String::from("path\tlang\tlabel\tsplit\n");
    for (lang, family) in [("deu", "germanic"), ("spa", "romance")] {
        let src = demo().join("espeak").join(lang);
        let dst = root.join("mini").join(lang);
        std::fs::create_dir_all(dst.join("wav")).unwrap();
        for (split, take) in [("train", 6), ("dev", 2)] {
            let text = std::fs::read_to_string(src.join(format!("transcript_10min_{split}.txt"))).unwrap();
            let lines: Vec<&str> = text.lines().take(take).collect();
            for l in &lines {
                let id = l.split_whitespace().next().unwrap();
                std::fs::copy(src.join("wav").join(format!("{id}.ogg")), dst.join("wav").join(format!("{id}.ogg")))
                    .unwrap();
                manifest += &format!("mini/{lang}/wav/{id}.ogg\t{lang}\t{family}\t{split}\n");
            }
            std::fs::write(dst.join(format!("transcript_10min_{split}.txt")), lines.join("\n") + "\n").unwrap();
        }
    }
    std::fs::write(root.join("families.tsv"), manifest).unwrap();
}

fn config(root: &Path, out: &Path, task: &str, method: &str, extra: &str) -> RunConfig {
    let data = if task == "classify" { root.join("families.tsv") } else { root.to_path_buf() };
    RunConfig::from_toml(&format!(
        r#"
output_dir = {out:?}
[upstream]
model = "builtin:tiny"
[method]
{method}
[task]
kind = "{task}"
[data]
root = {root:?}
workers = 1
[data.batch]
max_seconds = 12.0
[train]
steps = 3
lr = 1e-3
{extra}
"#,
        out = out.display().to_string(),
        root = data.display().to_string(),
    ))
    .unwrap()
}

const METHODS: [(&str, &str); 7] = [
    ("frozen", "kind = \"frozen\""),
    ("lora", "kind = \"lora\"\nr = 4"),
    ("full", "kind = \"full\""),
    ("adapter", "kind = \"adapter\"\nreduction_factor = 8"),
    ("conv_adapter", "kind = \"conv_adapter\""),
    ("prefix", "kind = \"prefix\"\nnum_virtual_tokens = 4"),
    ("bitfit", "kind = \"bitfit\""),
];

fn opts() -> TrainOptions {
    TrainOptions { progress: false, resume: false }
}

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
            let losses: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get("loss")?.as_f64())
                .collect();
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
    }
}

#[test]
fn every_shipped_config_parses() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            RunConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    // One per task × method, each of that task and method, plus the demo's.
    for task in ["asr", "lid", "classify", "joint_asr_lid", "ctc_plus_lid"] {
        for (method, _) in METHODS {
            let cfg = RunConfig::load(&dir.join(format!("{task}_{method}.toml")), &[]).unwrap();
            assert_eq!(cfg.method.name(), method);
            assert_eq!(serde_json::to_value(cfg.task.kind).unwrap(), task);
        }
    }
    assert_eq!(n, 5 * METHODS.len() + 1);
}

fn files_equal(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[test]
fn a_resumed_run_ends_with_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    mini_corpus(tmp.path());
    // Everything random at once: LoRA dropout, downstream dropout, time/channel masks, LayerDrop,
    // two micro-batches per update, reshuffled epochs (12 utterances in 12-s batches: an epoch
    // is a few updates).
    let extra = "eval_every = 2\ngrad_accumulation = 2\nkeep_last = 5\n[augment]\nmask_time_prob = 0.3\nmask_time_length = 3\nmask_feature_prob = 0.2\nlayerdrop = 0.2";
    let method = "kind = \"lora\"\nr = 4\nlora_dropout = 0.1";
    let whole = tmp.path().join("whole");
    let mut cfg = config(tmp.path(), &whole, "joint_asr_lid", method, extra);
    cfg.train.steps = 6;
    let a = train(&cfg, &opts()).unwrap();
    assert_eq!(a.steps, 6);

    // The same run "killed" after its step-2 checkpoint: later checkpoints never happened.
    let killed = tmp.path().join("killed");
    let mut cfg_b = cfg.clone();
    cfg_b.output_dir = killed.clone();
    train(&cfg_b, &opts()).unwrap();
    for step in [4, 6] {
        std::fs::remove_dir_all(killed.join(format!("checkpoints/step-{step}"))).unwrap();
    }
    let again = train(&cfg_b, &opts()).unwrap_err().to_string();
    assert!(again.contains("--resume"), "{again}");
    let b = train(&cfg_b, &TrainOptions { progress: false, resume: true }).unwrap();
    assert_eq!((b.resumed_from, b.steps), (Some(2), 6));
    // (The optimiser files differ by parameter ids, which are random per process.)
    for f in ["heads.safetensors", "adapter_model.safetensors"] {
        assert!(
            files_equal(&whole.join("checkpoints/step-6").join(f), &killed.join("checkpoints/step-6").join(f)),
            "{f} differs after resuming"
        );
    }
    assert_eq!(a.last, b.last);
    // The metrics log has each step once.
    let steps: Vec<u64> = std::fs::read_to_string(killed.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get("step")?.as_u64())
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
}
