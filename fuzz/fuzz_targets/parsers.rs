//! One libFuzzer binary for every target of speechtune-fuzz, chosen by SPEECHTUNE_FUZZ_TARGET.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use speechtune_fuzz::{Limited, Target};

#[global_allocator]
static ALLOC: Limited = Limited;

fn target() -> &'static Target {
    static T: OnceLock<&'static Target> = OnceLock::new();
    T.get_or_init(|| {
        // libfuzzer-sys's panic hook aborts even on panics the library catches and turns into
        // errors (dependency bugs worked around with catch_unwind); the default hook only
        // prints. Panics that escape a target still abort (libfuzzer-sys checks the result).
        let _ = std::panic::take_hook();
        let name = std::env::var("SPEECHTUNE_FUZZ_TARGET").expect("set SPEECHTUNE_FUZZ_TARGET");
        speechtune_fuzz::target(&name).unwrap_or_else(|| panic!("no fuzz target {name}"))
    })
}

fuzz_target!(|data: &[u8]| speechtune_fuzz::run(target(), data));
