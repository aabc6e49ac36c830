//! Writing uncompressed tar shards of segments, resumably: the other half of
//! [`crate::readers::shards`].
//!
//! A shard `PREFIX-NNNNN.tar` is written as `.tar.tmp` with its manifest part `.tsv.tmp` (the
//! columns of `shards.tsv`) and renamed when closed, the manifest last. A shard closes only
//! between source files, so a finished shard (one whose `.tsv` exists) holds every segment of
//! the sources it lists. After a kill, [`ShardWriter::open`] deletes the unfinished shard and
//! reports the sources already finished: redoing the rest gives no missing and no duplicate
//! segment.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::readers::shards::COLUMNS;
use crate::{Error, Result};

/// One segment's manifest row.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentRow {
    pub member: String,
    pub source: String,
    pub start: f64,
    pub end: f64,
    pub lang: Option<String>,
}

/// The header of a shard manifest (`shards.tsv` and its per-shard parts).
pub fn manifest_header() -> String {
    format!("{}\tlang\n", COLUMNS.join("\t"))
}

struct OpenShard {
    name: String,
    builder: tar::Builder<BufWriter<File>>,
    bytes: u64,
    rows: String,
}

pub struct ShardWriter {
    dir: PathBuf,
    prefix: String,
    next: usize,
    max_bytes: u64,
    current: Option<OpenShard>,
    finished: Vec<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// Shard number of `PREFIX-NNNNN.EXT`, if `name` is one.
fn number(name: &str, prefix: &str, ext: &str) -> Option<usize> {
    name.strip_prefix(prefix)?.strip_prefix('-')?.strip_suffix(ext)?.parse().ok()
}

impl ShardWriter {
    /// Continue (or start) the shards `DIR/PREFIX-NNNNN.tar` of `max_bytes` each (a shard may
    /// exceed it by one source file's segments). Returns the writer and the sources whose
    /// segments are all in finished shards.
    pub fn open(dir: &Path, prefix: &str, max_bytes: u64) -> Result<(Self, BTreeSet<String>)> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut done = BTreeSet::new();
        let mut next = 0;
        let mut entries: Vec<PathBuf> =
            std::fs::read_dir(dir).map_err(io(dir))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            if number(&name, prefix, ".tar.tmp").or(number(&name, prefix, ".tsv.tmp")).is_some() {
                std::fs::remove_file(&path).map_err(io(&path))?;
            } else if let Some(n) = number(&name, prefix, ".tsv") {
                next = next.max(n + 1);
                let text = std::fs::read_to_string(&path).map_err(io(&path))?;
                for line in text.lines().skip(1) {
                    if let Some(source) = line.split('\t').nth(2) {
                        done.insert(source.to_string());
                    }
                }
            } else if let Some(n) = number(&name, prefix, ".tar") {
                // A tar renamed just before the kill, its manifest not yet: redo its sources.
                if !dir.join(format!("{prefix}-{n:05}.tsv")).is_file() {
                    std::fs::remove_file(&path).map_err(io(&path))?;
                }
            }
        }
        let writer = Self {
            dir: dir.to_path_buf(),
            prefix: prefix.to_string(),
            next,
            max_bytes,
            current: None,
            finished: Vec::new(),
        };
        Ok((writer, done))
    }

    fn shard(&mut self) -> Result<&mut OpenShard> {
        if self.current.is_none() {
            let name = format!("{}-{:05}", self.prefix, self.next);
            self.next += 1;
            let path = self.dir.join(format!("{name}.tar.tmp"));
            let file = File::create(&path).map_err(io(&path))?;
            self.current = Some(OpenShard {
                name,
                builder: tar::Builder::new(BufWriter::new(file)),
                bytes: 0,
                rows: String::new(),
            });
        }
        Ok(self.current.as_mut().expect("opened above"))
    }

    /// Add one segment's bytes as `member` with its manifest row.
    pub fn add(&mut self, data: &[u8], row: &SegmentRow) -> Result<()> {
        let dir = self.dir.clone();
        let shard = self.shard()?;
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        let tmp = dir.join(format!("{}.tar.tmp", shard.name));
        shard.builder.append_data(&mut header, &row.member, data).map_err(io(&tmp))?;
        shard.bytes += data.len() as u64 + 512;
        shard.rows += &format!(
            "{}.tar\t{}\t{}\t{:.3}\t{:.3}\t{:.3}\t{}\n",
            shard.name,
            row.member,
            row.source,
            row.start,
            row.end,
            row.end - row.start,
            row.lang.as_deref().unwrap_or("")
        );
        Ok(())
    }

    /// A source file is complete: close the shard if it is full.
    pub fn end_of_source(&mut self) -> Result<()> {
        if self.current.as_ref().is_some_and(|s| s.bytes >= self.max_bytes) {
            self.close()?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        let Some(shard) = self.current.take() else { return Ok(()) };
        let tar_tmp = self.dir.join(format!("{}.tar.tmp", shard.name));
        let mut out = shard.builder.into_inner().map_err(io(&tar_tmp))?;
        out.flush().map_err(io(&tar_tmp))?;
        out.get_ref().sync_all().map_err(io(&tar_tmp))?;
        let tsv_tmp = self.dir.join(format!("{}.tsv.tmp", shard.name));
        std::fs::write(&tsv_tmp, manifest_header() + &shard.rows).map_err(io(&tsv_tmp))?;
        let tar = self.dir.join(format!("{}.tar", shard.name));
        std::fs::rename(&tar_tmp, &tar).map_err(io(&tar))?;
        let tsv = self.dir.join(format!("{}.tsv", shard.name));
        std::fs::rename(&tsv_tmp, &tsv).map_err(io(&tsv))?;
        self.finished.push(shard.name);
        Ok(())
    }

    /// Close the last shard; returns the shards this writer finished.
    pub fn finish(mut self) -> Result<Vec<String>> {
        self.close()?;
        Ok(self.finished)
    }
}

