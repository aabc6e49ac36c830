use std::path::PathBuf;

/// One bad line or file: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based line number; 0 when the problem is the whole file.
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
        } else {
            write!(f, "{}: {}", self.file.display(), self.reason)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Bad(Problem),
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Layout { path: PathBuf, reason: String },
    #[error(transparent)]
    Audio(#[from] speechtune_audio::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Collects problems while reading: the first one is an error unless `skip_bad` is set, in
/// which case every problem is kept for the report and the bad line is skipped.
#[derive(Debug, Default)]
pub struct Problems {
    pub skip_bad: bool,
    pub found: Vec<Problem>,
}

impl Problems {
    pub fn new(skip_bad: bool) -> Self {
        Self { skip_bad, found: Vec::new() }
    }

    /// The text of a line from [`utf8_lines`], reporting invalid UTF-8 (`None`: skip the line).
    pub(crate) fn valid(
        &mut self,
        file: &std::path::Path,
        n: usize,
        line: std::result::Result<String, usize>,
    ) -> Result<Option<String>> {
        match line {
            Ok(s) => Ok(Some(s)),
            Err(at) => self.report(file, n, format!("invalid UTF-8 at byte {at}")).map(|_| None),
        }
    }

    /// Record a problem; `Err` when bad input is not being skipped.
    pub fn report(&mut self, file: &std::path::Path, line: usize, reason: impl Into<String>) -> Result<()> {
        let p = Problem { file: file.to_path_buf(), line, reason: reason.into() };
        if self.skip_bad {
            self.found.push(p);
            Ok(())
        } else {
            Err(Error::Bad(p))
        }
    }
}

pub(crate) fn read_bytes(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

/// A text file's lines with 1-based numbers; a line that is not UTF-8 carries the byte
/// offset of the first bad byte, for [`Problems::valid`] to report in line order.
pub(crate) fn utf8_lines(path: &std::path::Path) -> Result<Vec<(usize, std::result::Result<String, usize>)>> {
    let bytes = read_bytes(path)?;
    let mut out: Vec<(usize, std::result::Result<String, usize>)> = bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, raw)| {
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            (i + 1, std::str::from_utf8(raw).map(String::from).map_err(|e| e.valid_up_to()))
        })
        .collect();
    // A trailing newline leaves one empty last "line" that is not a line.
    if bytes.ends_with(b"\n") {
        out.pop();
    }
    Ok(out)
}
