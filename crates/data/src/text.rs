//! Transcript normalisation as ML-SUPERB does it (ESPnet's `egs2/ml_superb/asr1/local/data_prep.py`):
//! drop `[...]` annotations, remove punctuation, upper-case — Unicode-aware by default.

use unicode_general_category::{GeneralCategory as G, get_general_category};

/// Which characters are removed as punctuation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Punctuation {
    /// Every Unicode punctuation and symbol character (categories P* and S*): works for any script.
    Unicode,
    /// Exactly ESPnet's recipe: Python's `string.punctuation` (ASCII only), and its greedy
    /// `\[[^()]*\]` bracket removal. Use it to compare numbers with published ML-SUPERB results.
    Ascii,
    /// Keep all characters.
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Case {
    Upper,
    Lower,
    Keep,
}

/// Normalisation settings; the default is ML-SUPERB's, made Unicode-aware.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextNorm {
    pub remove_brackets: bool,
    pub punctuation: Punctuation,
    pub case: Case,
}

impl Default for TextNorm {
    fn default() -> Self {
        Self { remove_brackets: true, punctuation: Punctuation::Unicode, case: Case::Upper }
    }
}

fn is_unicode_punctuation(c: char) -> bool {
    matches!(
        get_general_category(c),
        G::ConnectorPunctuation
            | G::DashPunctuation
            | G::OpenPunctuation
            | G::ClosePunctuation
            | G::InitialPunctuation
            | G::FinalPunctuation
            | G::OtherPunctuation
            | G::MathSymbol
            | G::CurrencySymbol
            | G::ModifierSymbol
            | G::OtherSymbol
    )
}

/// ESPnet's `re.sub(r"\[[^()]*\]", "", text)`: from a `[` to the last `]` reachable without
/// crossing a parenthesis (greedy), repeatedly.
fn remove_brackets_greedy(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '[' {
            let mut j = i + 1;
            let mut last_close = None;
            while j < chars.len() && chars[j] != '(' && chars[j] != ')' {
                if chars[j] == ']' {
                    last_close = Some(j);
                }
                j += 1;
            }
            if let Some(end) = last_close {
                i = end + 1;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Each `[...]` group on its own (no nesting).
fn remove_brackets_each(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut depth = 0usize;
    let mut pending = String::new();
    for c in text.chars() {
        match c {
            '[' => {
                depth += 1;
                pending.push(c);
            }
            ']' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    pending.clear();
                }
            }
            _ if depth > 0 => pending.push(c),
            _ => out.push(c),
        }
    }
    out + &pending // an unclosed `[` is text
}

/// Normalise one transcript. Whitespace is collapsed to single spaces and trimmed.
pub fn normalize(text: &str, norm: &TextNorm) -> String {
    let text = match (norm.remove_brackets, norm.punctuation) {
        (false, _) => text.to_string(),
        (true, Punctuation::Ascii) => remove_brackets_greedy(text),
        (true, _) => remove_brackets_each(text),
    };
    let kept: String = text
        .chars()
        .filter(|&c| match norm.punctuation {
            Punctuation::Unicode => !is_unicode_punctuation(c),
            Punctuation::Ascii => !c.is_ascii_punctuation(),
            Punctuation::Keep => true,
        })
        .collect();
    let cased = match norm.case {
        Case::Upper => kept.to_uppercase(),
        Case::Lower => kept.to_lowercase(),
        Case::Keep => kept,
    };
    cased.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ml_superb_default_is_unicode_aware() {
        let n = TextNorm::default();
        assert_eq!(normalize("Hello, world! [noise] It's «fine».", &n), "HELLO WORLD ITS FINE");
        assert_eq!(normalize("Grüße aus Köln — straße?", &n), "GRÜSSE AUS KÖLN STRASSE");
        assert_eq!(normalize("¿Qué tal? ¡Bien!", &n), "QUÉ TAL BIEN");
        // Devanagari keeps its combining vowel signs and virama; the danda is punctuation.
        assert_eq!(normalize("नमस्ते दुनिया।", &n), "नमस्ते दुनिया");
        assert_eq!(normalize("a [x] b [y] c", &n), "A B C");
    }

    #[test]
    fn ascii_mode_reproduces_espnet_exactly() {
        let n = TextNorm { punctuation: Punctuation::Ascii, ..TextNorm::default() };
        // ESPnet's greedy bracket regex eats everything between the first [ and the last ].
        assert_eq!(normalize("a [x] b [y] c", &n), "A C");
        assert_eq!(normalize("a [x (y] b", &n), "A X Y B");
        // string.punctuation is ASCII only: « » and — stay.
        assert_eq!(normalize("It's «fine» — ok.", &n), "ITS «FINE» — OK");
    }

    #[test]
    fn settings_can_keep_text_as_is() {
        let n = TextNorm { remove_brackets: false, punctuation: Punctuation::Keep, case: Case::Keep };
        assert_eq!(normalize("  Keep [this], please. ", &n), "Keep [this], please.");
        let lower = TextNorm { case: Case::Lower, ..TextNorm::default() };
        assert_eq!(normalize("ÀB,C", &lower), "àbc");
    }
}
