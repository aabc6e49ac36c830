//! Exact resume. Its own test binary: the backend's random generator is per process, and
//! tests running beside it in threads would draw from it between a step's seeding and its
//! dropout masks.

mod common;

use std::path::Path;

use common::{config, mini_corpus, opts};
use speechtune_train::{TrainOptions, train};

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
    let resume = TrainOptions { progress: false, resume: true };
    let mut changed = cfg_b.clone();
    changed.train.lr *= 2.0;
    changed.task.dropout = 0.0;
    let e = train(&changed, &resume).unwrap_err().to_string();
    assert!(e.contains("cannot resume with different settings: task, train (lr"), "{e}");
    let b = train(&cfg_b, &resume).unwrap();
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
