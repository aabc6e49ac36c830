//! The `speechtune` binary as a user runs it.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn speechtune(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_speechtune")).args(args).current_dir(root()).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn tensors(path: &std::path::Path) -> std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            let vals = v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            (n, (v.shape().to_vec(), vals))
        })
        .collect()
}

#[test]
fn features_writes_every_hidden_state_matching_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("f.safetensors");
    let (ok, _, err) = speechtune(&[
        "features",
        "tests/fixtures/wav2vec2-xlsr",
        "tests/fixtures/audio/mono16k.wav",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let got = tensors(&out);
    let want = tensors(&root().join("tests/fixtures/wav2vec2-xlsr/reference.safetensors"));
    assert_eq!(got.len(), 3);
    for i in 0..3 {
        let (gs, gv) = &got[&format!("hidden_states.{i}")];
        let (ws, wv) = &want[&format!("single.hidden_states.{i}")];
        assert_eq!(gs, ws);
        let d = gv.iter().zip(wv).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(d <= 1e-4, "hidden_states.{i}: {d}");
    }
}

#[test]
fn features_out_dir_writes_one_file_per_input() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, _, err) = speechtune(&[
        "features",
        "tests/fixtures/whisper",
        "tests/fixtures/audio/mono16k.wav",
        "tests/fixtures/audio/stereo22k.wav",
        "--out-dir",
        tmp.path().to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    // 0.1 s and 1.0 s of audio at 320 samples per frame, within the tiny model's 50 positions.
    assert_eq!(tensors(&tmp.path().join("mono16k.safetensors"))["hidden_states.2"].0, vec![5, 32]);
    assert_eq!(tensors(&tmp.path().join("stereo22k.safetensors"))["hidden_states.0"].0, vec![50, 32]);
}

#[test]
fn inspect_counts_parameters_like_torch() {
    // torch's count for the fixture's Wav2Vec2ForCTC is 22084, of which lm_head is 12 × 32 + 12.
    let (ok, out, err) = speechtune(&["inspect", "tests/fixtures/wav2vec2-xlsr"]);
    assert!(ok, "{err}");
    assert!(out.contains("layer-norm CNN") && out.contains("pre-LN"), "{out}");
    assert!(out.contains("weights prefix wav2vec2."), "{out}");
    let total: usize = out
        .lines()
        .find(|l| l.trim_start().starts_with("total"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(total, 22084 - (12 * 32 + 12));
    let (ok, out, _) = speechtune(&["inspect", "tests/fixtures/wavlm-base"]);
    assert!(ok && out.contains("gated relative position bias") && out.contains("post-LN"), "{out}");
}

#[test]
fn bad_input_fails_with_a_message_naming_the_culprit() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.safetensors");
    let (ok, _, err) = speechtune(&[
        "features",
        "tests/fixtures/hubert-base",
        "tests/fixtures/audio/empty.wav",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("empty.wav") && err.contains("no samples"), "{err}");
    assert!(!out.exists(), "no output file on failure");
    let (ok, _, err) = speechtune(&["inspect", "tests/fixtures/audio"]);
    assert!(!ok && err.contains("no config.json"), "{err}");
    let (ok, _, err) = speechtune(&[
        "features",
        "tests/fixtures/hubert-base",
        "tests/fixtures/audio/nope.ogg",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("nope.ogg"), "{err}");
}

#[test]
fn data_stats_on_the_demo_corpus() {
    let (ok, out, err) = speechtune(&["data", "stats", "data/demo"]);
    assert!(ok, "{err}");
    assert!(out.contains("data/demo (ML-SUPERB)"), "{out}");
    let row =
        |lang: &str| out.lines().find(|l| l.starts_with(lang)).unwrap_or_else(|| panic!("no {lang} row")).to_string();
    // utterances per split: train, dev, test
    let counts =
        |l: String| l.split_whitespace().skip(1).step_by(2).map(|s| s.parse::<usize>().unwrap()).collect::<Vec<_>>();
    assert_eq!(counts(row("eng")), vec![56, 12, 24]);
    assert_eq!(counts(row("pol")), vec![42, 9, 9]);
    assert_eq!(counts(row("total")), vec![266, 57, 69]);
    assert!(out.contains("6 languages"), "{out}");
    assert!(out.contains("training vocabulary (49 characters)"), "{out}");
}

#[test]
fn data_check_reports_every_problem() {
    let (ok, out, err) = speechtune(&["data", "check", "data/demo"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("392 utterances checked, 0 problems"), "{out}");

    let tmp = tempfile::tempdir().unwrap();
    let lang = tmp.path().join("mini/xyz");
    std::fs::create_dir_all(lang.join("wav")).unwrap();
    std::fs::copy(root().join("tests/fixtures/audio/mono16k.wav"), lang.join("wav/good.wav")).unwrap();
    std::fs::copy(root().join("tests/fixtures/audio/stereo22k.wav"), lang.join("wav/rate.wav")).unwrap();
    std::fs::copy(root().join("tests/fixtures/audio/not_audio.wav"), lang.join("wav/broken.wav")).unwrap();
    std::fs::copy(root().join("tests/fixtures/audio/mono16k.wav"), lang.join("wav/dev1.wav")).unwrap();
    std::fs::write(lang.join("transcript_10min_train.txt"), "good g abc\nrate r abc\nbroken b abc\n\nnoaudio n abc\n")
        .unwrap();
    std::fs::write(lang.join("transcript_10min_dev.txt"), "dev1 d xyz!!\n").unwrap();
    std::fs::write(lang.join("transcript_10min_test.txt"), "dev1 d ...\n").unwrap();
    let skipped = tmp.path().join("skipped.tsv");
    let (ok, out, _) = speechtune(&[
        "data",
        "check",
        tmp.path().to_str().unwrap(),
        "--skip-bad",
        "--skipped",
        skipped.to_str().unwrap(),
    ]);
    assert!(!ok, "problems give exit status 1");
    for needle in [
        "6 problems",
        "transcript_10min_train.txt:4: empty line",
        "transcript_10min_train.txt:5: audio wav/noaudio.wav not found",
        "broken.wav: broken",
        "rate: sample rate 22050 Hz",
        "dev1 (dev): characters not in the training text: {'X', 'Y', 'Z'}",
        "transcript is empty after normalisation (\"...\")",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    let listed = std::fs::read_to_string(&skipped).unwrap();
    assert_eq!(listed.lines().count(), 1 + 6, "{listed}");
}
