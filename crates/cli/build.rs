//! Embeds the demo corpus (data/demo) in the program, so that `speechtune demo` runs from any
//! directory after `cargo install`: writes `$OUT_DIR/demo_corpus.rs` with every file's relative
//! path, its bytes (`include_bytes!`) and a fingerprint of the whole corpus.

use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest.join("../../data/demo");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut list = Vec::new();
    files(&root, &mut list);
    // FNV-1a over paths and contents: names the extracted copy, so a changed corpus is re-extracted.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut code = String::from(
        "/// Every file of data/demo: (path relative to it, bytes).\npub const FILES: &[(&str, &[u8])] = &[\n",
    );
    for p in &list {
        println!("cargo:rerun-if-changed={}", p.display());
        let rel = p.strip_prefix(&root).expect("under the corpus").to_string_lossy().replace('\\', "/");
        let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        for b in rel.bytes().chain([0]).chain(bytes) {
            hash = (hash ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        code += &format!("    ({rel:?}, include_bytes!({:?})),\n", p.canonicalize().expect("an existing file"));
    }
    code += &format!("];\n/// Fingerprint of paths and contents.\npub const FINGERPRINT: &str = \"{hash:016x}\";\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("demo_corpus.rs");
    std::fs::write(&out, code).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
