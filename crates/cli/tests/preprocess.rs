//! `speechtune preprocess`: conversion of a folder of mixed formats (with bad files among them),
//! VAD segmentation into tar shards that is killed again and again and still ends with exactly
//! the segments of an uninterrupted run, and training on the shards.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo")).join("../..")
}

fn speechtune(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_speechtune")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}

/// 16-bit PCM WAV.
fn wav(samples: &[f32]) -> Vec<u8> {
    let data: Vec<u8> =
        speechtune_audio::flac::to_pcm16(samples).iter().flat_map(|&s| (s as i16).to_le_bytes()).collect();
    let mut out = b"RIFF".to_vec();
    out.extend((36 + data.len() as u32).to_le_bytes());
    out.extend(b"WAVEfmt ");
    out.extend(16u32.to_le_bytes());
    out.extend(1u16.to_le_bytes());
    out.extend(1u16.to_le_bytes());
    out.extend(16000u32.to_le_bytes());
    out.extend(32000u32.to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(16u16.to_le_bytes());
    out.extend(b"data");
    out.extend((data.len() as u32).to_le_bytes());
    out.extend(data);
    out
}

/// SRC/LANG/...: per language, "recordings" of 3 demo utterances with 0.6 s of silence between
/// them and 1 s around (as WAV and FLAC), one demo OGG as it is, and for deu the bad files.
fn corpus(src: &Path) -> usize {
    let demo = root().join("data/demo/espeak");
    let mut good = 0;
    for lang in ["deu", "spa"] {
        let dir = src.join(lang);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(demo.join(lang).join("wav")).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for (k, group) in files.chunks(3).take(4).enumerate() {
            let mut long = vec![0.0f32; 16000];
            for f in group {
                long.extend(speechtune_audio::load_mono_16k(f).unwrap());
                long.extend(vec![0.0f32; 9600]);
            }
            long.extend(vec![0.0f32; 6400]);
            if k % 2 == 0 {
                std::fs::write(dir.join(format!("rec{k}.wav")), wav(&long)).unwrap();
            } else {
                std::fs::write(
                    dir.join("sub").join(format!("rec{k}.flac")),
                    speechtune_audio::flac::encode_flac(&long).unwrap(),
                )
                .unwrap();
            }
            good += 1;
        }
        std::fs::copy(&files[20], dir.join("single.ogg")).unwrap();
        good += 1;
    }
    std::fs::copy(root().join("tests/fixtures/audio/speech.mp3"), src.join("deu/speech.mp3")).unwrap();
    good += 1;
    let bad = src.join("deu/bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("empty.flac"), b"").unwrap();
    std::fs::write(bad.join("noise.wav"), b"RIFF....WAVEfmt this is not audio").unwrap();
    let ogg = std::fs::read(src.join("deu/single.ogg")).unwrap();
    std::fs::write(bad.join("truncated.ogg"), &ogg[..ogg.len() / 3]).unwrap();
    std::fs::write(bad.join("broadcast.ts"), [0x47u8; 188 * 4]).unwrap();
    good
}

#[test]
fn convert_writes_16k_flac_for_every_readable_file_and_lists_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("flac"));
    let good = corpus(&src);
    let (ok, out) = speechtune(&["preprocess", "convert", src.to_str().unwrap(), dst.to_str().unwrap(), "--jobs", "2"]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("converted {good} files")) && out.contains("4 failed"), "{out}");
    for rel in ["deu/rec0.flac", "deu/sub/rec1.flac", "spa/single.flac", "deu/speech.flac"] {
        let a = speechtune_audio::decode_file(&dst.join(rel)).unwrap();
        assert_eq!((a.sample_rate, a.channels), (16000, 1), "{rel}");
        let original = src.join(rel).with_extension(if rel.contains("rec0") {
            "wav"
        } else if rel.contains("sub") {
            "flac"
        } else if rel.contains("single") {
            "ogg"
        } else {
            "mp3"
        });
        let b = speechtune_audio::load_mono_16k(&original).unwrap();
        assert_eq!(a.samples.len(), b.len(), "{rel}: same duration");
        let worst = a.samples.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 0.5 / 32768.0 + 1e-7, "{rel}: 16-bit rounding only, found {worst}");
    }
    let failures = std::fs::read_to_string(dst.join("failures-convert-00000.tsv")).unwrap();
    assert_eq!(failures.lines().count(), 5, "{failures}");
    for (name, why) in [("empty.flac", ""), ("noise.wav", ""), ("truncated.ogg", ""), ("broadcast.ts", "ffmpeg -i")] {
        let line = failures.lines().find(|l| l.contains(name)).unwrap_or_else(|| panic!("{name} not in {failures}"));
        assert!(line.contains(why) && line.split('\t').nth(1).is_some_and(|r| !r.is_empty()), "{line}");
    }
    let converted = std::fs::read_dir(dst.join("deu")).unwrap().count();
    // A second run has nothing to do; a lost output is redone.
    std::fs::remove_file(dst.join("spa/single.flac")).unwrap();
    let (ok, out) = speechtune(&["preprocess", "convert", src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert!(ok && out.contains(&format!("{} already done", good - 1)), "{out}");
    assert!(dst.join("spa/single.flac").is_file() && std::fs::read_dir(dst.join("deu")).unwrap().count() == converted);
    assert!(
        !std::fs::read_dir(dst.join("spa")).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains("tmp"))
    );
}

