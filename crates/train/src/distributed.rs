//! Data-parallel training across processes: one process (rank) per device or node, started by
//! an MPI launcher (`mpirun`, Slurm's `srun --mpi=pmix`), gradients summed by MPI's all-reduce
//! (Open MPI, MPICH: the `mpi` cargo feature, through the `mpi` crate).
//!
//! burn 0.22's own collectives exist only for its CUDA and remote backends; MPI works for every
//! backend (the gradients are summed in host memory) and on clusters without GPUs.
//!
//! Every collective waits at most `train.collective_timeout_seconds`. When that passes, the
//! surviving ranks find out which ranks no longer answer, say so, and stop the whole job through
//! `MPI_Abort` (a pending MPI collective cannot be cancelled). Files are written atomically, so
//! an abort leaves nothing half-written.

use std::sync::OnceLock;
use std::time::Duration;

use crate::{Error, Result};

/// This process's place in the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comm {
    pub rank: usize,
    pub size: usize,
    /// Rank among the processes of this machine (picks the device from `train.devices`).
    pub local_rank: usize,
}

impl Comm {
    pub const SINGLE: Comm = Comm { rank: 0, size: 1, local_rank: 0 };

    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// Sum `buf` over all ranks, in place.
    pub fn all_reduce_f32(&self, buf: &mut [f32], timeout: Duration, what: &str) {
        if self.size > 1 {
            #[cfg(feature = "mpi")]
            mpi_impl::all_reduce(self, buf, timeout, what);
        }
        let _ = (buf, timeout, what);
    }

    /// Sum `buf` over all ranks, in place.
    pub fn all_reduce_f64(&self, buf: &mut [f64], timeout: Duration, what: &str) {
        if self.size > 1 {
            #[cfg(feature = "mpi")]
            mpi_impl::all_reduce(self, buf, timeout, what);
        }
        let _ = (buf, timeout, what);
    }

    /// Rank 0's `value` on every rank (the others pass `None`), through JSON.
    pub fn broadcast<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        value: Option<T>,
        timeout: Duration,
        what: &str,
    ) -> Result<T> {
        if self.size == 1 {
            return value.ok_or_else(|| Error::Diverged(format!("{what}: nothing to broadcast")));
        }
        let bytes = match (&value, self.is_root()) {
            (Some(v), true) => serde_json::to_vec(v).map_err(|e| Error::Diverged(format!("{what}: {e}")))?,
            _ => Vec::new(),
        };
        let mut len = [bytes.len() as f64];
        self.all_reduce_f64(&mut len, timeout, what);
        // Bytes travel as f32 (exact for 0..=255): one reduction type keeps this module small.
        let mut buf: Vec<f32> = vec![0.0; len[0] as usize];
        if self.is_root() {
            buf.iter_mut().zip(&bytes).for_each(|(d, &b)| *d = b as f32);
        }
        self.all_reduce_f32(&mut buf, timeout, what);
        let bytes: Vec<u8> = buf.iter().map(|&v| v as u8).collect();
        serde_json::from_slice(&bytes).map_err(|e| Error::Diverged(format!("{what}: rank 0 sent {e}")))
    }

    /// Fail on every rank unless all ranks hold the same `checksum` (of their weights, say).
    pub fn check_identical(&self, checksum: u64, timeout: Duration, what: &str) -> Result<()> {
        if self.size == 1 {
            return Ok(());
        }
        // Split into 4 exact 16-bit halves: f64 sums of small integers are exact.
        let parts = |c: u64| -> [f64; 4] { std::array::from_fn(|i| ((c >> (16 * i)) & 0xffff) as f64) };
        let mine = parts(checksum);
        let mut root = if self.is_root() { mine } else { [0.0; 4] };
        self.all_reduce_f64(&mut root, timeout, what);
        let differs = mine != root;
        // Which ranks differ: one slot per rank.
        let mut flags = vec![0.0f64; self.size];
        flags[self.rank] = differs as u8 as f64;
        self.all_reduce_f64(&mut flags, timeout, what);
        let bad: Vec<String> =
            flags.iter().enumerate().filter(|(_, f)| **f > 0.0).map(|(r, _)| r.to_string()).collect();
        if bad.is_empty() {
            return Ok(());
        }
        Err(Error::Diverged(format!(
            "{what}: rank(s) {} start from other weights than rank 0 (checksum {checksum:016x} on rank {}); every rank \
             must load the same upstream, checkpoint and seed",
            bad.join(", "),
            self.rank
        )))
    }

    /// Wait until every rank gets here.
    pub fn barrier(&self, timeout: Duration, what: &str) {
        let mut one = [1.0f64];
        self.all_reduce_f64(&mut one, timeout, what);
    }

    /// Stop every rank of the job (after an error on this one); returns normally when alone.
    pub fn abort(&self, code: i32) {
        if self.size > 1 {
            #[cfg(feature = "mpi")]
            mpi_impl::abort(code);
        }
        let _ = code;
    }
}

