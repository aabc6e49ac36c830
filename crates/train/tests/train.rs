//! Every task × method trains for a few steps on a small corpus cut from the demo corpus.

use std::path::{Path, PathBuf};

use speechtune_train::{RunConfig, train};

fn demo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/demo")
}

/// Two languages, 6 training and 2 dev utterances each, in ML-SUPERB layout.
fn mini_corpus(root: &Path) {
    for lang in ["deu", "spa"] {
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
            }
            std::fs::write(dst.join(format!("transcript_10min_{split}.txt")), lines.join("\n") + "\n").unwrap();
        }
    }
}

fn config(root: &Path, out: &Path, task: &str, method: &str) -> RunConfig {
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
"#,
        out = out.display().to_string(),
        root = root.display().to_string(),
    ))
    .unwrap()
}

#[test]
fn every_task_and_method_trains() {
    let tmp = tempfile::tempdir().unwrap();
    mini_corpus(tmp.path());
    let mut trainable_by_method = std::collections::BTreeMap::new();
    for task in ["asr", "lid", "joint_asr_lid", "ctc_plus_lid"] {
        for (name, method) in [
            ("frozen", "kind = \"frozen\""),
            ("lora", "kind = \"lora\"\nr = 4"),
            ("full", "kind = \"full\""),
            ("adapter", "kind = \"adapter\"\nreduction_factor = 8"),
        ] {
            let out = tmp.path().join(format!("run-{task}-{name}"));
            let s = train(&config(tmp.path(), &out, task, method), false)
                .unwrap_or_else(|e| panic!("{task} × {name}: {e}"));
            assert_eq!((s.steps, s.skipped_steps), (3, 0), "{task} × {name}");
            assert_eq!(s.last.utterances, 4, "{task} × {name}");
            if task == "lid" {
                assert!(s.last.lid_accuracy.is_some() && s.last.per_language.len() == 2);
            } else {
                assert!(s.last.cer > 0.0, "{task} × {name}: CER {}", s.last.cer);
            }
            let mut files = vec!["config.toml", "vocab.json", "metrics.jsonl", "summary.json", "heads.safetensors"];
            if name == "lora" {
                files.extend(["adapter_model.safetensors", "adapter_config.json"]);
            }
            if name == "adapter" {
                files.push("adapters.safetensors");
            }
            for f in files {
                assert!(out.join(f).is_file(), "{task} × {name}: {f}");
            }
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
    // Per task: frozen < LoRA < full, and full leaves the CNN (7 × 64-channel convs + norms) out.
    for (task, rows) in trainable_by_method {
        let (frozen, lora, full, adapter) = (rows[0].1, rows[1].1, rows[2].1, rows[3].1);
        assert!(frozen < lora && lora < full && full < rows[2].2, "{task}: {rows:?}");
        // LoRA r=4 on q and v of 4 layers of width 128: 4 × 2 × (128×4 + 4×128).
        assert_eq!(lora - frozen, 4 * 2 * (128 * 4 + 4 * 128), "{task}");
        // Houlsby adapters, 2 per layer, 128 → 16 → 128 with biases.
        assert_eq!(adapter - frozen, 4 * 2 * (128 * 16 + 16 + 16 * 128 + 128), "{task}");
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
    assert!(n >= 5, "{n} configs");
}
