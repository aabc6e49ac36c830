//! `speechtune import fairseq CHECKPOINT.pt --out DIR`

use std::path::PathBuf;

use anyhow::{Context, Result};
use speechtune_models::fairseq;

#[derive(clap::Subcommand)]
pub enum Command {
    /// A fairseq wav2vec 2.0 / XLS-R / data2vec-audio checkpoint (pre-trained or fine-tuned with
    /// CTC) as a Hugging Face model directory, with transformers' conversion rules. Nothing in
    /// the file is executed.
    Fairseq(FairseqArgs),
}

#[derive(clap::Args)]
pub struct FairseqArgs {
    /// The fairseq checkpoint (`.pt`).
    pub checkpoint: PathBuf,
    /// Output folder (config.json, model.safetensors, preprocessor_config.json).
    #[arg(long)]
    pub out: PathBuf,
    /// fairseq's target dictionary of a fine-tuned model (`dict.ltr.txt`): written as vocab.json.
    #[arg(long)]
    pub dict: Option<PathBuf>,
}

pub fn run(command: Command) -> Result<()> {
    let Command::Fairseq(args) = command;
    let imported = fairseq::import(&args.checkpoint, &args.out, args.dict.as_deref())
        .with_context(|| format!("importing {}", args.checkpoint.display()))?;
    let c = &imported.config;
    println!(
        "{} → {}: {} ({} layers, hidden {}), {} tensors",
        args.checkpoint.display(),
        args.out.display(),
        imported.kind.architecture(),
        c["num_hidden_layers"],
        c["hidden_size"],
        imported.tensors
    );
    if !imported.unused.is_empty() {
        println!("not converted (as transformers' script): {}", imported.unused.join(", "));
    }
    for f in &imported.files {
        println!("wrote {}", f.display());
    }
    Ok(())
}
