//! Generic manifests: TSV with a header, or JSON Lines, with the fields
//! `path` (required; relative to the manifest's folder), `id`, `text`, `lang`, `label`, `start`,
//! `end`, `duration` (seconds) and `split` (train/dev/test). A manifest without a `split` field
//! is one split: every row is returned whatever split is asked for.

use std::path::Path;

use super::{Table, number};
use crate::error::{Problems, Result, utf8_lines};
use crate::item::{AudioSource, Split, Utterance};

pub const FIELDS: [&str; 9] = ["path", "id", "text", "lang", "label", "start", "end", "duration", "split"];

/// Read a `.tsv` or `.jsonl` manifest, keeping rows of `split` when the manifest has splits.
pub fn read(path: &Path, split: Option<Split>, problems: &mut Problems) -> Result<Vec<Utterance>> {
    let base = path.parent().unwrap_or(Path::new("."));
    let jsonl = matches!(path.extension().and_then(|e| e.to_str()), Some("jsonl" | "json"));
    let mut out = Vec::new();
    let mut row_to_item = |n: usize, get: &dyn Fn(&str) -> Option<String>, problems: &mut Problems| -> Result<()> {
        let Some(audio) = get("path").filter(|p| !p.is_empty()) else {
            return problems.report(path, n, "no `path`");
        };
        if let (Some(want), Some(have)) = (split, get("split"))
            && have != want.name()
        {
            return Ok(());
        }
        let file = base.join(&audio);
        if !file.is_file() {
            return problems.report(path, n, format!("audio {audio} not found"));
        }
        let nums = (number(get("start").as_ref()), number(get("end").as_ref()), number(get("duration").as_ref()));
        let (start, end, duration) = match nums {
            (Ok(s), Ok(e), Ok(d)) => (s, e, d),
            (Err(m), _, _) | (_, Err(m), _) | (_, _, Err(m)) => return problems.report(path, n, m),
        };
        if let (Some(s), Some(e)) = (start, end)
            && e <= s
        {
            return problems.report(path, n, format!("segment end {e} is not after start {s}"));
        }
        let stem = Path::new(&audio).file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        let id = get("id").filter(|s| !s.is_empty()).unwrap_or_else(|| match start {
            Some(s) => format!("{stem}_{:07}", (s * 1000.0).round() as u64),
            None => stem,
        });
        let mut u = Utterance::new(id, AudioSource::File(file));
        u.text = get("text").filter(|s| !s.trim().is_empty());
        u.lang = get("lang").filter(|s| !s.is_empty());
        u.label = get("label").filter(|s| !s.is_empty());
        (u.start, u.end, u.duration) = (start, end, duration);
        out.push(u);
        Ok(())
    };
    if jsonl {
        for (n, line) in utf8_lines(path)? {
            let Some(line) = problems.valid(path, n, line)? else { continue };
            if line.trim().is_empty() {
                problems.report(path, n, "empty line")?;
                continue;
            }
            let obj: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(&line) {
                Ok(o) => o,
                Err(e) => {
                    problems.report(path, n, format!("not a JSON object: {e}"))?;
                    continue;
                }
            };
            let get = |k: &str| match obj.get(k) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Number(x)) => Some(x.to_string()),
                _ => None,
            };
            row_to_item(n, &get, problems)?;
        }
    } else {
        let table = Table::read(path, problems)?;
        if !table.header.is_empty() && table.column("path").is_none() {
            problems.report(path, 1, format!("header has no `path` column (fields: {})", FIELDS.join(", ")))?;
            return Ok(Vec::new());
        }
        for (n, row) in &table.rows {
            let get = |k: &str| table.column(k).map(|c| row[c].clone());
            row_to_item(*n, &get, problems)?;
        }
    }
    Ok(out)
}
