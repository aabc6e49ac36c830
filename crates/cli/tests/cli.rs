//! The `speechtune` binary as a user runs it.

use std::path::PathBuf;
use std::process::Command;

mod common;

use common::{mini_corpus, root, speechtune, tensors};

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
fn features_reproduce_transformers_5_hidden_states_on_request() {
    // transformers 5 takes the last hidden state of a pre-LN encoder before the final layer norm
    // (reference_transformers5.safetensors: scripts/make_hidden_states_v5_reference.py).
    let tmp = tempfile::tempdir().unwrap();
    for model in ["wav2vec2-xlsr", "hubert-large", "wavlm-large"] {
        let out = tmp.path().join(format!("{model}.safetensors"));
        let dir = format!("tests/fixtures/{model}");
        let args = ["features", &dir, "tests/fixtures/audio/mono16k.wav", "--out", out.to_str().unwrap()];
        let (ok, _, err) = speechtune(&[&args[..], &["--transformers", "5"]].concat());
        assert!(ok, "{err}");
        let got = tensors(&out);
        let want = tensors(&root().join(&dir).join("reference.safetensors"));
        let v5 = tensors(&root().join(&dir).join("reference_transformers5.safetensors"));
        let last = got.len() - 1;
        for i in 0..=last {
            let (gs, gv) = &got[&format!("hidden_states.{i}")];
            let (ws, wv) = if i == last {
                &v5["single.last_hidden_state_before_norm"]
            } else {
                &want[&format!("single.hidden_states.{i}")]
            };
            assert_eq!(gs, ws, "{model} {i}");
            let d = gv.iter().zip(wv).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(d <= 1e-4, "{model} hidden_states.{i}: {d}");
        }
        // The 4.x choice differs in the last state only, and the flag knows no other version.
        let (_, gv) = &got[&format!("hidden_states.{last}")];
        let (_, wv) = &want[&format!("single.hidden_states.{last}")];
        assert!(gv.iter().zip(wv).any(|(a, b)| (a - b).abs() > 1e-2), "{model}");
    }
    let (ok, _, err) =
        speechtune(&["features", "tests/fixtures/wav2vec2-xlsr", "x.wav", "--out", "y", "--transformers", "3"]);
    assert!(!ok && err.contains("transformers 3: expected 4 or 5"), "{err}");
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

fn write_config(dir: &std::path::Path, corpus: &std::path::Path, out: &std::path::Path, steps: usize) -> PathBuf {
    let path = dir.join(format!("{}.toml", out.file_name().unwrap().to_string_lossy()));
    std::fs::write(
        &path,
        format!(
            r#"output_dir = {out:?}
[upstream]
model = "builtin:tiny"
[method]
kind = "lora"
r = 4
[task]
kind = "joint_asr_lid"
[data]
root = {corpus:?}
workers = 1
[data.batch]
max_seconds = 12.0
[train]
steps = {steps}
lr = 1e-3
checkpoint_every = 1
eval_every = 4
"#,
            out = out.display().to_string(),
            corpus = corpus.display().to_string()
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_killed_training_process_resumes_to_the_same_weights_and_the_model_is_usable() {
    let tmp = tempfile::tempdir().unwrap();
    mini_corpus(tmp.path());
    let corpus = tmp.path().to_path_buf();
    let steps = 8;
    let whole = tmp.path().join("whole");
    let cfg = write_config(tmp.path(), &corpus, &whole, steps);
    let (ok, out, err) = speechtune(&["train", cfg.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("dev at end (step 8)") && out.contains("best checkpoint"), "{out}");

    // The same run, killed with SIGKILL once its second checkpoint exists, then resumed.
    let killed = tmp.path().join("killed");
    let cfg = write_config(tmp.path(), &corpus, &killed, steps);
    let mut child = Command::new(env!("CARGO_BIN_EXE_speechtune"))
        .args(["train", cfg.to_str().unwrap()])
        .current_dir(root())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let second = killed.join("checkpoints/step-2/resume/state.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !second.is_file() {
        assert!(std::time::Instant::now() < deadline, "no checkpoint after 2 minutes");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!killed.join(format!("checkpoints/step-{steps}")).exists(), "the run finished before it was killed");
    let (ok, _, err) = speechtune(&["train", cfg.to_str().unwrap()]);
    assert!(!ok && err.contains("--resume"), "{err}");
    let (ok, out, err) = speechtune(&["train", cfg.to_str().unwrap(), "--resume"]);
    assert!(ok, "{err}");
    assert!(out.contains("resumed at step"), "{out}");
    for f in ["heads.safetensors", "adapter_model.safetensors"] {
        let a = std::fs::read(whole.join(format!("checkpoints/step-{steps}")).join(f)).unwrap();
        let b = std::fs::read(killed.join(format!("checkpoints/step-{steps}")).join(f)).unwrap();
        assert!(a == b, "{f} differs after kill and resume");
    }
    // Only the last keep_last = 2 checkpoints remain.
    let left: Vec<String> = std::fs::read_dir(killed.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(left, ["step-7", "step-8"]);

    // eval, transcribe, identify on the trained run.
    let run = whole.to_str().unwrap();
    let (ok, out, err) = speechtune(&["eval", run, "--split", "test"]);
    assert!(ok, "{err}");
    assert!(out.contains("on test (4 utterances): CER") && out.contains("confusion"), "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(whole.join("best/eval_test.json")).unwrap()).unwrap();
    assert_eq!(report["utterances"], 4);
    assert!(report["cer"].as_f64().unwrap() > 0.0);
    let predictions = std::fs::read_to_string(whole.join("best/predictions_test.tsv")).unwrap();
    assert_eq!(predictions.lines().count(), 5, "{predictions}");
    let (ok, _, err) = speechtune(&["eval", run, "--split", "valid"]);
    assert!(!ok && err.contains("--split valid: expected train, dev or test"), "{err}");

    let wav = corpus.join("mini/deu/wav");
    let first = std::fs::read_dir(&wav).unwrap().next().unwrap().unwrap().path();
    let (ok, out, err) = speechtune(&["transcribe", run, first.to_str().unwrap()]);
    assert!(ok, "{err}");
    let fields: Vec<&str> = out.trim_end().split('\t').collect();
    assert_eq!(fields.len(), 3, "path, text, language: {out:?}");
    assert_eq!(fields[0], first.to_str().unwrap());
    let (ok, out, err) = speechtune(&["identify", run, first.to_str().unwrap(), "tests/fixtures/audio/mono16k.wav"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    let (ok, _, err) = speechtune(&["transcribe", run, "missing.wav"]);
    assert!(!ok && err.contains("missing.wav"), "{err}");
    let (ok, _, err) = speechtune(&["transcribe", run, first.to_str().unwrap(), "--logits", "l.safetensors"]);
    assert!(!ok && err.contains("--logits is for Whisper"), "{err}");
}

#[test]
fn analyze_layers_tabulates_and_plots_several_runs() {
    let tmp = tempfile::tempdir().unwrap();
    mini_corpus(tmp.path());
    let mut runs = Vec::new();
    for name in ["run_a", "run_b"] {
        let out = tmp.path().join(name);
        let cfg = write_config(tmp.path(), tmp.path(), &out, 2);
        let (ok, _, err) = speechtune(&["train", cfg.to_str().unwrap()]);
        assert!(ok, "{err}");
        runs.push(out);
    }
    let plots = tmp.path().join("plots");
    let (ok, out, err) = speechtune(&[
        "analyze",
        "layers",
        runs[0].to_str().unwrap(),
        runs[1].join("checkpoints/step-2").to_str().unwrap(),
        "--out",
        plots.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let csv = std::fs::read_to_string(plots.join("layer_weights.csv")).unwrap();
    assert_eq!(csv, out.lines().take(6).collect::<Vec<_>>().join("\n") + "\n");
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "layer,run_a,run_b");
    assert_eq!(rows.len(), 6, "CNN output + 4 layers: {csv}");
    for col in 1..=2 {
        let sum: f64 = rows[1..].iter().map(|r| r.split(',').nth(col).unwrap().parse::<f64>().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-4, "weights sum to 1: {csv}");
    }
    let svg = std::fs::read_to_string(plots.join("layer_weights.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("run_a") && svg.contains("run_b") && svg.len() > 2000);
}

#[test]
fn analyze_cost_measures_each_method_in_its_own_process() {
    let tmp = tempfile::tempdir().unwrap();
    mini_corpus(tmp.path());
    let cfg = write_config(tmp.path(), tmp.path(), &tmp.path().join("base"), 2);
    let (ok, out, err) = speechtune(&[
        "analyze",
        "cost",
        cfg.to_str().unwrap(),
        "--methods",
        "frozen,lora,full",
        "--steps",
        "2",
        "--out",
        tmp.path().to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let csv = std::fs::read_to_string(tmp.path().join("cost.csv")).unwrap();
    let rows: Vec<Vec<f64>> =
        csv.lines().skip(1).map(|l| l.split(',').skip(1).map(|x| x.parse().unwrap()).collect()).collect();
    assert_eq!(rows.len(), 3, "{out}");
    let (frozen, lora, full) = (&rows[0], &rows[1], &rows[2]);
    assert!(frozen[0] < lora[0] && lora[0] < full[0], "trainable: {csv}");
    assert!(frozen[1] == full[1], "same total without LoRA: {csv}");
    // A full fine-tuning checkpoint holds the upstream too.
    assert!(full[3] > lora[3] && lora[3] > frozen[3], "checkpoint bytes: {csv}");
    for r in &rows {
        assert!(r[4] > 0.0 && r[5] > 10e6, "step time and peak RSS measured: {csv}");
    }
}

#[test]
fn s3_router_per_language_masks_transcribe_compare_and_export() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    mini_corpus(&corpus);
    let out = tmp.path().join("s3");
    let cfg = tmp.path().join("s3.toml");
    std::fs::write(
        &cfg,
        format!(
            "output_dir = {:?}\n[upstream]\nmodel = \"builtin:tiny\"\n[method]\nkind = \"s3_router\"\nprune_rate = 0.8\nfix_attn = true\n[task]\nkind = \"asr\"\n[data]\nroot = {:?}\nworkers = 1\n[data.batch]\nmax_seconds = 12.0\n[train]\nsteps = 2\nlr = 5e-2\n",
            out.display().to_string(),
            corpus.display().to_string()
        ),
    )
    .unwrap();
    let (ok, stdout, stderr) = speechtune(&["train", cfg.to_str().unwrap(), "--per-language"]);
    assert!(ok, "{stdout}{stderr}");
    let langs: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(out.join("languages.json")).unwrap()).unwrap();
    assert_eq!(langs, ["deu", "spa"]);
    for l in &langs {
        assert!(out.join(l).join("best/masks.safetensors").is_file(), "{l}");
    }

    // Similarity: 1 on the diagonal, symmetric, below 1 between the languages (masks moved apart).
    let plots = tmp.path().join("plots");
    let (ok, stdout, stderr) =
        speechtune(&["analyze", "masks", out.to_str().unwrap(), "--out", plots.to_str().unwrap()]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("80.00% of") || stdout.contains("(20.00% sparsity)"), "{stdout}");
    let csv = std::fs::read_to_string(plots.join("masks_iou.csv")).unwrap();
    let rows: Vec<Vec<f64>> =
        csv.lines().skip(1).map(|l| l.split(',').skip(1).map(|v| v.parse().unwrap()).collect()).collect();
    assert_eq!((rows[0][0], rows[1][1]), (1.0, 1.0));
    assert_eq!(rows[0][1], rows[1][0]);
    assert!(rows[0][1] > 0.5 && rows[0][1] < 1.0, "{csv}");
    for f in ["masks_iou.png", "masks_cosine.svg", "masks_iou_pruned.csv"] {
        assert!(std::fs::metadata(plots.join(f)).unwrap().len() > 40, "{f}");
    }

    // The language picks the model; without one the folder says what it holds.
    let wav = root().join("tests/fixtures/audio/speech.ogg");
    let (ok, stdout, stderr) =
        speechtune(&["transcribe", out.to_str().unwrap(), "--lang", "spa", wav.to_str().unwrap()]);
    assert!(ok && stdout.trim_end().ends_with("\tspa"), "{stdout}{stderr}");
    let (ok, _, stderr) = speechtune(&["transcribe", out.to_str().unwrap(), wav.to_str().unwrap()]);
    assert!(!ok && stderr.contains("--lang") && stderr.contains("deu, spa"), "{stderr}");
    // ... or a LID run picks it.
    let lid = tmp.path().join("lid");
    let lid_cfg = tmp.path().join("lid.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&format!("{:?}", out.display().to_string()), &format!("{:?}", lid.display().to_string()));
    let text = text
        .replace("kind = \"s3_router\"\nprune_rate = 0.8\nfix_attn = true", "kind = \"frozen\"")
        .replace("kind = \"asr\"", "kind = \"lid\"");
    std::fs::write(&lid_cfg, text).unwrap();
    let (ok, stdout, stderr) = speechtune(&["train", lid_cfg.to_str().unwrap()]);
    assert!(ok, "{stdout}{stderr}");
    let (ok, stdout, stderr) =
        speechtune(&["transcribe", out.to_str().unwrap(), "--lid", lid.to_str().unwrap(), wav.to_str().unwrap()]);
    let picked = stdout.trim_end().rsplit('\t').next().unwrap_or("").to_string();
    assert!(ok && (picked == "deu" || picked == "spa"), "{stdout}{stderr}");

    // Export: a Hugging Face folder whose masked weights are zero, with a sparsity report.
    let hf = tmp.path().join("hf");
    let (ok, stdout, stderr) =
        speechtune(&["export", out.join("deu").to_str().unwrap(), "--out", hf.to_str().unwrap()]);
    assert!(ok && stdout.contains("(20.00% sparsity)"), "{stdout}{stderr}");
    let sparsity = std::fs::read_to_string(hf.join("sparsity.csv")).unwrap();
    assert_eq!(sparsity.lines().count(), 1 + 8 + 1, "8 feed-forward projections + total: {sparsity}");
    let (ok, stdout, stderr) = speechtune(&["inspect", hf.to_str().unwrap()]);
    assert!(ok && stdout.contains("671968"), "{stdout}{stderr}");
}

/// Every file under `dir`, relative to it, with its bytes.
fn tree(dir: &std::path::Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    fn walk(base: &std::path::Path, dir: &std::path::Path, out: &mut std::collections::BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.insert(p.strip_prefix(base).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = Default::default();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn the_demo_runs_from_any_directory_on_its_embedded_corpus_and_pretrained_upstream() {
    let tmp = tempfile::tempdir().unwrap();
    let (cwd, cache) = (tmp.path().join("elsewhere"), tmp.path().join("cache"));
    std::fs::create_dir_all(&cwd).unwrap();
    let demo = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_speechtune"))
            .args(["demo", "--set", "train.steps=2", "--set", "train.eval_every=2"])
            .args(extra)
            .current_dir(&cwd)
            .env("SPEECHTUNE_CACHE", &cache)
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{stdout}\n{stderr}");
        stdout.to_string()
    };
    let out = demo(&[]);
    assert!(out.contains("upstream builtin:tiny-pretrained,"), "{out}");
    assert!(!out.contains("random"), "{out}");
    // The corpus was written once into the cache, byte for byte the repository's data/demo.
    let extracted: Vec<PathBuf> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(extracted.len(), 1, "{extracted:?}");
    assert!(extracted[0].file_name().unwrap().to_string_lossy().starts_with("demo-corpus-"));
    let (got, want) = (tree(&extracted[0]), tree(&root().join("data/demo")));
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the extracted corpus differs from data/demo");
    // The run is in the working directory and names what it trained on; eval reopens it.
    let run = cwd.join("runs/demo");
    let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(cfg.contains("model = \"builtin:tiny-pretrained\""), "{cfg}");
    assert!(cfg.contains(&extracted[0].to_string_lossy().to_string()), "{cfg}");
    assert!(run.join("layer_weights.svg").is_file());
    // A second demo reuses the extracted copy; the random upstream is one setting away.
    let out = demo(&["--set", "upstream.model=builtin:tiny"]);
    assert!(out.contains("upstream builtin:tiny (random weights)"), "{out}");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
}

#[test]
fn builtin_models_are_accepted_where_a_model_folder_is() {
    let total = |out: &str| -> usize {
        let line = out.lines().find(|l| l.trim_start().starts_with("total")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let (ok, pretrained, err) = speechtune(&["inspect", "builtin:tiny-pretrained"]);
    assert!(ok, "{err}");
    // The wav2vec2 part of the committed Wav2Vec2ForPreTraining model (its quantizer is not
    // read): the random built-in model's architecture, weights under `wav2vec2.`.
    assert!(pretrained.contains("weights prefix wav2vec2.") && pretrained.contains("pre-LN"), "{pretrained}");
    let (ok, random, err) = speechtune(&["inspect", "builtin:tiny"]);
    assert!(ok, "{err}");
    assert_eq!(total(&pretrained), total(&random));
    assert!(total(&random) > 600_000, "{random}");
    let (ok, _, err) = speechtune(&["inspect", "builtin:nothing"]);
    assert!(!ok);
    assert!(
        err.contains("builtin:nothing is not a built-in model (built in: builtin:tiny, builtin:tiny-pretrained)"),
        "{err}"
    );
}

/// A pretrained Whisper folder works with `transcribe` and `identify` directly: zero-shot
/// language identification (restricted with --languages, any spelling), greedy and beam
/// decoding in a given or detected language; an unknown language is a clear error.
#[test]
fn whisper_folders_transcribe_and_identify_without_training() {
    let model = "tests/fixtures/whisper-seq2seq";
    let audio = ["tests/fixtures/audio/mono16k.wav", "tests/fixtures/audio/stereo22k.wav"];
    let (ok, out, err) = speechtune(&["identify", model, audio[0], audio[1]]);
    assert!(ok, "{err}");
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (l, a) in lines.iter().zip(audio) {
        assert_eq!((l.len(), l[0]), (3, a), "{out}");
        assert!(speechtune_models::whisper::languages::to_code(l[1]) == Some(l[1]), "{out}");
        let p: f64 = l[2].parse().unwrap();
        assert!(p > 0.01 && p <= 1.0, "{out}");
    }
    // Three candidates, named three ways: the answer is one of them, at least as likely as 1/3.
    let (ok, out, err) = speechtune(&["identify", model, audio[0], "--languages", "deu,fr,english"]);
    assert!(ok, "{err}");
    let l: Vec<&str> = out.trim().split('\t').collect();
    assert!(["de", "fr", "en"].contains(&l[1]), "{out}");
    assert!(l[2].parse::<f64>().unwrap() >= 1.0 / 3.0, "{out}");
    // The same language named twice is one candidate: the same answer and probability.
    let (ok, twice, err) = speechtune(&["identify", model, audio[0], "--languages", "deu,fr,english,de,german"]);
    assert!(ok, "{err}");
    assert_eq!(twice, out);
    for extra in [&["--language", "de"][..], &["--language", "de", "--beam", "3"], &[]] {
        let mut args = vec!["transcribe", model, audio[0], "--max-new-tokens", "6"];
        args.extend(extra);
        let (ok, out, err) = speechtune(&args);
        assert!(ok, "{err}");
        let l: Vec<&str> = out.trim_end_matches('\n').split('\t').collect();
        assert_eq!(l.len(), 3, "{out}");
        assert_eq!(l[2], if extra.is_empty() { lines[0][1] } else { "de" }, "{out}");
    }
    // Files of different lengths decoded as one batch give what each gives alone.
    for mode in ["transcribe", "identify"] {
        let run = |batch: &str| {
            let (ok, out, err) = speechtune(&[
                mode,
                model,
                audio[0],
                audio[1],
                "--max-new-tokens",
                "6",
                "--beam",
                "2",
                "--batch",
                batch,
            ]);
            assert!(ok, "{err}");
            out
        };
        assert_eq!(run("2"), run("1"), "{mode}");
    }
    // --logits: the decoder's logits along each greedy transcript, teacher forced; each new
    // token is the argmax of the logits before it (the fixture suppresses no token).
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("logits.safetensors");
    let args = ["transcribe", model, audio[0], audio[1], "--language", "de", "--max-new-tokens", "6"];
    let (ok, out, err) = speechtune(&[&args[..], &["--logits", path.to_str().unwrap()]].concat());
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    let t = tensors(&path);
    for n in 0..2 {
        let (ts, tokens) = &t[&format!("tokens.{n}")];
        let (ls, logits) = &t[&format!("logits.{n}")];
        assert_eq!((ls[0], ls[1]), (ts[0], 377), "{n}");
        let prefix = 4; // <|startoftranscript|> <|de|> <|transcribe|> <|notimestamps|>
        for j in prefix - 1..ts[0] - 1 {
            let row = &logits[j * 377..(j + 1) * 377];
            let best = (0..377).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            assert_eq!(best as f32, tokens[j + 1], "file {n}, position {j}");
        }
    }
    let (ok, _, err) = speechtune(&["identify", model, audio[0], "--logits", path.to_str().unwrap()]);
    assert!(!ok && err.contains("--logits is for `speechtune transcribe`"), "{err}");
    let (ok, _, err) = speechtune(&["transcribe", model, audio[0], "--language", "klingon"]);
    assert!(!ok && err.contains("no language token for \"klingon\"; valid codes: en zh de es"), "{err}");
    // One 30-s window per file (here the fixture's 1-s window): longer audio is refused, named.
    let (ok, _, err) = speechtune(&["transcribe", model, "data/demo/espeak/eng/wav/espeak_eng_01_v0.ogg"]);
    assert!(!ok && err.contains("longer than Whisper's 1-s window"), "{err}");
}

#[test]
fn a_launch_as_several_processes_is_refused_without_mpi() {
    let run = |var: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_speechtune"))
            .args(["inspect", "builtin:tiny"])
            .env(var, "2")
            .current_dir(root())
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    // torchrun's variables alone: the processes could never find each other.
    let (ok, err) = run("WORLD_SIZE");
    assert!(!ok && err.contains("WORLD_SIZE=2 (a torchrun-style launch)") && err.contains("mpirun -n 2"), "{err}");
    // An MPI launcher's, in a build without MPI: two copies would train side by side.
    if !cfg!(feature = "mpi") {
        let (ok, err) = run("OMPI_COMM_WORLD_SIZE");
        assert!(!ok && err.contains("OMPI_COMM_WORLD_SIZE=2") && err.contains("without the `mpi` feature"), "{err}");
    }
    let (ok, _, err) = speechtune(&["train", "configs/lid_lora.toml", "--set", "train.collective_timeout_seconds=0"]);
    assert!(!ok && err.contains("train.collective_timeout_seconds must be positive"), "{err}");
}

/// `speechtune import fairseq`: a fine-tuned checkpoint with its dictionary becomes a folder
/// that `inspect` reads; a pickle that asks to run code is refused, naming the file.
#[test]
fn fairseq_checkpoints_are_imported() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = root().join("tests/fixtures/fairseq");
    let out = tmp.path().join("ctc");
    let (ckpt, dict) = (fx.join("wav2vec2-ctc.pt"), fx.join("dict.ltr.txt"));
    let (ok, stdout, err) = speechtune(&[
        "import",
        "fairseq",
        ckpt.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--dict",
        dict.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("Wav2Vec2ForCTC (2 layers, hidden 32), 56 tensors"), "{stdout}");
    for f in ["config.json", "model.safetensors", "preprocessor_config.json", "vocab.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let (ok, report, err) = speechtune(&["inspect", out.to_str().unwrap()]);
    assert!(ok && report.contains("layer-norm CNN, pre-LN") && report.contains("normalised: yes"), "{report}{err}");

    let bad = fx.join("malicious.pt");
    let (ok, _, err) =
        speechtune(&["import", "fairseq", bad.to_str().unwrap(), "--out", tmp.path().join("x").to_str().unwrap()]);
    assert!(!ok && err.contains("malicious.pt") && err.contains("system"), "{err}");
    assert!(!tmp.path().join("x").exists());
}
