//! Readers for the corpus layouts speechtune understands. All of them yield [`Utterance`]s,
//! keep the raw transcript (normalisation is the task's choice), and report bad lines as
//! `file:line: reason` — or skip them, collecting each one, when `skip_bad` is set.

pub mod commonvoice;
pub mod manifest;
pub mod mlsuperb;
pub mod shards;

use std::path::{Path, PathBuf};

use crate::error::{Problems, Result, utf8_lines};

/// Audio extensions tried, in order, for an utterance id.
pub const AUDIO_EXTENSIONS: [&str; 5] = ["wav", "flac", "ogg", "mp3", "m4a"];

/// `dir/{id}.{ext}` for the first extension that exists.
pub(crate) fn find_audio(dir: &Path, id: &str) -> Option<PathBuf> {
    AUDIO_EXTENSIONS.iter().map(|e| dir.join(format!("{id}.{e}"))).find(|p| p.is_file())
}

/// A tab-separated file with a header line.
pub(crate) struct Table {
    pub header: Vec<String>,
    /// (1-based line number, cells), only rows with the header's column count.
    pub rows: Vec<(usize, Vec<String>)>,
}

impl Table {
    pub fn read(path: &Path, problems: &mut Problems) -> Result<Self> {
        let mut lines = utf8_lines(path)?.into_iter();
        let header: Vec<String> = match lines.next() {
            Some((_, Ok(h))) if !h.trim().is_empty() => h.split('\t').map(|s| s.trim().to_string()).collect(),
            _ => {
                problems.report(path, 1, "missing header line")?;
                return Ok(Self { header: Vec::new(), rows: Vec::new() });
            }
        };
        let mut rows = Vec::new();
        for (n, line) in lines {
            let Some(line) = problems.valid(path, n, line)? else { continue };
            if line.trim().is_empty() {
                problems.report(path, n, "empty line")?;
                continue;
            }
            let cells: Vec<String> = line.split('\t').map(|s| s.to_string()).collect();
            if cells.len() != header.len() {
                problems.report(
                    path,
                    n,
                    format!("expected {} tab-separated columns, found {}", header.len(), cells.len()),
                )?;
                continue;
            }
            rows.push((n, cells));
        }
        Ok(Self { header, rows })
    }

    pub fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }
}

/// Parse an optional number cell.
pub(crate) fn number(cell: Option<&String>) -> std::result::Result<Option<f64>, String> {
    match cell.map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s.parse::<f64>().map(Some).map_err(|_| format!("\"{s}\" is not a number")),
    }
}
