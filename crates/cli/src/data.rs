//! `speechtune data stats ROOT` and `speechtune data check ROOT`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use speechtune_data::Problem;
use speechtune_data::corpus::{self, Layout, Splits};
use speechtune_data::text::{Punctuation, TextNorm};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Hours and utterances per language and split, vocabulary, duration histogram.
    Stats(Args),
    /// Decode everything; report every unreadable file, empty transcript, unknown character and
    /// odd sample rate (exit status 1 when anything is found).
    Check(Args),
}

#[derive(clap::Args)]
pub struct Args {
    /// Corpus folder (ML-SUPERB, Common Voice, tar shards) or a .tsv/.jsonl manifest.
    pub root: PathBuf,
    /// ML-SUPERB training subset: 10min or 1h.
    #[arg(long, default_value = "10min")]
    pub duration: String,
    /// Punctuation removed by the text normalisation: unicode, ascii (exactly ESPnet's recipe) or keep.
    #[arg(long, default_value = "unicode", value_parser = parse_punctuation)]
    pub punctuation: Punctuation,
    /// Skip bad manifest lines instead of stopping at the first; they are listed in --skipped.
    #[arg(long)]
    pub skip_bad: bool,
    /// Where --skip-bad writes what it skipped.
    #[arg(long, default_value = "skipped.tsv")]
    pub skipped: PathBuf,
    /// Threads for reading audio.
    #[arg(long, default_value_t = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))]
    pub threads: usize,
}

fn parse_punctuation(s: &str) -> std::result::Result<Punctuation, String> {
    match s {
        "unicode" => Ok(Punctuation::Unicode),
        "ascii" => Ok(Punctuation::Ascii),
        "keep" => Ok(Punctuation::Keep),
        _ => Err(format!("\"{s}\": use unicode, ascii or keep")),
    }
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Stats(a) => stats(a),
        Command::Check(a) => check(a),
    }
}

/// Read every split; with `durations`, also probe file headers for unknown durations.
fn read(args: &Args, skip_bad: bool, durations: bool) -> Result<(Layout, Splits, Vec<Problem>)> {
    let layout = Layout::detect(&args.root)?;
    let mut problems = speechtune_data::Problems::new(skip_bad);
    let mut splits =
        layout.read_all(&args.duration, &mut problems).with_context(|| format!("reading {}", args.root.display()))?;
    let mut found = problems.found;
    if durations {
        for (_, utts) in &mut splits {
            found.extend(corpus::fill_durations(utts, args.threads));
        }
    }
    Ok((layout, splits, found))
}

fn write_skipped(path: &Path, problems: &[Problem]) -> Result<()> {
    let mut text = String::from("file\tline\treason\n");
    for p in problems {
        text += &format!("{}\t{}\t{}\n", p.file.display(), p.line, p.reason.replace(['\t', '\n'], " "));
    }
    Ok(crate::output::write_atomic(path, text.as_bytes())?)
}

fn stats(args: Args) -> Result<()> {
    let (layout, splits, skipped) = read(&args, args.skip_bad, true)?;
    let norm = TextNorm { punctuation: args.punctuation, ..TextNorm::default() };
    println!("{} ({})\n", args.root.display(), layout.name());
    print!("{}", corpus::stats(&splits, &norm));
    if args.skip_bad {
        write_skipped(&args.skipped, &skipped)?;
        eprintln!("skipped {} bad entries, listed in {}", skipped.len(), args.skipped.display());
    } else if !skipped.is_empty() {
        eprintln!("{} files without a readable header (durations counted as 0):", skipped.len());
        for p in &skipped {
            eprintln!("  {p}");
        }
    }
    Ok(())
}

fn check(args: Args) -> Result<()> {
    // Every problem, not only the first: read with skipping on, then decode everything (which
    // also finds what a header probe would).
    let (layout, splits, mut problems) = read(&args, true, false)?;
    let norm = TextNorm { punctuation: args.punctuation, ..TextNorm::default() };
    let report = corpus::check(&splits, &norm, args.threads);
    problems.extend(report.problems);
    println!(
        "{} ({}): {} utterances checked, {} problems",
        args.root.display(),
        layout.name(),
        report.checked,
        problems.len()
    );
    for p in &problems {
        println!("  {p}");
    }
    if args.skip_bad {
        write_skipped(&args.skipped, &problems)?;
    }
    if !problems.is_empty() {
        bail!("{} problems in {}", problems.len(), args.root.display());
    }
    Ok(())
}
