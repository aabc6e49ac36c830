//! Models named by Hugging Face Hub id (`owner/name`, optional `@revision`), downloaded with the
//! `hf-hub` crate's blocking client into the standard Hugging Face cache, so files fetched by
//! transformers are reused and the other way round.
//!
//! Environment, as `huggingface_hub` reads it: `HF_HUB_CACHE` (the cache folder), else
//! `HF_HOME/hub`, else `~/.cache/huggingface/hub`; `HF_ENDPOINT` (default
//! `https://huggingface.co`); `HF_TOKEN` (else the token file of the cache's parent folder);
//! `HF_HUB_OFFLINE=1` (only the cache, no network).
//!
//! Only what a model folder needs is fetched: `config.json`, the weights in the preferred
//! format (`model.safetensors`, or the shards its index lists; `pytorch_model.bin` only when no
//! safetensors exist), and the preprocessor, generation and tokenizer files that exist. hf-hub
//! writes each file under a temporary `.part` name, resumes it when a download is interrupted,
//! and renames it into the cache when complete, so the cache never holds a partial file.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// `owner/name` with an optional `@revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    pub repo: String,
    pub revision: String,
}

/// A Hub id, when `s` has its shape (and is not a path that exists).
pub fn parse_id(s: &str) -> Option<HubId> {
    let (repo, revision) = match s.split_once('@') {
        Some((r, rev)) if !rev.is_empty() => (r, rev.to_string()),
        Some(_) => return None,
        None => (s, "main".to_string()),
    };
    let (owner, name) = repo.split_once('/')?;
    let part = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && !p.contains("..")
            && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    (part(owner) && part(name)).then(|| HubId { repo: repo.to_string(), revision })
}

/// The files of a model folder worth fetching besides config and weights.
const EXTRAS: [&str; 9] = [
    "preprocessor_config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "special_tokens_map.json",
    "normalizer.json",
];

/// Which of a repository's files (`listed`) make a model folder, in download order.
pub fn files_to_fetch(listed: &[String], read_index: impl Fn(&str) -> Result<Vec<String>>) -> Result<Vec<String>> {
    let has = |f: &str| listed.iter().any(|l| l == f);
    if !has("config.json") {
        return Err(Error::Input("the repository has no config.json: not a transformers model".into()));
    }
    let mut files = vec!["config.json".to_string()];
    let weights = if has("model.safetensors") {
        vec!["model.safetensors".to_string()]
    } else if has("model.safetensors.index.json") {
        let mut v = vec!["model.safetensors.index.json".to_string()];
        v.extend(read_index("model.safetensors.index.json")?);
        v
    } else if has("pytorch_model.bin") {
        vec!["pytorch_model.bin".to_string()]
    } else if has("pytorch_model.bin.index.json") {
        let mut v = vec!["pytorch_model.bin.index.json".to_string()];
        v.extend(read_index("pytorch_model.bin.index.json")?);
        v
    } else {
        return Err(Error::Input(
            "the repository has no weights speechtune reads (model.safetensors, its shards, or pytorch_model.bin)"
                .into(),
        ));
    };
    files.extend(weights);
    files.extend(EXTRAS.iter().filter(|f| has(f)).map(|f| f.to_string()));
    Ok(files)
}

/// The shard files an index (`weight_map`) names, each once, in order.
pub fn shards_of_index(text: &str, path: &Path) -> Result<Vec<String>> {
    let bad = |why: String| Error::Input(format!("{}: {why}", path.display()));
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad("no weight_map".into()))?;
    let mut out: Vec<String> = Vec::new();
    for f in map.values() {
        let f = f.as_str().ok_or_else(|| bad("a weight_map value is not a file name".into()))?;
        if f.contains('/') || f.contains('\\') || f.starts_with('.') {
            return Err(bad(format!("shard name {f:?} leaves the repository folder")));
        }
        if !out.iter().any(|o| o == f) {
            out.push(f.to_string());
        }
    }
    Ok(out)
}

/// The cache folder, from the environment.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/huggingface/hub")
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// A local folder for `model`: the folder itself when it exists (or when `model` is no Hub
/// id), else the Hub id's snapshot in the cache, downloaded when needed.
pub fn resolve(model: &Path) -> Result<PathBuf> {
    if model.exists() {
        return Ok(model.to_path_buf());
    }
    let text = model.to_string_lossy();
    match parse_id(&text) {
        Some(id) if !text.starts_with("builtin:") => fetch(&id),
        _ => Ok(model.to_path_buf()),
    }
}

