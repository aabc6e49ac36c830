//! A corpus on disk, whatever its layout: detection, reading every split, durations, and the
//! `data stats` / `data check` reports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, Problem, Problems, Result};
use crate::item::{AudioSource, Split, Utterance};
use crate::readers::{commonvoice, manifest, mlsuperb, shards};
use crate::text::{TextNorm, normalize};

/// Utterances of each split, by split name.
pub type Splits = Vec<(String, Vec<Utterance>)>;

/// The layouts speechtune reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    MlSuperb(PathBuf),
    CommonVoice(PathBuf),
    Manifest(PathBuf),
    Shards(PathBuf),
}

impl Layout {
    /// Recognise the layout of a folder or manifest file.
    pub fn detect(root: &Path) -> Result<Self> {
        if root.is_file() {
            let ext = root.extension().and_then(|e| e.to_str()).unwrap_or("");
            let first = std::fs::read_to_string(root).ok().and_then(|t| t.lines().next().map(String::from));
            return match ext {
                "tsv" if first.is_some_and(|h| h.split('\t').any(|c| c == "member")) => Ok(Layout::Shards(root.into())),
                "tsv" | "jsonl" | "json" => Ok(Layout::Manifest(root.into())),
                _ => Err(Error::Layout { path: root.into(), reason: "not a .tsv or .jsonl manifest".into() }),
            };
        }
        if !root.is_dir() {
            return Err(Error::Layout { path: root.into(), reason: "no such file or folder".into() });
        }
        if root.join(shards::MANIFEST).is_file() {
            return Ok(Layout::Shards(root.join(shards::MANIFEST)));
        }
        if root.join("clips").is_dir()
            && ["train", "dev", "test", "validated"].iter().any(|s| root.join(format!("{s}.tsv")).is_file())
        {
            return Ok(Layout::CommonVoice(root.into()));
        }
        if !mlsuperb::language_dirs(root)?.is_empty() {
            return Ok(Layout::MlSuperb(root.into()));
        }
        Err(Error::Layout {
            path: root.into(),
            reason: "unknown layout: expected ML-SUPERB (DATASET/LANG/transcript_10min_train.txt), a Common Voice \
                     release (train.tsv + clips/), shards.tsv with tar shards, or a .tsv/.jsonl manifest"
                .into(),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Layout::MlSuperb(_) => "ML-SUPERB",
            Layout::CommonVoice(_) => "Common Voice",
            Layout::Manifest(_) => "manifest",
            Layout::Shards(_) => "tar shards",
        }
    }

    /// Read one split. Manifests without a split column and shard sets are a single split,
    /// returned for any request.
    pub fn read_split(&self, split: Split, duration: &str, problems: &mut Problems) -> Result<Vec<Utterance>> {
        match self {
            Layout::MlSuperb(root) => mlsuperb::read(root, duration, split, problems),
            Layout::CommonVoice(root) => commonvoice::read(root, split.name(), problems),
            Layout::Manifest(path) => manifest::read(path, Some(split), problems),
            Layout::Shards(path) => shards::read(path, problems),
        }
    }

    /// Every split present, by name.
    pub fn read_all(&self, duration: &str, problems: &mut Problems) -> Result<Splits> {
        match self {
            Layout::Shards(path) => Ok(vec![("all".into(), shards::read(path, problems)?)]),
            Layout::Manifest(path) => {
                let all = manifest::read(path, None, problems)?;
                let mut quiet = Problems::new(true);
                let mut splits = Vec::new();
                for s in Split::ALL {
                    let items = manifest::read(path, Some(s), &mut quiet)?;
                    if items.len() < all.len() && !items.is_empty() {
                        splits.push((s.name().to_string(), items));
                    }
                }
                Ok(if splits.is_empty() { vec![("all".into(), all)] } else { splits })
            }
            _ => {
                let mut out = Vec::new();
                for s in Split::ALL {
                    out.push((s.name().to_string(), self.read_split(s, duration, problems)?));
                }
                Ok(out)
            }
        }
    }
}

/// Fill unknown durations from file headers (a few threads; no decoding). Returns the files
/// whose header could not be read.
pub fn fill_durations(utts: &mut [Utterance], threads: usize) -> Vec<Problem> {
    let chunk = utts.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = utts
            .chunks_mut(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut problems = Vec::new();
                    for u in part.iter_mut().filter(|u| u.seconds().is_none()) {
                        if let AudioSource::File(p) = &u.audio {
                            match speechtune_audio::probe_file(p) {
                                Ok(info) => u.duration = info.duration(),
                                Err(e) => problems.push(Problem { file: p.clone(), line: 0, reason: e.to_string() }),
                            }
                        }
                    }
                    problems
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}

/// Hours and utterances per language and split, the training vocabulary and a duration histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// (language, split) → (utterances, seconds)
    pub table: BTreeMap<(String, String), (usize, f64)>,
    pub splits: Vec<String>,
    /// Characters of the normalised training text (the first split when there is no "train").
    pub vocabulary: Vec<char>,
    /// Utterances per whole second of duration; the last bin holds everything longer.
    pub histogram: Vec<usize>,
}

pub fn stats(splits: &[(String, Vec<Utterance>)], norm: &TextNorm) -> Stats {
    let mut table: BTreeMap<(String, String), (usize, f64)> = BTreeMap::new();
    let mut histogram = vec![0usize; 31];
    for (split, utts) in splits {
        for u in utts {
            let e = table.entry((u.lang.clone().unwrap_or_else(|| "-".into()), split.clone())).or_default();
            e.0 += 1;
            let d = u.seconds().unwrap_or(0.0);
            e.1 += d;
            histogram[(d.floor() as usize).min(30)] += 1;
        }
    }
    while histogram.len() > 1 && histogram.last() == Some(&0) {
        histogram.pop();
    }
    let train = splits.iter().find(|(s, _)| s == "train").or(splits.first());
    let vocabulary: BTreeSet<char> = train
        .into_iter()
        .flat_map(|(_, u)| u.iter())
        .filter_map(|u| u.text.as_deref())
        .flat_map(|t| normalize(t, norm).chars().collect::<Vec<_>>())
        .filter(|c| *c != ' ')
        .collect();
    Stats {
        table,
        splits: splits.iter().map(|(s, _)| s.clone()).collect(),
        vocabulary: vocabulary.into_iter().collect(),
        histogram,
    }
}

fn hms(seconds: f64) -> String {
    let s = seconds.round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let langs: BTreeSet<&String> = self.table.keys().map(|(l, _)| l).collect();
        write!(f, "{:<10}", "language")?;
        for s in &self.splits {
            write!(f, " {:>20}", format!("{s} (utts, h:m:s)"))?;
        }
        writeln!(f)?;
        let mut totals = vec![(0usize, 0.0f64); self.splits.len()];
        for l in &langs {
            write!(f, "{l:<10}")?;
            for (i, s) in self.splits.iter().enumerate() {
                let (n, sec) = self.table.get(&((*l).clone(), s.clone())).copied().unwrap_or_default();
                totals[i].0 += n;
                totals[i].1 += sec;
                write!(f, " {:>20}", format!("{n}  {}", hms(sec)))?;
            }
            writeln!(f)?;
        }
        write!(f, "{:<10}", "total")?;
        for (n, sec) in &totals {
            write!(f, " {:>20}", format!("{n}  {}", hms(*sec)))?;
        }
        let hours: f64 = totals.iter().map(|t| t.1).sum::<f64>() / 3600.0;
        writeln!(f, "\n\n{} languages, {:.2} hours in all", langs.len(), hours)?;
        let vocab: String = self.vocabulary.iter().collect();
        writeln!(f, "training vocabulary ({} characters): {vocab}", self.vocabulary.len())?;
        writeln!(f, "\nduration histogram (seconds):")?;
        let max = self.histogram.iter().copied().max().unwrap_or(1).max(1);
        for (i, &n) in self.histogram.iter().enumerate() {
            let label = if i == 30 { "30+".to_string() } else { format!("{i}-{}", i + 1) };
            writeln!(f, "  {label:>6} {n:>6} {}", "#".repeat((n * 50).div_ceil(max)))?;
        }
        Ok(())
    }
}