/// Join every finished shard manifest in `dir` (`*-NNNNN.tsv`, all tasks) into `dir/shards.tsv`,
/// and a fairseq-style `dir/manifest.tsv` (first line the folder, then `SHARD.tar/MEMBER` and the
/// number of 16-kHz samples). Returns the number of segments.
pub fn merge(dir: &Path) -> Result<usize> {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            name.ends_with(".tsv")
                && name
                    .rsplit_once('-')
                    .is_some_and(|(_, n)| n.trim_end_matches(".tsv").chars().all(|c| c.is_ascii_digit()))
                && p.with_extension("tar").is_file()
        })
        .collect();
    parts.sort();
    let mut shards = manifest_header();
    let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut fairseq = format!("{}\n", abs.display());
    let mut n = 0;
    for p in parts {
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        for line in text.lines().skip(1).filter(|l| !l.is_empty()) {
            let cols: Vec<&str> = line.split('\t').collect();
            let duration: f64 = cols.get(5).and_then(|d| d.parse().ok()).unwrap_or(0.0);
            fairseq += &format!("{}/{}\t{}\n", cols[0], cols[1], (duration * 16000.0).round() as u64);
            shards += line;
            shards.push('\n');
            n += 1;
        }
    }
    for (name, text) in [(crate::readers::shards::MANIFEST, &shards), ("manifest.tsv", &fairseq)] {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(source: &str, i: usize) -> SegmentRow {
        SegmentRow {
            member: format!("{source}-{i}.flac"),
            source: source.into(),
            start: i as f64,
            end: i as f64 + 2.0,
            lang: None,
        }
    }

    #[test]
    fn shards_close_between_sources_and_resume_without_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, done) = ShardWriter::open(dir.path(), "shard-00000", 1500).unwrap();
        assert!(done.is_empty());
        for (s, n) in [("a", 2), ("b", 1)] {
            for i in 0..n {
                w.add(&[7u8; 400], &row(s, i)).unwrap();
            }
            w.end_of_source().unwrap();
        }
        // "a" filled 2 × (400 + 512) = 1824 bytes ≥ 1500: its shard closed after it; "b" (912
        // bytes) sits in an open shard. A kill here leaves b's shard unfinished.
        drop(w);
        let (mut w, done) = ShardWriter::open(dir.path(), "shard-00000", 1500).unwrap();
        assert_eq!(done.into_iter().collect::<Vec<_>>(), ["a"]);
        assert!(!dir.path().join("shard-00000-00001.tar.tmp").exists(), "the unfinished shard is removed");
        w.add(&[7u8; 400], &row("b", 0)).unwrap();
        w.end_of_source().unwrap();
        assert_eq!(w.finish().unwrap(), ["shard-00000-00001"]);
        assert_eq!(merge(dir.path()).unwrap(), 3);
        let merged = std::fs::read_to_string(dir.path().join("shards.tsv")).unwrap();
        let members: Vec<&str> = merged.lines().skip(1).map(|l| l.split('\t').nth(1).unwrap()).collect();
        assert_eq!(members, ["a-0.flac", "a-1.flac", "b-0.flac"]);
        // The data pipeline reads the shards in place.
        let mut problems = crate::Problems::new(false);
        let utts = crate::readers::shards::read(&dir.path().join("shards.tsv"), &mut problems).unwrap();
        assert_eq!(utts.len(), 3);
        let fairseq = std::fs::read_to_string(dir.path().join("manifest.tsv")).unwrap();
        assert!(fairseq.lines().nth(1).unwrap().ends_with("shard-00000-00000.tar/a-0.flac\t32000"), "{fairseq}");
    }
}
