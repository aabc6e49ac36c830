//! The targets: each feeds its bytes to one parser the way speechtune reads that kind of file,
//! then uses what came out (reads every tensor, loads the model and runs it, decodes the audio).

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use speechtune_data::{AudioSource, Problems, Utterance};
use speechtune_models::burn::prelude::Device;
use speechtune_models::weights::{Weights, unpickle_json};
use speechtune_models::whisper::tokenizer::{Task, WhisperTokenizer};
use speechtune_models::{Upstream, fairseq, hub};

/// A scratch folder for the parsers that read files by path.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| tempfile::Builder::new().prefix("speechtune-fuzz").tempdir().expect("temp dir").keep())
}

/// Remove the scratch folder (the drivers call this when done).
pub fn cleanup() {
    let _ = std::fs::remove_dir_all(scratch());
}

fn write(dir: &str, name: &str, data: &[u8]) -> PathBuf {
    let d = scratch().join(dir);
    std::fs::create_dir_all(&d).expect("scratch folder");
    let p = d.join(name);
    std::fs::write(&p, data).expect("scratch file");
    p
}

/// Read every tensor the weights list, at the shape they claim.
fn read_all(w: &Weights) {
    let names: Vec<String> = w.names().map(str::to_string).collect();
    for n in names {
        if let Some(shape) = w.shape(&n) {
            let _ = w.values(&n, &shape);
        }
    }
}

pub fn pickle(data: &[u8]) {
    let _ = unpickle_json(data);
}

/// The pickles inside a seed file (the `data.pkl` of a zip checkpoint, or the file itself).
pub fn pickles_of(bytes: &[u8]) -> Vec<Vec<u8>> {
    let Ok(mut zip) = zip::ZipArchive::new(Cursor::new(bytes)) else { return vec![bytes.to_vec()] };
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).expect("zip member");
        if f.name().is_ok_and(|n| n.ends_with(".pkl")) {
            let mut v = Vec::new();
            f.read_to_end(&mut v).expect("pickle member");
            out.push(v);
        }
    }
    out
}

pub fn torch(data: &[u8]) {
    if let Ok(w) = Weights::from_torch_bytes(Path::new("fuzz/pytorch_model.bin"), data.to_vec()) {
        read_all(&w);
    }
}

pub fn fairseq(data: &[u8]) {
    let _ = fairseq::convert(Path::new("fuzz/checkpoint.pt"), data.to_vec(), None);
}

pub fn safetensors(data: &[u8]) {
    if let Ok(w) = Weights::from_safetensors_bytes(vec![(PathBuf::from("fuzz/model.safetensors"), data.to_vec())]) {
        read_all(&w);
    }
}

pub fn shard_index(data: &[u8]) {
    let _ = hub::shards_of_index(&String::from_utf8_lossy(data), Path::new("fuzz/model.safetensors.index.json"));
}

/// The fixtures whose weights a fuzzed config.json is loaded with.
const MODELS: [&str; 5] = ["wav2vec2-base", "wav2vec2-xlsr", "data2vec-audio", "wavlm-base", "whisper"];

/// The first byte of a config seed: which fixture's weights (low bits), and whether the rest is
/// `preprocessor_config.json` rather than `config.json` (high bit).
pub fn weights_for(path: &Path) -> u8 {
    let folder = path.parent().and_then(|p| p.file_name()).and_then(|f| f.to_str()).unwrap_or("");
    let i = MODELS.iter().position(|m| *m == folder).unwrap_or(0) as u8;
    let preprocessor = path.file_name().is_some_and(|f| f == "preprocessor_config.json");
    i | if preprocessor { 0x80 } else { 0 }
}

pub fn config(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else { return };
    let model = MODELS[(sel & 0x7f) as usize % MODELS.len()];
    let fixture = crate::root().join("tests/fixtures").join(model);
    let dir = scratch().join(format!("config-{model}"));
    if !dir.join("model.safetensors").exists() {
        std::fs::create_dir_all(&dir).expect("scratch folder");
        std::fs::copy(fixture.join("model.safetensors"), dir.join("model.safetensors")).expect("fixture weights");
    }
    let (fuzzed, other) = if sel & 0x80 != 0 {
        ("preprocessor_config.json", "config.json")
    } else {
        ("config.json", "preprocessor_config.json")
    };
    std::fs::write(dir.join(fuzzed), rest).expect("scratch file");
    match std::fs::read(fixture.join(other)) {
        Ok(b) => std::fs::write(dir.join(other), b).expect("scratch file"),
        Err(_) => {
            let _ = std::fs::remove_file(dir.join(other));
        }
    }
    let dev = Device::flex();
    if let Ok(up) = Upstream::load(&dir, &dev) {
        let wave: Vec<f32> = (0..3200).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
        let _ = up.forward_waves(&[wave], &dev);
    }
}

pub fn tokenizer(data: &[u8]) {
    let path = write("tokenizer", "tokenizer.json", data);
    if let Ok(t) = WhisperTokenizer::load(path.parent().expect("folder")) {
        if let Ok(ids) = t.encode("hello world, ça va?") {
            let _ = t.decode(&ids, true);
            let _ = t.decode(&ids, false);
        }
        let lang = t.languages().first().map(|l| l.1);
        let _ = t.prefix(lang, Some(Task::Transcribe), false);
        let _ = t.decode(&[0, 1, 2, u32::MAX], false);
    }
}

pub fn manifest(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else { return };
    let dir = scratch().join("manifest");
    if !dir.join("a.wav").exists() {
        std::fs::create_dir_all(&dir).expect("scratch folder");
        std::fs::copy(crate::root().join("tests/fixtures/audio/mono16k.wav"), dir.join("a.wav")).expect("audio");
    }
    let name = if sel & 1 == 1 { "m.jsonl" } else { "m.tsv" };
    let path = write("manifest", name, rest);
    for skip_bad in [true, false] {
        let _ = speechtune_data::readers::manifest::read(&path, None, &mut Problems::new(skip_bad));
    }
}

pub fn tar(data: &[u8]) {
    let path = write("tar", "shard.tar", data);
    let Ok(index) = speechtune_data::readers::shards::index_tar(&path) else { return };
    let mut members: Vec<_> = index.into_iter().collect();
    members.sort();
    for (member, (offset, size)) in members.into_iter().take(8) {
        let u = Utterance::new(member.clone(), AudioSource::TarMember { shard: path.clone(), member, offset, size });
        let _ = speechtune_data::load_audio(&u);
    }
}

const EXTENSIONS: [&str; 6] = ["wav", "flac", "ogg", "mp3", "m4a", ""];

/// The first byte of an audio seed: which file name extension the bytes are given under.
pub fn extension_byte(path: &Path) -> u8 {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    EXTENSIONS.iter().position(|e| *e == ext).unwrap_or(EXTENSIONS.len() - 1) as u8
}

pub fn audio(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else { return };
    let name = format!("fuzz/audio.{}", EXTENSIONS[sel as usize % EXTENSIONS.len()]);
    if let Ok(d) = speechtune_audio::decode_bytes(rest.to_vec(), Path::new(&name)) {
        let _ = speechtune_audio::resample(&d.samples, d.sample_rate, speechtune_audio::SAMPLE_RATE);
    }
}
