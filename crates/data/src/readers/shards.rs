//! Uncompressed tar shards with a manifest, read in place without extracting.
//!
//! The layout (written by `speechtune preprocess`): a folder of `*.tar` shards and
//! `shards.tsv` with the columns `shard` (file name), `member` (path inside the tar), `source`
//! (the original file), `start`, `end`, `duration` (seconds), and optionally `text`, `lang`,
//! `label`. Each shard is indexed once by walking its headers; members are then read with one
//! seek each.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{Table, number};
use crate::error::{Error, Problems, Result};
use crate::item::{AudioSource, Utterance};

pub const MANIFEST: &str = "shards.tsv";
pub const COLUMNS: [&str; 6] = ["shard", "member", "source", "start", "end", "duration"];

/// Member name → (data offset, size) in one tar file.
pub type TarIndex = HashMap<String, (u64, u64)>;

/// Index one tar file by walking its headers.
pub fn index_tar(path: &Path) -> Result<TarIndex> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let bad =
        |e: std::io::Error| Error::Layout { path: path.to_path_buf(), reason: format!("not a readable tar: {e}") };
    let len = file.metadata().map_err(|source| Error::Io { path: path.to_path_buf(), source })?.len();
    let mut archive = tar::Archive::new(file);
    let mut index = HashMap::new();
    for entry in archive.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let name = entry.path().map_err(bad)?.to_string_lossy().to_string();
        let (offset, size) = (entry.raw_file_position(), entry.size());
        if offset.checked_add(size).is_none_or(|end| end > len) {
            return Err(Error::Layout {
                path: path.to_path_buf(),
                reason: format!(
                    "tar member {name} claims {size} bytes at {offset}, past the end of the file ({len} bytes)"
                ),
            });
        }
        index.insert(name, (offset, size));
    }
    Ok(index)
}

/// Read the manifest `DIR/shards.tsv` (or a given manifest file) and locate every member.
pub fn read(manifest: &Path, problems: &mut Problems) -> Result<Vec<Utterance>> {
    let dir = manifest.parent().unwrap_or(Path::new("."));
    let table = Table::read(manifest, problems)?;
    let cols: Vec<Option<usize>> = COLUMNS.iter().map(|c| table.column(c)).collect();
    if cols.iter().any(|c| c.is_none()) {
        return Err(Error::Layout {
            path: manifest.to_path_buf(),
            reason: format!("header needs the columns {}", COLUMNS.join(", ")),
        });
    }
    let col = |i: usize| cols[i].expect("checked above");
    let (text, lang, label) = (table.column("text"), table.column("lang"), table.column("label"));
    let mut indexes: HashMap<String, Option<TarIndex>> = HashMap::new();
    let mut out = Vec::new();
    for (n, row) in &table.rows {
        let shard_name = &row[col(0)];
        let shard: PathBuf = dir.join(shard_name);
        let index = match indexes.entry(shard_name.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(match index_tar(&shard) {
                Ok(i) => Some(i),
                Err(e) => {
                    problems.report(manifest, *n, e.to_string())?;
                    None
                }
            }),
        };
        let Some(index) = index else { continue };
        let member = &row[col(1)];
        let Some(&(offset, size)) = index.get(member) else {
            problems.report(manifest, *n, format!("member {member} not in {shard_name}"))?;
            continue;
        };
        let nums = (number(Some(&row[col(3)])), number(Some(&row[col(4)])), number(Some(&row[col(5)])));
        let (Ok(_start), Ok(_end), Ok(duration)) = nums else {
            problems.report(manifest, *n, "start, end and duration must be numbers")?;
            continue;
        };
        let id = Path::new(member).file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        let mut u = Utterance::new(id, AudioSource::TarMember { shard, member: member.clone(), offset, size });
        // `start`/`end` locate the segment in its source file; the member holds just the segment.
        u.duration = duration;
        u.text = text.map(|c| row[c].clone()).filter(|s| !s.trim().is_empty());
        u.lang = lang.map(|c| row[c].clone()).filter(|s| !s.is_empty());
        u.label = label.map(|c| row[c].clone()).filter(|s| !s.is_empty());
        out.push(u);
    }
    Ok(out)
}