/// What `data check` found: every problem, not only the first.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub checked: usize,
    pub problems: Vec<Problem>,
}

/// Decode every file and look for unreadable audio, odd sample rates, transcripts that are
/// empty after normalisation, and characters in dev/test absent from the training text.
pub fn check(splits: &[(String, Vec<Utterance>)], norm: &TextNorm, threads: usize) -> CheckReport {
    let mut report = CheckReport::default();
    let train_chars: BTreeSet<char> = splits
        .iter()
        .filter(|(s, _)| s == "train")
        .flat_map(|(_, u)| u.iter())
        .filter_map(|u| u.text.as_deref())
        .flat_map(|t| normalize(t, norm).chars().collect::<Vec<_>>())
        .collect();
    let all: Vec<(&String, &Utterance)> = splits.iter().flat_map(|(s, u)| u.iter().map(move |x| (s, x))).collect();
    report.checked = all.len();
    let chunk = all.len().div_ceil(threads.max(1)).max(1);
    let audio_problems: Vec<Problem> = std::thread::scope(|s| {
        let handles: Vec<_> = all
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    for (_, u) in part {
                        let path = u.audio.display_path();
                        let decoded = match &u.audio {
                            AudioSource::File(p) => speechtune_audio::decode_file(p),
                            AudioSource::TarMember { .. } => crate::loader::load_audio(u)
                                .map(|w| speechtune_audio::Decoded { samples: w, sample_rate: 16000, channels: 1 })
                                .map_err(|e| speechtune_audio::Error::Unreadable {
                                    path: path.clone(),
                                    reason: e.to_string(),
                                }),
                        };
                        match decoded {
                            Err(e) => out.push(Problem { file: path, line: 0, reason: format!("{} ({e})", u.id) }),
                            Ok(d) if d.sample_rate != 16000 => out.push(Problem {
                                file: path,
                                line: 0,
                                reason: format!(
                                    "{}: sample rate {} Hz (resampled to 16 kHz when loaded)",
                                    u.id, d.sample_rate
                                ),
                            }),
                            Ok(_) => {}
                        }
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    report.problems.extend(audio_problems);
    for (split, u) in &all {
        let Some(text) = u.text.as_deref() else { continue };
        let norm_text = normalize(text, norm);
        if norm_text.is_empty() {
            report.problems.push(Problem {
                file: u.audio.display_path(),
                line: 0,
                reason: format!("{}: transcript is empty after normalisation ({text:?})", u.id),
            });
        }
        if split.as_str() != "train" && !train_chars.is_empty() {
            let unknown: BTreeSet<char> = norm_text.chars().filter(|c| *c != ' ' && !train_chars.contains(c)).collect();
            if !unknown.is_empty() {
                report.problems.push(Problem {
                    file: u.audio.display_path(),
                    line: 0,
                    reason: format!("{} ({split}): characters not in the training text: {:?}", u.id, unknown),
                });
            }
        }
    }
    report
}