#[cfg(feature = "hub")]
fn fetch(id: &HubId) -> Result<PathBuf> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Cache, Repo, RepoType};

    let cache_path = cache_dir();
    let cache = Cache::new(cache_path.clone());
    let repo = Repo::with_revision(id.repo.clone(), RepoType::Model, id.revision.clone());
    let name = format!("{}: no such folder; as a Hugging Face Hub id ({}@{})", id.repo, id.repo, id.revision);
    if offline() {
        let config = cache.repo(repo).get("config.json").ok_or_else(|| {
            Error::Input(format!(
                "{name}: not in the Hugging Face cache {} and HF_HUB_OFFLINE is set: fetch it once online",
                cache_path.display()
            ))
        })?;
        return Ok(config.parent().map(Path::to_path_buf).unwrap_or_default());
    }
    let endpoint = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty());
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()).or_else(|| cache.token());
    let mut builder = ApiBuilder::from_cache(cache).with_progress(true).with_retries(3).with_token(token.clone());
    if let Some(e) = &endpoint {
        builder = builder.with_endpoint(e.clone());
    }
    let api = builder.build().map_err(|e| Error::Input(format!("{name}: cannot set up the Hub client: {e}")))?;
    let api_repo = api.repo(repo);
    let server = endpoint.unwrap_or_else(|| "https://huggingface.co".into());
    let explain = |e: hf_hub::api::sync::ApiError| -> Error {
        let status = match &e {
            hf_hub::api::sync::ApiError::RequestError(r) => match r.as_ref() {
                ureq::Error::Status(code, _) => Some(*code),
                ureq::Error::Transport(_) => None,
            },
            _ => None,
        };
        Error::Input(match status {
            Some(401) | Some(403) if token.is_none() => format!(
                "{name}: the Hub refused access ({}): a gated or private repository needs a token: set HF_TOKEN \
                 (and accept the model's terms on its page)",
                status.unwrap_or_default()
            ),
            Some(401) | Some(403) => format!("{name}: the Hub refused access with the token given (HF_TOKEN)"),
            Some(404) => format!("{name}: no such model repository or revision on {server}"),
            Some(code) => format!("{name}: {server} answered HTTP {code}"),
            None => format!(
                "{name}: cannot download from {server} ({e}); without network, models already in the cache {} are \
                 used with HF_HUB_OFFLINE=1",
                cache_path.display()
            ),
        })
    };
    let info = api_repo.info().map_err(explain)?;
    let listed: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
    let read_index = |f: &str| -> Result<Vec<String>> {
        let path = api_repo.get(f).map_err(explain)?;
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
        shards_of_index(&text, &path)
    };
    let files = files_to_fetch(&listed, read_index).map_err(|e| Error::Input(format!("{name}: {e}")))?;
    let mut dir = PathBuf::new();
    for f in &files {
        let path = api_repo.get(f).map_err(explain)?;
        if f == "config.json" {
            dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        }
    }
    Ok(dir)
}

#[cfg(not(feature = "hub"))]
fn fetch(id: &HubId) -> Result<PathBuf> {
    Err(Error::Input(format!(
        "{}: no such folder, and this build reads no Hugging Face Hub ids (the `hub` feature is off)",
        id.repo
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_told_from_paths() {
        let id = parse_id("facebook/wav2vec2-xls-r-300m").unwrap();
        assert_eq!((id.repo.as_str(), id.revision.as_str()), ("facebook/wav2vec2-xls-r-300m", "main"));
        assert_eq!(parse_id("openai/whisper-base@v1.0").unwrap().revision, "v1.0");
        for not in ["models/x/y", "/abs/path", "./x", "x", "a/../b", "../a", "a/b@", "a b/c"] {
            assert_eq!(parse_id(not), None, "{not}");
        }
    }

    #[test]
    fn only_the_files_a_model_folder_needs_are_fetched() {
        let listed: Vec<String> = [
            "config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "tf_model.h5",
            "preprocessor_config.json",
            "README.md",
            "tokenizer.json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let files = files_to_fetch(&listed, |_| unreachable!()).unwrap();
        assert_eq!(files, ["config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"]);
        let sharded: Vec<String> =
            ["config.json", "model.safetensors.index.json"].iter().map(|s| s.to_string()).collect();
        let files = files_to_fetch(&sharded, |_| Ok(vec!["a.safetensors".into(), "b.safetensors".into()])).unwrap();
        assert_eq!(files, ["config.json", "model.safetensors.index.json", "a.safetensors", "b.safetensors"]);
        let e = files_to_fetch(&["config.json".to_string()], |_| unreachable!()).unwrap_err().to_string();
        assert!(e.contains("no weights"), "{e}");
    }

    #[test]
    fn an_index_naming_a_file_outside_the_folder_is_refused() {
        let p = Path::new("model.safetensors.index.json");
        let ok = r#"{"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors", "c": "m-1.safetensors"}}"#;
        assert_eq!(shards_of_index(ok, p).unwrap(), ["m-1.safetensors", "m-2.safetensors"]);
        let evil = r#"{"weight_map": {"a": "../../etc/passwd"}}"#;
        assert!(shards_of_index(evil, p).unwrap_err().to_string().contains("leaves the repository folder"));
    }
}
