//! Common Voice release folders: `ROOT/{train,dev,test,validated}.tsv` and `ROOT/clips/`.
//! The language is the `locale` column when present (newer releases), else the folder's name.

use std::path::Path;

use super::Table;
use crate::error::{Error, Problems, Result};
use crate::item::{AudioSource, Utterance};

/// Read `ROOT/{name}.tsv` (`train`, `dev`, `test`, `validated`, ...).
pub fn read(root: &Path, name: &str, problems: &mut Problems) -> Result<Vec<Utterance>> {
    let file = root.join(format!("{name}.tsv"));
    if !file.is_file() {
        return Err(Error::Layout { path: file, reason: "not found".into() });
    }
    let table = Table::read(&file, problems)?;
    let (Some(path_col), Some(text_col)) = (table.column("path"), table.column("sentence")) else {
        return Err(Error::Layout { path: file, reason: "header needs `path` and `sentence` columns".into() });
    };
    let locale = table.column("locale");
    let folder_lang = root.file_name().map(|s| s.to_string_lossy().to_string());
    let mut out = Vec::new();
    for (n, row) in table.rows {
        let clip = root.join("clips").join(&row[path_col]);
        if !clip.is_file() {
            problems.report(&file, n, format!("clip clips/{} not found", row[path_col]))?;
            continue;
        }
        let text = row[text_col].trim();
        if text.is_empty() {
            problems.report(&file, n, "empty sentence")?;
            continue;
        }
        let id = Path::new(&row[path_col]).file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        let mut u = Utterance::new(id, AudioSource::File(clip));
        u.text = Some(text.to_string());
        u.lang = locale.map(|c| row[c].clone()).filter(|l| !l.is_empty()).or_else(|| folder_lang.clone());
        out.push(u);
    }
    Ok(out)
}
