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
        let name = std::env::var("SPEECHTUNE_FUZZ_TARGET").expect("set SPEECHTUNE_FUZZ_TARGET");
        speechtune_fuzz::target(&name).unwrap_or_else(|| panic!("no fuzz target {name}"))
    })
}

fuzz_target!(|data: &[u8]| speechtune_fuzz::run(target(), data));