/// `eprintln!` on rank 0 only (messages every rank would repeat).
macro_rules! say {
    ($($t:tt)*) => {
        if $crate::distributed::comm().is_root() {
            eprintln!($($t)*);
        }
    };
}
pub(crate) use say;

static COMM: OnceLock<Comm> = OnceLock::new();

/// This process's place in the job ([`Comm::SINGLE`] unless [`init`] joined a larger one).
pub fn comm() -> Comm {
    *COMM.get().unwrap_or(&Comm::SINGLE)
}

/// Held for the life of the program: ends MPI when dropped.
pub struct Guard {
    #[cfg(feature = "mpi")]
    _universe: Option<mpi::environment::Universe>,
}

/// The variables launchers set, and how many processes they say were started.
fn launched_size() -> Option<(&'static str, usize)> {
    for var in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS", "MV2_COMM_WORLD_SIZE"] {
        if let Some(n) = std::env::var(var).ok().and_then(|v| v.trim().parse::<usize>().ok()) {
            return Some((var, n));
        }
    }
    std::env::var("PMIX_RANK").ok().map(|_| ("PMIX_RANK", 0))
}

/// Join the job this process was launched into (a no-op when launched alone). Call once, at
/// the start of the program, and keep the guard.
pub fn init() -> Result<Guard> {
    let launched = launched_size().filter(|(_, n)| *n != 1);
    let torchrun = std::env::var("WORLD_SIZE").ok().and_then(|v| v.parse::<usize>().ok()).filter(|n| *n > 1);
    let Some((var, n)) = launched else {
        if let Some(n) = torchrun {
            return Err(Error::Unsupported(format!(
                "WORLD_SIZE={n} (a torchrun-style launch): speechtune's collectives are MPI's, so start the {n} \
                 processes with an MPI launcher instead: `mpirun -n {n} speechtune ...` or Slurm's `srun --mpi=pmix`"
            )));
        }
        return Ok(Guard {
            #[cfg(feature = "mpi")]
            _universe: None,
        });
    };
    #[cfg(feature = "mpi")]
    {
        let (universe, comm) = mpi_impl::init()?;
        if n > 1 && comm.size != n {
            return Err(Error::Unsupported(format!(
                "{var}={n} but MPI joined {} processes: is this speechtune built against the launcher's MPI?",
                comm.size
            )));
        }
        let _ = COMM.set(comm);
        Ok(Guard { _universe: Some(universe) })
    }
    #[cfg(not(feature = "mpi"))]
    Err(Error::Unsupported(format!(
        "{var}={n}: this process was launched as one of several, but this speechtune was built without the `mpi` \
         feature (data-parallel training): rebuild with `cargo install --path crates/cli --features mpi`"
    )))
}

#[cfg(feature = "mpi")]
mod mpi_impl {
    use std::time::{Duration, Instant};

