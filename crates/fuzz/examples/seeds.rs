//! `cargo run -p speechtune-fuzz --example seeds -- TARGET DIR`: write a target's seed inputs
//! into DIR (a libFuzzer corpus folder).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, dir] = &args[..] else {
        eprintln!("usage: seeds TARGET DIR");
        std::process::exit(2);
    };
    let t = speechtune_fuzz::target(name).unwrap_or_else(|| panic!("no target {name}"));
    std::fs::create_dir_all(dir).expect("corpus folder");
    for (i, s) in speechtune_fuzz::seeds(t).iter().enumerate() {
        std::fs::write(std::path::Path::new(dir).join(format!("seed-{i}")), s).expect("seed file");
    }
}
