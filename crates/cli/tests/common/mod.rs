//! Helpers shared by the CLI's test binaries.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

pub fn root() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo")).join("../..")
}

pub fn speechtune(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_speechtune")).args(args).current_dir(root()).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

pub fn tensors(path: &std::path::Path) -> std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> {
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

/// Two languages of the demo corpus, 6 training and 2 dev/test utterances each (ML-SUPERB layout).
pub fn mini_corpus(dir: &std::path::Path) {
    for lang in ["deu", "spa"] {
        let src = root().join("data/demo/espeak").join(lang);
        let dst = dir.join("mini").join(lang);
        std::fs::create_dir_all(dst.join("wav")).unwrap();
        for (split, from, take) in [("train", "train", 6), ("dev", "dev", 2), ("test", "dev", 2)] {
            let text = std::fs::read_to_string(src.join(format!("transcript_10min_{from}.txt"))).unwrap();
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
