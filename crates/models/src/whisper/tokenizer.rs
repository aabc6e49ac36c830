//! Whisper's tokenizer, read from the model directory with the `tokenizers` crate: `tokenizer.json`
//! when present, else the slow files (`vocab.json` + `merges.txt` + `added_tokens.json`) as a
//! byte-level BPE. Special tokens: `<|endoftext|>`, `<|startoftranscript|>`, one token per
//! language in Whisper's order right after it, `<|translate|>`, `<|transcribe|>`,
//! `<|notimestamps|>`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tokenizers::models::bpe::BPE;
use tokenizers::{AddedToken, Tokenizer};

use crate::{Error, Result};

/// What the decoder is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Transcribe,
    Translate,
}

#[derive(Clone)]
pub struct WhisperTokenizer {
    inner: Tokenizer,
    /// Where it was read from (for errors).
    path: PathBuf,
    /// Language codes in token order (`en`, `zh`, ...), with their ids.
    languages: Vec<(String, u32)>,
}

impl std::fmt::Debug for WhisperTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WhisperTokenizer({}, {} languages)", self.path.display(), self.languages.len())
    }
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Input(format!("{}: {reason}", path.display()))
}

impl WhisperTokenizer {
    /// Read the tokenizer of a Whisper model directory.
    pub fn load(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let (inner, path) = if json.is_file() { (Self::parse_json(&json)?, json) } else { Self::from_slow_files(dir)? };
        let mut t = Self { inner, path, languages: Vec::new() };
        t.languages = t.find_languages()?;
        Ok(t)
    }

    /// `tokenizer.json`. The tokenizers crate (0.23) panics on some malformed files (e.g. a
    /// `decoder` that is neither of its forms: `.expect("Helper")` in its deserializer); that
    /// panic is turned into an error naming the file, as for any other bad tokenizer.
    fn parse_json(path: &Path) -> Result<Tokenizer> {
        let text = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        // Invalid JSON is what usually trips that panic: report it with its line and column.
        serde_json::from_slice::<serde_json::Value>(&text).map_err(|e| bad(path, e))?;
        let parsed = std::panic::catch_unwind(|| Tokenizer::from_bytes(&text));
        match parsed {
            Ok(t) => t.map_err(|e| bad(path, e)),
            Err(p) => {
                let what = p.downcast_ref::<String>().cloned().or(p.downcast_ref::<&str>().map(|s| s.to_string()));
                Err(bad(path, format!("malformed tokenizer ({})", what.unwrap_or_default())))
            }
        }
    }

    /// `vocab.json` + `merges.txt` (byte-level BPE, as GPT-2) + `added_tokens.json`.
    fn from_slow_files(dir: &Path) -> Result<(Tokenizer, PathBuf)> {
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        for f in [&vocab, &merges] {
            if !f.is_file() {
                return Err(Error::Input(format!(
                    "{}: no tokenizer (tokenizer.json, or vocab.json + merges.txt) in this Whisper model folder",
                    f.display()
                )));
            }
        }
        let bpe =
            BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy()).build().map_err(|e| bad(&vocab, e))?;
        let mut tok = Tokenizer::new(bpe);
        let byte_level = tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, true);
        tok.with_pre_tokenizer(Some(byte_level));
        tok.with_decoder(Some(byte_level));
        let added = dir.join("added_tokens.json");
        if added.is_file() {
            let text = std::fs::read_to_string(&added).map_err(|source| Error::Io { path: added.clone(), source })?;
            let map: HashMap<String, u32> = serde_json::from_str(&text).map_err(|e| bad(&added, e))?;
            let mut list: Vec<(String, u32)> = map.into_iter().collect();
            list.sort_by_key(|e| e.1);
            for (token, id) in list {
                tok.add_special_tokens([AddedToken::from(token.clone(), true)]).map_err(|e| bad(&added, e))?;
                if tok.token_to_id(&token) != Some(id) {
                    return Err(bad(&added, format!("{token} should have id {id} (ids must follow the vocabulary)")));
                }
            }
        }
        // `<|endoftext|>` lives in vocab.json in the released files; it is special all the same.
        if tok.token_to_id("<|endoftext|>").is_some() {
            tok.add_special_tokens([AddedToken::from("<|endoftext|>", true)]).map_err(|e| bad(&vocab, e))?;
        }
        Ok((tok, vocab))
    }

    /// Language tokens: every `<|xx|>` between `<|startoftranscript|>` and `<|translate|>`.
    fn find_languages(&self) -> Result<Vec<(String, u32)>> {
        let (sot, translate) = (self.special("<|startoftranscript|>")?, self.special("<|translate|>")?);
        // Whisper has 99 or 100 languages; ids far apart are a broken (or hostile) file.
        if translate <= sot || translate - sot > 1000 {
            return Err(bad(
                &self.path,
                format!(
                    "<|startoftranscript|> ({sot}) and <|translate|> ({translate}) do not enclose the language tokens"
                ),
            ));
        }
        let mut out = Vec::new();
        for id in sot + 1..translate {
            let tok = self.inner.id_to_token(id).unwrap_or_default();
            let code = tok.strip_prefix("<|").and_then(|t| t.strip_suffix("|>"));
            match code {
                Some(c) => out.push((c.to_string(), id)),
                None => return Err(bad(&self.path, format!("token {id} ({tok}) is not a language token"))),
            }
        }
        Ok(out)
    }

    /// The id of a special token, or an error naming the tokenizer file.
    pub fn special(&self, token: &str) -> Result<u32> {
        self.inner.token_to_id(token).ok_or_else(|| bad(&self.path, format!("no {token} token")))
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Language codes and their token ids, in Whisper's order.
    pub fn languages(&self) -> &[(String, u32)] {
        &self.languages
    }

    /// The id of a language given as Whisper's code (`en`), or as an ISO 639-3 code (`eng`) or
    /// English name (`english`) Whisper knows.
    pub fn language(&self, name: &str) -> Result<u32> {
        let code = super::languages::to_code(name).unwrap_or(name);
        self.languages.iter().find(|(c, _)| c == code).map(|l| l.1).ok_or_else(|| {
            let codes: Vec<&str> = self.languages.iter().map(|l| l.0.as_str()).collect();
            bad(&self.path, format!("no language token for {name:?}; valid codes: {}", codes.join(" ")))
        })
    }

    /// Whisper's code of a language token id.
    pub fn language_code(&self, id: u32) -> Option<&str> {
        self.languages.iter().find(|l| l.1 == id).map(|l| l.0.as_str())
    }

    /// `<|startoftranscript|> [<|lang|>] [<|task|>] [<|notimestamps|>]`, as transformers'
    /// `prefix_tokens`.
    pub fn prefix(&self, language: Option<u32>, task: Option<Task>, timestamps: bool) -> Result<Vec<u32>> {
        let mut p = vec![self.special("<|startoftranscript|>")?];
        p.extend(language);
        match task {
            Some(Task::Transcribe) => p.push(self.special("<|transcribe|>")?),
            Some(Task::Translate) => p.push(self.special("<|translate|>")?),
            None => {}
        }
        if !timestamps {
            p.push(self.special("<|notimestamps|>")?);
        }
        Ok(p)
    }

    /// Token ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| bad(&self.path, e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens kept or left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| bad(&self.path, e))
    }
}
