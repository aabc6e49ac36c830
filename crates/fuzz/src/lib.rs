//! Fuzz targets for every parser of a file a user downloads or is handed: the pickle reader
//! (`pytorch_model.bin`, fairseq `.pt`), safetensors headers and shard indexes, `config.json`,
//! tokenizer files, manifests, tar shards and audio headers.
//!
//! Each target takes arbitrary bytes and must return (an error is fine) without panicking,
//! hanging, or allocating more than [`alloc::limit_for`] allows for an input of that size — so a
//! 1-KB file that claims a 100-GB tensor is refused before anything is allocated for it.
//!
//! Two drivers use the same targets: `fuzz/` (cargo-fuzz/libFuzzer, coverage-guided, nightly
//! toolchain; `fuzz/run.sh TARGET SECONDS`) for the long runs, and [`mutate`] (seeded mutations of
//! the seeds, stable Rust) in the test suite, which also replays every seed and every earlier
//! finding kept under `fuzz/regressions/TARGET/`.

pub mod alloc;
pub mod mutate;
mod targets;

pub use targets::cleanup;

use std::path::{Path, PathBuf};

pub use alloc::Limited;

/// One parser under test.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    /// Seed files, relative to the repository root (a trailing `/` takes a folder's files).
    pub seeds: &'static [&'static str],
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "pickle",
        run: targets::pickle,
        seeds: &["tests/fixtures/fairseq/", "tests/fixtures/wav2vec2-base-bin/pytorch_model.bin"],
    },
    Target {
        name: "torch",
        run: targets::torch,
        seeds: &["tests/fixtures/wav2vec2-base-bin/pytorch_model.bin", "tests/fixtures/fairseq/wav2vec2-base-args.pt"],
    },
    Target { name: "fairseq", run: targets::fairseq, seeds: &["tests/fixtures/fairseq/"] },
    Target {
        name: "safetensors",
        run: targets::safetensors,
        seeds: &[
            "tests/fixtures/wav2vec2-base/model.safetensors",
            "tests/fixtures/hubert-base/model-00001-of-00003.safetensors",
            "tests/fixtures/train-lora-ctc/",
        ],
    },
    Target {
        name: "shard_index",
        run: targets::shard_index,
        seeds: &["tests/fixtures/hubert-base/model.safetensors.index.json"],
    },
    Target {
        name: "config",
        run: targets::config,
        seeds: &[
            "tests/fixtures/wav2vec2-base/config.json",
            "tests/fixtures/wav2vec2-xlsr/config.json",
            "tests/fixtures/data2vec-audio/config.json",
            "tests/fixtures/wavlm-base/config.json",
            "tests/fixtures/whisper/config.json",
            "tests/fixtures/wav2vec2-xlsr/preprocessor_config.json",
        ],
    },
    Target { name: "tokenizer", run: targets::tokenizer, seeds: &["tests/fixtures/whisper-seq2seq/tokenizer.json"] },
    Target { name: "manifest", run: targets::manifest, seeds: &["fuzz/seeds/manifest/"] },
    Target { name: "tar", run: targets::tar, seeds: &["fuzz/seeds/tar/"] },
    Target { name: "audio", run: targets::audio, seeds: &["tests/fixtures/audio/"] },
];

pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// The repository root (this crate is `crates/fuzz`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn files(spec: &str) -> Vec<PathBuf> {
    let p = root().join(spec);
    if spec.ends_with('/') {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&p)
            .unwrap_or_else(|e| panic!("seed folder {}: {e}", p.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    } else {
        vec![p]
    }
}

/// The seed inputs of a target: its seed files as that target takes them (the config and
/// audio targets take a first byte choosing the weights / the file name extension).
pub fn seeds(t: &Target) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for spec in t.seeds {
        for path in files(spec) {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("seed {}: {e}", path.display()));
            match t.name {
                "pickle" => out.extend(targets::pickles_of(&bytes)),
                "config" => out.push([&[targets::weights_for(&path)], &bytes[..]].concat()),
                "audio" => out.push([&[targets::extension_byte(&path)], &bytes[..]].concat()),
                "manifest" => {
                    out.push([&[u8::from(path.extension().is_some_and(|e| e == "jsonl"))], &bytes[..]].concat())
                }
                _ => out.push(bytes),
            }
        }
    }
    out
}

/// Earlier findings kept as regression inputs: `fuzz/regressions/TARGET/*`.
pub fn regressions(t: &Target) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = root().join("fuzz/regressions").join(t.name);
    let mut v: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(d) => d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v.into_iter().map(|p| (p.clone(), std::fs::read(&p).expect("regression input"))).collect()
}

/// Run one input through a target under the allocation limit for its size.
pub fn run(t: &Target, data: &[u8]) {
    let _guard = alloc::limit_for(data.len());
    (t.run)(data);
}
