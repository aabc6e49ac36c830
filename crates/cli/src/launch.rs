//! `train.devices` with more than one device, started as one process: start one process per
//! device through `mpirun`, as fairseq spawns one worker per GPU of `distributed_world_size`.

use anyhow::{Context, Result, bail};
use speechtune_train::config::TrainConfig;

/// `--set` overrides with `--devices a,b` added as `train.devices`.
pub fn with_devices(overrides: &[String], devices: &[String]) -> Vec<String> {
    let mut out = overrides.to_vec();
    if !devices.is_empty() {
        let list: Vec<String> = devices.iter().map(|d| format!("{:?}", d.trim())).collect();
        out.push(format!("train.devices=[{}]", list.join(", ")));
    }
    out
}

/// Several devices named, but this process was started alone.
pub fn needs_processes(cfg: &TrainConfig) -> bool {
    cfg.devices.len() > 1 && speechtune_train::distributed::comm().size == 1
}

/// Run this same command line once per device under `mpirun` and wait for it.
pub fn one_process_per_device(cfg: &TrainConfig) -> Result<()> {
    let n = cfg.devices.len();
    if !cfg!(feature = "mpi") {
        bail!(
            "train.devices names {n} devices: data-parallel training needs a build with the `mpi` feature \
             (`cargo install --path crates/cli --features mpi`)"
        );
    }
    let exe = std::env::current_exe().context("finding this program's path")?;
    eprintln!("starting {n} processes, one per device ({}), with mpirun", cfg.devices.join(", "));
    let status = std::process::Command::new("mpirun")
        .arg("-n")
        .arg(n.to_string())
        .arg(&exe)
        .args(std::env::args_os().skip(1))
        .status()
        .context(
            "starting `mpirun` (Open MPI or MPICH, e.g. Debian's openmpi-bin): it is how one process per device is \
             started; or start them yourself with your launcher",
        )?;
    if !status.success() {
        bail!("the {n} data-parallel processes failed ({status}); their messages are above");
    }
    Ok(())
}
