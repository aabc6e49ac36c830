//! ML-SUPERB: `ROOT/{dataset}/{lang}/transcript_{10min,1h}_{train,dev,test}.txt` with lines
//! `ID FIELD TEXT` and audio in `wav/ID.wav` (as ESPnet's `egs2/ml_superb` reads them: the
//! middle field is ignored, dev and test always come from the 10-min files).

use std::path::{Path, PathBuf};

use crate::error::{Error, Problems, Result, utf8_lines};
use crate::item::{AudioSource, Split, Utterance};

/// The training subsets ML-SUPERB defines per language.
pub const DURATIONS: [&str; 2] = ["10min", "1h"];

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
    let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    v.sort();
    Ok(v)
}

/// Every (dataset, language) folder that holds transcripts.
pub fn language_dirs(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for dataset in subdirs(root)? {
        for lang in subdirs(&dataset)? {
            let has_transcripts = std::fs::read_dir(&lang)
                .map(|rd| rd.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().starts_with("transcript_")))
                .unwrap_or(false);
            if has_transcripts {
                out.push(lang);
            }
        }
    }
    Ok(out)
}

/// Read one split. `duration` ("10min" or "1h") selects the training subset.
pub fn read(root: &Path, duration: &str, split: Split, problems: &mut Problems) -> Result<Vec<Utterance>> {
    if !DURATIONS.contains(&duration) {
        return Err(Error::Layout {
            path: root.to_path_buf(),
            reason: format!("duration \"{duration}\": use 10min or 1h"),
        });
    }
    let dirs = language_dirs(root)?;
    if dirs.is_empty() {
        return Err(Error::Layout {
            path: root.to_path_buf(),
            reason: "no ML-SUPERB transcripts (expected ROOT/DATASET/LANG/transcript_10min_train.txt)".into(),
        });
    }
    let mut out = Vec::new();
    let dur = if split == Split::Train { duration } else { "10min" };
    let name = format!("transcript_{dur}_{}.txt", split.name());
    // A language may lack a split (a test-only dataset); a split found nowhere is an error.
    if !dirs.iter().any(|d| d.join(&name).is_file()) {
        return Err(Error::Layout { path: root.to_path_buf(), reason: format!("no DATASET/LANG/{name} anywhere") });
    }
    for dir in dirs {
        let lang = dir.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        let file = dir.join(&name);
        if !file.is_file() {
            continue;
        }
        for (n, line) in utf8_lines(&file)? {
            let Some(line) = problems.valid(&file, n, line)? else { continue };
            let line = line.trim();
            if line.is_empty() {
                problems.report(&file, n, "empty line")?;
                continue;
            }
            let mut parts = line.splitn(3, char::is_whitespace).filter(|s| !s.is_empty());
            let (id, _field, text) = (parts.next(), parts.next(), parts.next().map(str::trim));
            let (Some(id), Some(text)) = (id, text.filter(|t| !t.is_empty())) else {
                problems.report(&file, n, "expected `ID FIELD TRANSCRIPT`: empty transcript")?;
                continue;
            };
            let Some(audio) = super::find_audio(&dir.join("wav"), id) else {
                problems.report(&file, n, format!("audio wav/{id}.wav not found"))?;
                continue;
            };
            let mut u = Utterance::new(id, AudioSource::File(audio));
            u.text = Some(text.to_string());
            u.lang = Some(lang.clone());
            out.push(u);
        }
    }
    Ok(out)
}
