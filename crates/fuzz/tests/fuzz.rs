//! Every parser of a downloaded file against its seeds, every earlier finding
//! (`fuzz/regressions/TARGET/`), and seeded mutations for a fixed time per target
//! (`SPEECHTUNE_FUZZ_SECONDS`, default 2; `SPEECHTUNE_FUZZ_TARGETS=a,b` to choose). A panic
//! fails the test naming the target and the file the input was saved to; an allocation over the
//! limit aborts the process ("memory allocation of N bytes failed") with the input left in
//! `target/fuzz-last-TARGET.bin`; an input slower than 10 s fails the test.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use speechtune_fuzz::mutate::{Rng, mutate};
use speechtune_fuzz::{Limited, TARGETS, Target, regressions, run, seeds};

#[global_allocator]
static ALLOC: Limited = Limited;

const SLOW: Duration = Duration::from_secs(10);

fn last_input(t: &Target) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target");
    std::fs::create_dir_all(&dir).expect("target folder");
    dir.join(format!("fuzz-last-{}.bin", t.name))
}

/// Run one input; on a panic or a slow input, return what went wrong.
fn check(t: &Target, data: &[u8], save: bool) -> Result<(), String> {
    if save {
        std::fs::write(last_input(t), data).expect("saving the input");
    }
    let start = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| run(t, data)));
    let took = start.elapsed();
    match outcome {
        Err(p) => {
            let msg = p.downcast_ref::<String>().cloned().or(p.downcast_ref::<&str>().map(|s| s.to_string()));
            Err(format!("panic: {}", msg.unwrap_or_default()))
        }
        Ok(()) if took > SLOW => Err(format!("took {took:?}")),
        Ok(()) => Ok(()),
    }
}

#[test]
fn every_parser_survives_its_seeds_its_findings_and_mutations() {
    let seconds: f64 = std::env::var("SPEECHTUNE_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let only = std::env::var("SPEECHTUNE_FUZZ_TARGETS").ok();
    // Panics are findings reported below, not noise on stderr.
    std::panic::set_hook(Box::new(|_| {}));
    let mut failures = Vec::new();
    for t in TARGETS {
        if only.as_deref().is_some_and(|o| !o.split(',').any(|n| n == t.name)) {
            continue;
        }
        let seeds = seeds(t);
        assert!(!seeds.is_empty(), "{}: no seeds", t.name);
        for (i, s) in seeds.iter().enumerate() {
            if let Err(e) = check(t, s, false) {
                failures.push(format!("{}: seed {i}: {e}", t.name));
            }
        }
        let found = regressions(t);
        for (path, data) in &found {
            if let Err(e) = check(t, data, false) {
                failures.push(format!("{}: {}: {e}", t.name, path.display()));
            }
        }
        let mut rng = Rng::new(0x5eed ^ t.name.len() as u64);
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let mut n = 0;
        while Instant::now() < deadline {
            let input = mutate(&mut rng, &seeds);
            n += 1;
            if let Err(e) = check(t, &input, true) {
                let path = last_input(t).with_extension(format!("{n}.bin"));
                std::fs::write(&path, &input).expect("saving the finding");
                failures.push(format!("{}: mutation {n}: {e} (input saved to {})", t.name, path.display()));
                break;
            }
        }
        eprintln!("{:<12} {} seeds, {} regressions, {n} mutations in {seconds} s", t.name, seeds.len(), found.len());
    }
    speechtune_fuzz::cleanup();
    let _ = std::panic::take_hook();
    assert!(failures.is_empty(), "findings:\n{}", failures.join("\n"));
}
