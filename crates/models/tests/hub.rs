//! Hub ids through the real `hf-hub` client, against a local server that serves fixture
//! repositories in the Hub's URL layout (`HF_ENDPOINT`). One test function: the environment
//! variables it sets are the process's.
#![cfg(feature = "hub")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::prelude::*;
use speechtune_models::Upstream;
use speechtune_models::hub::resolve;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixture() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap()).join("../../tests/fixtures/wav2vec2-xlsr")
}

/// What the server does with downloads of `model.safetensors`.
#[derive(Clone, Copy, PartialEq)]
enum Weights {
    Whole,
    /// The first download: send the headers of the whole file, then half of it, then hang up.
    CutFirst,
}

struct Server {
    url: String,
    /// Requests for the weights file (full or ranged).
    weight_requests: Arc<AtomicUsize>,
    mode: Arc<Mutex<Weights>>,
}

/// Repositories: `test-org/tiny-xlsr` (public) and `test-org/gated` (needs token "secret").
fn serve() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    for f in ["config.json", "model.safetensors", "preprocessor_config.json", "reference.safetensors"] {
        files.insert(f.into(), std::fs::read(fixture().join(f)).unwrap());
    }
    files.insert("README.md".into(), b"# a model card nobody needs\n".to_vec());
    let files = Arc::new(files);
    let weight_requests = Arc::new(AtomicUsize::new(0));
    let mode = Arc::new(Mutex::new(Weights::Whole));
    let (w, m) = (weight_requests.clone(), mode.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (files, w, m) = (files.clone(), w.clone(), m.clone());
            std::thread::spawn(move || answer(stream, &files, &w, &m));
        }
    });
    Server { url, weight_requests, mode }
}

fn answer(
    mut stream: TcpStream,
    files: &HashMap<String, Vec<u8>>,
    weight_requests: &AtomicUsize,
    mode: &Mutex<Weights>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let authorised = headers.get("authorization").is_some_and(|a| a == "Bearer secret");
    let reply = |stream: &mut TcpStream, status: &str, extra: &[(String, String)], body: &[u8]| {
        let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
        for (k, v) in extra {
            head += &format!("{k}: {v}\r\n");
        }
        head += "\r\n";
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body);
    };
    let repo_of = |p: &str| -> Option<(String, String)> {
        let parts: Vec<&str> = p.trim_start_matches('/').splitn(5, '/').collect();
        match parts.as_slice() {
            [owner, name, "resolve", _rev, file] => Some((format!("{owner}/{name}"), file.to_string())),
            _ => None,
        }
    };
    let known = |repo: &str| repo == "test-org/tiny-xlsr" || repo == "test-org/gated";
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let repo = rest.split("/revision/").next().unwrap_or("");
        if !known(repo) {
            return reply(&mut stream, "404 Not Found", &[], b"{\"error\":\"Repository not found\"}");
        }
        if repo == "test-org/gated" && !authorised {
            return reply(&mut stream, "401 Unauthorized", &[], b"{\"error\":\"gated\"}");
        }
        let mut names: Vec<&String> = files.keys().collect();
        names.sort();
        let siblings: Vec<serde_json::Value> = names.iter().map(|n| serde_json::json!({ "rfilename": n })).collect();
        let body = serde_json::json!({ "sha": COMMIT, "siblings": siblings }).to_string();
        return reply(&mut stream, "200 OK", &[], body.as_bytes());
    }
    let Some((repo, file)) = repo_of(&path) else {
        return reply(&mut stream, "404 Not Found", &[], b"");
    };
    let Some(data) = files.get(&file).filter(|_| known(&repo)) else {
        return reply(&mut stream, "404 Not Found", &[], b"");
    };
    if repo == "test-org/gated" && !authorised {
        return reply(&mut stream, "401 Unauthorized", &[], b"");
    }
    let (start, end) = match headers.get("range").and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap();
            let a: usize = a.parse().unwrap();
            let b: usize = if b.is_empty() { data.len() - 1 } else { b.parse().unwrap() };
            (a, b.min(data.len() - 1))
        }
        None => (0, data.len() - 1),
    };
    let extra = vec![
        ("ETag".to_string(), format!("\"etag-{file}-{}\"", data.len())),
        ("X-Repo-Commit".to_string(), COMMIT.to_string()),
        ("Content-Range".to_string(), format!("bytes {start}-{end}/{}", data.len())),
    ];
    let body = &data[start..=end];
    if file == "model.safetensors" && end > start {
        let n = weight_requests.fetch_add(1, Ordering::SeqCst) + 1;
        if *mode.lock().unwrap() == Weights::CutFirst && n == 1 {
            let mut head = format!("HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n", body.len());
            for (k, v) in &extra {
                head += &format!("{k}: {v}\r\n");
            }
            head += "\r\n";
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body[..body.len() / 2]);
            return; // hang up mid-file
        }
    }
    reply(&mut stream, "206 Partial Content", &extra, body);
}