fn manifest_rows(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("shards.tsv")).unwrap();
    // Shard names depend on where a run was killed; the segments themselves must not.
    let mut rows: Vec<String> =
        text.lines().skip(1).map(|l| l.split('\t').skip(1).collect::<Vec<_>>().join("\t")).collect();
    rows.sort();
    rows
}

#[test]
fn segmentation_killed_at_any_moment_ends_with_every_segment_once_and_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    corpus(&src);
    let args = |dst: &Path| -> Vec<String> {
        [
            "preprocess",
            "segment",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
            "--shard-mb",
            "0.1",
            "--jobs",
            "2",
            "--lang-from-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let whole = tmp.path().join("whole");
    let (ok, out) = speechtune(&args(&whole).iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert!(ok, "{out}");
    let rows = manifest_rows(&whole);
    // Each of the 8 recordings holds 3 utterances of 1.5-3 s with 0.6-s pauses: one segment each
    // (the single utterances of 1.5-3 s may fall under the 2-s minimum).
    assert!(rows.len() >= 8, "{} segments: {out}", rows.len());
    for r in &rows {
        let d: f64 = r.split('\t').nth(4).unwrap().parse().unwrap();
        assert!((2.0..=30.0).contains(&d), "{r}");
    }
    let shards = std::fs::read_dir(&whole)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "tar"))
        .count();
    assert!(shards >= 3, "{shards} shards of 0.1 MB");
    assert!(std::fs::read_to_string(whole.join("failures-segment-00000.tsv")).unwrap().contains("broadcast.ts"));

    // Kill after 5, 10, 15 ... ms until a run completes: the result is the same segments. (Short
    // steps: an optimised build segments this corpus in a few tens of milliseconds.)
    let killed = tmp.path().join("killed");
    let mut kills = 0;
    for delay in (1..400).map(|k| k * 5) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_speechtune"))
            .args(args(&killed))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    assert!(kills >= 2, "the run was never interrupted");
    let (ok, out) = speechtune(&args(&killed).iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert!(ok, "{out}");
    assert_eq!(manifest_rows(&killed), rows, "after {kills} kills");
    assert!(!std::fs::read_dir(&killed).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));

    // A Slurm job array of two tasks (the second given by the environment), then merge: the
    // same segments again.
    let array = tmp.path().join("array");
    let mut a0 = args(&array);
    a0.extend(["--shard-index", "0", "--num-shards", "2"].map(String::from));
    let (ok, out) = speechtune(&a0.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert!(ok && out.contains("part 0 of 2") && out.contains("preprocess merge"), "{out}");
    let o = Command::new(env!("CARGO_BIN_EXE_speechtune"))
        .args(args(&array))
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "2")
        .output()
        .unwrap();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("part 1 of 2"));
    assert!(array.join("shard-00001-00000.tar").is_file() && array.join("shard-00000-00000.tar").is_file());
    let (ok, out) = speechtune(&["preprocess", "merge", array.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert_eq!(manifest_rows(&array), rows);

    // The shards train through the data pipeline (LID from the folder names).
    let run = tmp.path().join("run");
    let cfg = tmp.path().join("lid.toml");
    std::fs::write(
        &cfg,
        format!(
            "output_dir = {:?}\n[upstream]\nmodel = \"builtin:tiny\"\n[method]\nkind = \"frozen\"\n[task]\nkind = \"lid\"\n[data]\nroot = {:?}\nworkers = 1\n[data.batch]\nmax_seconds = 20.0\n[train]\nsteps = 2\nlr = 1e-3\n",
            run.display().to_string(),
            killed.display().to_string()
        ),
    )
    .unwrap();
    let (ok, out) = speechtune(&["train", cfg.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("2 steps"), "{out}");
}
