//! Data-parallel training: `speechtune train` / `pretrain` as several processes started by
//! `mpirun` (Open MPI), on the CPU. Needs a build with the `mpi` feature and `mpirun` on PATH:
//! `cargo test -p speechtune-cli --features mpi --test distributed` (run by `.ci/run`).
#![cfg(feature = "mpi")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{mini_corpus, root, tensors};

/// `mpirun -n N speechtune ARGS` (as root too, as on CI machines).
fn mpirun(n: usize, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-n", &n.to_string(), "--oversubscribe", env!("CARGO_BIN_EXE_speechtune")]).args(args);
    c.current_dir(root()).env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c
}

fn alone(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_speechtune"));
    c.args(args).current_dir(root()).env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c
}

fn run(mut c: Command) -> (bool, String, String) {
    let out: Output = c.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn ok(c: Command) -> String {
    let (ok, out, err) = run(c);
    assert!(ok, "{err}");
    err + &out
}

/// A LoRA joint ASR + LID run on the tiny built-in upstream, with every random draw of
/// training on (LoRA dropout, time masks) and a checkpoint every 2 updates.
fn finetune_config(dir: &Path, name: &str, accumulation: usize, steps: usize) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        r#"output_dir = {out:?}
[upstream]
model = "builtin:tiny"
[method]
kind = "lora"
r = 4
lora_dropout = 0.1
[task]
kind = "joint_asr_lid"
[data]
root = {root:?}
workers = 1
[data.batch]
max_seconds = 6.0
[train]
steps = {steps}
lr = 1e-3
grad_accumulation = {accumulation}
checkpoint_every = 2
eval_every = 4
keep_last = 10
[augment]
mask_time_prob = 0.3
mask_time_length = 3
"#,
        out = dir.join(name).display().to_string(),
        root = dir.display().to_string(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `configs/pretrain_tiny.toml` on the mini corpus, 2 updates between checkpoints.
fn pretrain_args(dir: &Path, name: &str, extra: &[String]) -> Vec<String> {
    let mut args = vec!["pretrain".to_string(), "configs/pretrain_tiny.toml".to_string()];
    let steps =
        if extra.iter().any(|e| e.starts_with("train.steps=")) { None } else { Some("train.steps=6".to_string()) };
    for s in [
        format!("output_dir={:?}", dir.join(name).display().to_string()),
        format!("data.root={:?}", dir.display().to_string()),
        "train.eval_every=3".into(),
        "train.checkpoint_every=2".into(),
        "train.keep_last=10".into(),
        "data.batch.max_seconds=8.0".into(),
    ]
    .into_iter()
    .chain(steps)
    .chain(extra.iter().cloned())
    {
        args.push("--set".into());
        args.push(s);
    }
    args
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

/// The largest difference between the tensors of two safetensors files (same names).
fn max_difference(a: &Path, b: &Path) -> f32 {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.keys().collect::<std::collections::BTreeSet<_>>(), b.keys().collect());
    let mut worst = 0.0f32;
    for (name, (shape, x)) in &a {
        assert_eq!(shape, &b[name].0, "{name}");
        for (p, q) in x.iter().zip(&b[name].1) {
            worst = worst.max((p - q).abs());
        }
    }
    worst
}

/// The fine-tuned weights of a run's checkpoint at `step`.
fn finetuned(run: &Path, step: usize) -> [PathBuf; 2] {
    let dir = run.join(format!("checkpoints/step-{step}"));
    [dir.join("heads.safetensors"), dir.join("adapter_model.safetensors")]
}

fn pretrained(run: &Path, step: usize) -> PathBuf {
    run.join(format!("checkpoints/step-{step}/model.safetensors"))
}

/// Remove the checkpoints after `step`, as if the run had been killed just after writing it.
fn cut_after(run: &Path, step: usize, last: usize) {
    for s in (step + 1)..=last {
        let _ = std::fs::remove_dir_all(run.join(format!("checkpoints/step-{s}")));
    }
}

#[test]
fn two_ranks_fine_tune_to_the_weights_of_one_process_accumulating_two_batches() {
    let tmp = tempfile::tempdir().unwrap();
    mini_corpus(tmp.path());
    let one = finetune_config(tmp.path(), "one", 2, 4);
    let two = finetune_config(tmp.path(), "two", 1, 4);
    ok(alone(&["train", one.to_str().unwrap()]));
    let said = ok(mpirun(2, &["train", two.to_str().unwrap()]));
    assert!(said.contains("data-parallel: 2 rank(s) x 1 accumulated batch(es) = 2 batches"), "{said}");
    // Rank 0 alone reports and writes: one summary, one metrics line per update.
    assert_eq!(said.matches("best checkpoint:").count(), 1, "{said}");
    let metrics = std::fs::read_to_string(tmp.path().join("two/metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let updates: Vec<&serde_json::Value> = lines.iter().filter(|v| v.get("loss").is_some()).collect();
    assert_eq!(updates.len(), 4, "{metrics}");
    // Rank 0's wait in the gradient all-reduce is logged with each update.
    assert!(updates.iter().all(|v| v["allreduce_seconds"].as_f64().is_some_and(|t| t >= 0.0)), "{metrics}");
    for step in [2, 4] {
        for (a, b) in finetuned(&tmp.path().join("one"), step).iter().zip(&finetuned(&tmp.path().join("two"), step)) {
            let d = max_difference(a, b);
            assert!(d <= 1e-5, "{} differs by {d} at step {step}", a.display());
        }
    }
    // The trained weights did move: the comparison is not between two untouched models.
    let [heads2, _] = finetuned(&tmp.path().join("two"), 2);
    let [heads4, _] = finetuned(&tmp.path().join("two"), 4);
    assert!(max_difference(&heads2, &heads4) > 1e-4);

    // `--devices cpu,cpu` started alone: speechtune starts the two processes itself.
    let three = finetune_config(tmp.path(), "three", 1, 4);
    let said = ok(alone(&["train", three.to_str().unwrap(), "--devices", "cpu,cpu"]));
    assert!(said.contains("starting 2 processes, one per device (cpu, cpu), with mpirun"), "{said}");
    for (a, b) in finetuned(&tmp.path().join("one"), 4).iter().zip(&finetuned(&tmp.path().join("three"), 4)) {
        assert!(max_difference(a, b) <= 1e-5, "{}", a.display());
    }
}

#[test]
fn two_ranks_pre_train_like_one_process_and_resume_with_another_number_of_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    mini_corpus(tmp.path());
    let dir = tmp.path();
    let accumulate = ["train.grad_accumulation=2".to_string()];
    ok(alone(&strs(&pretrain_args(dir, "one", &accumulate))));
    ok(mpirun(2, &strs(&pretrain_args(dir, "two", &[]))));
    for step in [2, 4, 6] {
        let d = max_difference(&pretrained(&dir.join("one"), step), &pretrained(&dir.join("two"), step));
        assert!(d <= 1e-5, "step {step}: {d}");
    }
    assert!(max_difference(&pretrained(&dir.join("two"), 2), &pretrained(&dir.join("two"), 6)) > 1e-4);

    // Two ranks stopped after update 2, continued by one process: it accumulates 2 batches
    // per update, as fairseq's update_freq adjusts, and ends with the same weights.
    ok(mpirun(2, &strs(&pretrain_args(dir, "shrink", &[]))));
    cut_after(&dir.join("shrink"), 2, 6);
    let mut args = pretrain_args(dir, "shrink", &[]);
    args.push("--resume".into());
    let said = ok(alone(&strs(&args)));
    assert!(said.contains("gradient accumulation 2 instead of train.grad_accumulation = 1"), "{said}");
    assert!(said.contains("resumed at update 2"), "{said}");
    assert!(max_difference(&pretrained(&dir.join("one"), 6), &pretrained(&dir.join("shrink"), 6)) <= 1e-5);

    // One process accumulating 2, continued by two ranks accumulating 1.
    ok(alone(&strs(&pretrain_args(dir, "grow", &accumulate))));
    cut_after(&dir.join("grow"), 4, 6);
    let mut args = pretrain_args(dir, "grow", &accumulate);
    args.push("--resume".into());
    let said = ok(mpirun(2, &strs(&args)));
    assert!(said.contains("gradient accumulation 1 instead of train.grad_accumulation = 2"), "{said}");
    assert!(max_difference(&pretrained(&dir.join("one"), 6), &pretrained(&dir.join("grow"), 6)) <= 1e-5);

    // 2 batches per update cannot be shared by 3 ranks.
    let mut args = pretrain_args(dir, "grow", &accumulate);
    args.extend(["--resume".into(), "--set".into(), "train.steps=8".into()]);
    let (ok3, _, err) = run(mpirun(3, &strs(&args)));
    assert!(!ok3 && err.contains("2 batches per update, which 3 ranks cannot share evenly"), "{err}");
}

/// The process of rank `rank` running with `marker` on its command line.
fn rank_pid(marker: &str, rank: usize) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        if has(&cmdline, marker.as_bytes())
            && has(&cmdline, b"speechtune")
            && !has(&cmdline, b"mpirun")
            && has(&environ, format!("OMPI_COMM_WORLD_RANK={rank}\0").as_bytes())
        {
            return Some(pid);
        }
    }
    None
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
}

/// A started job, killed if the test fails before it ends.
struct Job(Child);

impl Drop for Job {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait for `job` at most `limit`; its exit status and stderr.
fn wait_at_most(mut job: Job, limit: Duration) -> (std::process::ExitStatus, String, Duration) {
    let start = Instant::now();
    let child = &mut job.0;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status, err, start.elapsed());
        }
        assert!(start.elapsed() < limit, "still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while !path.is_file() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_killed_rank_stops_the_job_and_the_run_resumes_to_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    mini_corpus(tmp.path());
    let dir = tmp.path();
    let whole = finetune_config(dir, "whole", 1, 8);
    ok(mpirun(2, &["train", whole.to_str().unwrap()]));

    let killed = finetune_config(dir, "killed", 1, 8);
    let child = Job(mpirun(2, &["train", killed.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap());
    wait_for(&dir.join("killed/checkpoints/step-2/resume/state.json"));
    let marker = dir.join("killed.toml").display().to_string();
    let pid = rank_pid(&marker, 1).expect("rank 1 is running");
    signal(pid, "-KILL");
    let (status, err, took) = wait_at_most(child, Duration::from_secs(60));
    assert!(!status.success());
    assert!(err.contains("process rank 1") && err.contains("signal 9"), "{err}");
    assert!(took < Duration::from_secs(30), "the job took {took:?} to stop");
    assert!(!dir.join("killed/checkpoints/step-8").exists(), "the run finished before the kill");
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("killed/checkpoints"))
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with("step-"))
        .collect();
    assert!(leftovers.iter().all(|e| e.file_name().to_string_lossy().starts_with('.')), "{leftovers:?}");

    let said = ok(mpirun(2, &["train", killed.to_str().unwrap(), "--resume"]));
    assert!(said.contains("resumed at step"), "{said}");
    for (a, b) in finetuned(&dir.join("whole"), 8).iter().zip(&finetuned(&dir.join("killed"), 8)) {
        assert!(max_difference(a, b) <= 1e-5, "{}", a.display());
    }
}

#[test]
fn a_hung_rank_is_named_and_the_job_stops_within_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    mini_corpus(tmp.path());
    let dir = tmp.path();
    let args = pretrain_args(dir, "hung", &["train.steps=100000".into(), "train.collective_timeout_seconds=4".into()]);
    let child = Job(mpirun(2, &strs(&args)).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap());
    wait_for(&dir.join("hung/checkpoints/step-2/resume/state.json"));
    let marker = format!("output_dir={:?}", dir.join("hung").display().to_string());
    let pid = rank_pid(&marker, 1).expect("rank 1 is running");
    signal(pid, "-STOP");
    let (status, err, took) = wait_at_most(child, Duration::from_secs(120));
    assert!(!status.success());
    assert!(
        err.contains("rank 0 of 2:") && err.contains("waited 4 s") && err.contains("no answer from rank(s) 1"),
        "{err}"
    );
    // 4 s of timeout + at most 4 s to hear from the others, plus the update in progress.
    assert!(took < Duration::from_secs(40), "stopped after {took:?}");
}

#[test]
fn ranks_that_start_from_different_weights_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    mini_corpus(tmp.path());
    let cfg = finetune_config(tmp.path(), "mixed", 1, 2);
    let cfg = cfg.to_str().unwrap();
    // Two programs of one job (MPI's MPMD syntax): the second initialises its heads with
    // another seed.
    let mut c = mpirun(1, &["train", cfg, ":", "-n", "1", env!("CARGO_BIN_EXE_speechtune"), "train", cfg]);
    c.args(["--set", "train.seed=7"]);
    let (ok, _, err) = run(c);
    assert!(!ok);
    assert!(err.contains("rank(s) 1 start from other weights than rank 0"), "{err}");
}