fn set(vars: &[(&str, Option<&str>)]) {
    for (k, v) in vars {
        // SAFETY: this test binary runs one test function, on one thread, before any other
        // thread reads the environment.
        unsafe {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
    }
}

fn hidden(dir: &Path) -> Vec<f32> {
    let device = Device::flex();
    let up = Upstream::open(dir, &device).unwrap();
    let wave: Vec<f32> = (0..8000).map(|i| (i as f32 * 0.01).sin()).collect();
    let out = up.forward_waves(&[wave], &device).unwrap();
    out.hidden_states.last().unwrap().clone().into_data().iter::<f32>().collect()
}

/// Every file in `dir` (recursively) whose name says it is incomplete.
fn partial_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(partial_files(&p));
        } else if p.extension().is_some_and(|x| x == "part") {
            out.push(p);
        }
    }
    out
}

#[test]
fn hub_ids_download_into_the_hugging_face_cache_and_work_offline() {
    let server = serve();
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("hub");
    set(&[
        ("HF_ENDPOINT", Some(&server.url)),
        ("HF_HOME", Some(home.path().to_str().unwrap())),
        ("HF_HUB_CACHE", None),
        ("HF_TOKEN", None),
        ("HF_HUB_OFFLINE", None),
    ]);

    // A download cut short is resumed from where it stopped (hf-hub retries with a Range).
    *server.mode.lock().unwrap() = Weights::CutFirst;
    let dir = resolve(Path::new("test-org/tiny-xlsr")).unwrap();
    assert_eq!(server.weight_requests.load(Ordering::SeqCst), 2, "the cut download was resumed once");
    assert!(dir.starts_with(cache.join("models--test-org--tiny-xlsr/snapshots")), "{}", dir.display());
    for f in ["config.json", "model.safetensors", "preprocessor_config.json"] {
        assert_eq!(std::fs::read(dir.join(f)).unwrap(), std::fs::read(fixture().join(f)).unwrap(), "{f}");
    }
    // Only what a model folder needs: no model card, no reference tensors.
    assert!(!dir.join("README.md").exists() && !dir.join("reference.safetensors").exists());
    assert!(partial_files(&cache).is_empty(), "{:?}", partial_files(&cache));
    assert_eq!(std::fs::read_to_string(cache.join("models--test-org--tiny-xlsr/refs/main")).unwrap().trim(), COMMIT);
    // The model the id names is the fixture's.
    assert_eq!(hidden(Path::new("test-org/tiny-xlsr")), hidden(&fixture()));

    // Offline: the cache answers; an id never fetched is a clear error naming the cache.
    set(&[("HF_HUB_OFFLINE", Some("1")), ("HF_ENDPOINT", Some("http://127.0.0.1:9"))]);
    assert_eq!(resolve(Path::new("test-org/tiny-xlsr")).unwrap(), dir);
    let e = resolve(Path::new("test-org/other")).unwrap_err().to_string();
    assert!(e.contains("HF_HUB_OFFLINE") && e.contains(cache.to_str().unwrap()), "{e}");

    // No network: the message says so and points at offline mode.
    set(&[("HF_HUB_OFFLINE", None), ("HF_ENDPOINT", Some("http://127.0.0.1:9"))]);
    let e = resolve(Path::new("test-org/never-fetched")).unwrap_err().to_string();
    assert!(e.contains("cannot download from http://127.0.0.1:9") && e.contains("HF_HUB_OFFLINE=1"), "{e}");

    // A missing repository, and a gated one without and with a token.
    set(&[("HF_ENDPOINT", Some(&server.url))]);
    let e = resolve(Path::new("test-org/missing")).unwrap_err().to_string();
    assert!(e.contains("no such model repository"), "{e}");
    let e = resolve(Path::new("test-org/gated")).unwrap_err().to_string();
    assert!(e.contains("HF_TOKEN") && e.contains("401"), "{e}");
    set(&[("HF_TOKEN", Some("secret"))]);
    assert!(resolve(Path::new("test-org/gated")).unwrap().join("model.safetensors").is_file());

    // HF_HUB_CACHE wins over HF_HOME; a path that exists is never taken for an id.
    let other = tempfile::tempdir().unwrap();
    set(&[("HF_HUB_CACHE", Some(other.path().to_str().unwrap()))]);
    let again = resolve(Path::new("test-org/tiny-xlsr")).unwrap();
    assert!(again.starts_with(other.path()), "{}", again.display());
    assert_eq!(resolve(&fixture()).unwrap(), fixture());
}
