//! `cargo run -p speechtune-fuzz --example replay -- TARGET FILE...`: run inputs through a target
//! with the default panic handler (set RUST_BACKTRACE=1 for where it failed) and the fuzz drivers'
//! allocation limit.

#[global_allocator]
static ALLOC: speechtune_fuzz::Limited = speechtune_fuzz::Limited;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((name, files)) = args.split_first() else {
        eprintln!("usage: replay TARGET FILE...");
        std::process::exit(2);
    };
    let target = speechtune_fuzz::target(name).unwrap_or_else(|| {
        let names: Vec<_> = speechtune_fuzz::TARGETS.iter().map(|t| t.name).collect();
        eprintln!("unknown target {name}; targets: {}", names.join(", "));
        std::process::exit(2);
    });
    for f in files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{f}: {e}"));
        let start = std::time::Instant::now();
        speechtune_fuzz::run(target, &data);
        println!("{f}: ok in {:?}", start.elapsed());
    }
    speechtune_fuzz::cleanup();
}