    use mpi::collective::SystemOperation;
    use mpi::datatype::Equivalence;
    use mpi::topology::{Communicator, SimpleCommunicator};
    use mpi::traits::*;

    use super::Comm;
    use crate::{Error, Result};

    /// Tag of the "still here" messages exchanged after a timeout.
    const ALIVE: i32 = 0x5354;

    pub fn init() -> Result<(mpi::environment::Universe, Comm)> {
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| Error::Unsupported("MPI was already initialised".into()))?;
        let world = universe.world();
        let local = world.split_shared(world.rank());
        let comm = Comm { rank: world.rank() as usize, size: world.size() as usize, local_rank: local.rank() as usize };
        Ok((universe, comm))
    }

    pub fn abort(code: i32) -> ! {
        SimpleCommunicator::world().abort(code)
    }

    /// Poll `ready` until it returns true or `timeout` passes (sleeping a little between polls:
    /// the ranks spend their time computing, not here).
    fn poll(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        let mut pause = Duration::from_micros(20);
        loop {
            if ready() {
                return true;
            }
            if start.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    pub fn all_reduce<T: Equivalence + Copy + Default>(comm: &Comm, buf: &mut [T], timeout: Duration, what: &str) {
        let world = SimpleCommunicator::world();
        let send = buf.to_vec();
        mpi::request::scope(|scope| {
            let mut pending =
                Some(world.immediate_all_reduce_into(scope, &send[..], &mut buf[..], SystemOperation::sum()));
            let done = poll(timeout, || match pending.take().map(|r| r.test()) {
                Some(Ok(_)) | None => true,
                Some(Err(r)) => {
                    pending = Some(r);
                    false
                }
            });
            if !done {
                // The collective cannot be cancelled: name the missing ranks and stop the job.
                stop_job(comm, &world, timeout, what);
            }
        });
    }

    /// After a timed-out collective: find which ranks no longer answer a "still here" message
    /// (each waiting rank sends one to every other), say so, and end the job.
    fn stop_job(comm: &Comm, world: &SimpleCommunicator, timeout: Duration, what: &str) -> ! {
        let grace = timeout.min(Duration::from_secs(30));
        let me = [comm.rank as u64];
        let mut inbox = vec![[u64::MAX]; comm.size];
        let others: Vec<usize> = (0..comm.size).filter(|&r| r != comm.rank).collect();
        let mut heard = vec![false; comm.size];
        mpi::request::scope(|scope| {
            // Requests to dead ranks never complete: the job ends inside this scope.
            let _sends: Vec<_> = others
                .iter()
                .map(|&r| world.process_at_rank(r as i32).immediate_send_with_tag(scope, &me[..], ALIVE))
                .collect();
            let mut recvs: Vec<_> = inbox
                .iter_mut()
                .enumerate()
                .filter(|(r, _)| *r != comm.rank)
                .map(|(r, slot)| {
                    (
                        r,
                        Some(world.process_at_rank(r as i32).immediate_receive_into_with_tag(
                            scope,
                            &mut slot[..],
                            ALIVE,
                        )),
                    )
                })
                .collect();
            poll(grace, || {
                for (r, req) in recvs.iter_mut() {
                    if let Some(q) = req.take() {
                        match q.test() {
                            Ok(_) => heard[*r] = true,
                            Err(q) => *req = Some(q),
                        }
                    }
                }
                others.iter().all(|&r| heard[r])
            });
            let missing: Vec<String> = others.iter().filter(|&&r| !heard[r]).map(|r| r.to_string()).collect();
            let who = if missing.is_empty() {
                "every rank answered afterwards (one was slower than the timeout)".to_string()
            } else {
                format!("no answer from rank(s) {} (dead or hung)", missing.join(", "))
            };
            eprintln!(
                "error: rank {} of {}: {what} waited {:.0} s (train.collective_timeout_seconds) in vain; {who}; \
                 stopping every rank",
                comm.rank,
                comm.size,
                timeout.as_secs_f64(),
            );
            world.abort(3)
        })
    }
}
