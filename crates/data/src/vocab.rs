//! Character vocabularies for CTC, saved as Hugging Face's `vocab.json` (token → id), the format
//! `Wav2Vec2CTCTokenizer` reads: `<pad>` is the CTC blank (id 0), `<unk>` unknown characters,
//! `|` the word separator; `[lang]` tokens for joint ASR + LID come next, then characters.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use crate::error::{Error, Result, read_bytes};

pub const BLANK: &str = "<pad>";
pub const UNK: &str = "<unk>";
pub const WORD_SEP: &str = "|";

#[derive(Debug, Clone, PartialEq)]
pub struct Vocab {
    tokens: Vec<String>,
    index: HashMap<String, u32>,
}

impl Vocab {
    /// The `[lang]` token of a language, as ESPnet's ML-SUPERB recipe writes it.
    pub fn lang_token(lang: &str) -> String {
        format!("[{lang}]")
    }

    /// Build from (normalised) training texts, with `[lang]` tokens for the given languages.
    pub fn build<'a>(texts: impl IntoIterator<Item = &'a str>, langs: &[String]) -> Self {
        let chars: BTreeSet<char> = texts.into_iter().flat_map(|t| t.chars()).filter(|c| *c != ' ').collect();
        let langs: BTreeSet<String> = langs.iter().map(|l| Self::lang_token(l)).collect();
        let tokens = [BLANK, UNK, WORD_SEP]
            .into_iter()
            .map(String::from)
            .chain(langs)
            .chain(chars.into_iter().map(String::from))
            .collect();
        Self::from_tokens(tokens)
    }

    fn from_tokens(tokens: Vec<String>) -> Self {
        let index = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        Self { tokens, index }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn id(&self, token: &str) -> Option<u32> {
        self.index.get(token).copied()
    }

    pub fn token(&self, id: u32) -> &str {
        self.tokens.get(id as usize).map(|s| s.as_str()).unwrap_or(UNK)
    }

    pub fn blank(&self) -> u32 {
        0
    }

    /// Language tokens present, as (token id, language).
    pub fn languages(&self) -> Vec<(u32, String)> {
        self.tokens
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                t.strip_prefix('[').and_then(|r| r.strip_suffix(']')).map(|l| (i as u32, l.to_string()))
            })
            .collect()
    }

    /// Token ids of a normalised text, optionally after its `[lang]` token; also returns how
    /// many characters were unknown (mapped to `<unk>`).
    pub fn encode(&self, text: &str, lang: Option<&str>) -> (Vec<u32>, usize) {
        let unk = self.index[UNK];
        let sep = self.index[WORD_SEP];
        let mut ids = Vec::with_capacity(text.len() + 1);
        let mut unknown = 0;
        if let Some(l) = lang {
            match self.id(&Self::lang_token(l)) {
                Some(id) => ids.push(id),
                None => {
                    ids.push(unk);
                    unknown += 1;
                }
            }
        }
        let mut buf = [0u8; 4];
        for c in text.chars() {
            if c == ' ' {
                ids.push(sep);
                continue;
            }
            match self.index.get(c.encode_utf8(&mut buf) as &str) {
                Some(&id) => ids.push(id),
                None => {
                    ids.push(unk);
                    unknown += 1;
                }
            }
        }
        (ids, unknown)
    }

    /// Text of token ids (blanks dropped, `|` as space, language tokens kept as `[xx]`).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut s = String::new();
        for &id in ids {
            match self.token(id) {
                BLANK => {}
                WORD_SEP => s.push(' '),
                t if t.starts_with('[') && t.ends_with(']') && t.len() > 2 => {
                    s.push_str(t);
                    s.push(' ');
                }
                t => s.push_str(t),
            }
        }
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// `vocab.json`: a JSON object token → id, in id order.
    pub fn to_json(&self) -> String {
        let body: Vec<String> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| format!("  {}: {i}", serde_json::to_string(t).expect("strings serialise")))
            .collect();
        format!("{{\n{}\n}}\n", body.join(",\n"))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = read_bytes(path)?;
        let bad = |reason: String| Error::Layout { path: path.to_path_buf(), reason };
        let map: HashMap<String, u32> =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("not a vocab.json: {e}")))?;
        let mut tokens = vec![String::new(); map.len()];
        for (t, &i) in &map {
            let slot = tokens.get_mut(i as usize).ok_or_else(|| bad(format!("id {i} of {t:?} is out of range")))?;
            *slot = t.clone();
        }
        if tokens.first().map(|s| s.as_str()) != Some(BLANK) || !map.contains_key(UNK) || !map.contains_key(WORD_SEP) {
            return Err(bad(format!("expected {BLANK} at id 0 and tokens {UNK} and {WORD_SEP}")));
        }
        Ok(Self::from_tokens(tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_encode_decode_round_trip() {
        let v = Vocab::build(["HELLO WORLD", "HOLA"], &["en".into(), "es".into()]);
        assert_eq!(&v.tokens[..5], &["<pad>", "<unk>", "|", "[en]", "[es]"]);
        assert_eq!(v.len(), 5 + 8); // A D E H L O R W
        let (ids, unknown) = v.encode("HELLO WORLD", Some("en"));
        assert_eq!(unknown, 0);
        assert_eq!(ids[0], v.id("[en]").unwrap());
        assert_eq!(ids[6], v.id("|").unwrap());
        assert_eq!(v.decode(&ids), "[en] HELLO WORLD");
        let (ids, unknown) = v.encode("HEY", None);
        assert_eq!((unknown, ids[2]), (1, v.id("<unk>").unwrap()));
        assert_eq!(v.languages(), vec![(3, "en".to_string()), (4, "es".to_string())]);
    }

    #[test]
    fn json_round_trip_and_bad_files() {
        let v = Vocab::build(["ÄB C"], &[]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vocab.json");
        std::fs::write(&p, v.to_json()).unwrap();
        assert_eq!(Vocab::load(&p).unwrap(), v);
        std::fs::write(&p, r#"{"a": 0, "<unk>": 1, "|": 2}"#).unwrap();
        assert!(Vocab::load(&p).unwrap_err().to_string().contains("<pad> at id 0"));
    }
}
