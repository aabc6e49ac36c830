//! Whisper's languages: its code, English name and the ISO 639-3 code ML-SUPERB names the
//! language by, so that `--language` accepts any of the three (`de`, `german`, `deu`).

/// (Whisper code, English name, ISO 639-3), in Whisper's token order.
pub const LANGUAGES: [(&str, &str, &str); 100] = [
    ("en", "english", "eng"),
    ("zh", "chinese", "cmn"),
    ("de", "german", "deu"),
    ("es", "spanish", "spa"),
    ("ru", "russian", "rus"),
    ("ko", "korean", "kor"),
    ("fr", "french", "fra"),
    ("ja", "japanese", "jpn"),
    ("pt", "portuguese", "por"),
    ("tr", "turkish", "tur"),
    ("pl", "polish", "pol"),
    ("ca", "catalan", "cat"),
    ("nl", "dutch", "nld"),
    ("ar", "arabic", "ara"),
    ("sv", "swedish", "swe"),
    ("it", "italian", "ita"),
    ("id", "indonesian", "ind"),
    ("hi", "hindi", "hin"),
    ("fi", "finnish", "fin"),
    ("vi", "vietnamese", "vie"),
    ("he", "hebrew", "heb"),
    ("uk", "ukrainian", "ukr"),
    ("el", "greek", "ell"),
    ("ms", "malay", "msa"),
    ("cs", "czech", "ces"),
    ("ro", "romanian", "ron"),
    ("da", "danish", "dan"),
    ("hu", "hungarian", "hun"),
    ("ta", "tamil", "tam"),
    ("no", "norwegian", "nor"),
    ("th", "thai", "tha"),
    ("ur", "urdu", "urd"),
    ("hr", "croatian", "hrv"),
    ("bg", "bulgarian", "bul"),
    ("lt", "lithuanian", "lit"),
    ("la", "latin", "lat"),
    ("mi", "maori", "mri"),
    ("ml", "malayalam", "mal"),
    ("cy", "welsh", "cym"),
    ("sk", "slovak", "slk"),
    ("te", "telugu", "tel"),
    ("fa", "persian", "fas"),
    ("lv", "latvian", "lav"),
    ("bn", "bengali", "ben"),
    ("sr", "serbian", "srp"),
    ("az", "azerbaijani", "aze"),
    ("sl", "slovenian", "slv"),
    ("kn", "kannada", "kan"),
    ("et", "estonian", "est"),
    ("mk", "macedonian", "mkd"),
    ("br", "breton", "bre"),
    ("eu", "basque", "eus"),
    ("is", "icelandic", "isl"),
    ("hy", "armenian", "hye"),
    ("ne", "nepali", "nep"),
    ("mn", "mongolian", "mon"),
    ("bs", "bosnian", "bos"),
    ("kk", "kazakh", "kaz"),
    ("sq", "albanian", "sqi"),
    ("sw", "swahili", "swa"),
    ("gl", "galician", "glg"),
    ("mr", "marathi", "mar"),
    ("pa", "punjabi", "pan"),
    ("si", "sinhala", "sin"),
    ("km", "khmer", "khm"),
    ("sn", "shona", "sna"),
    ("yo", "yoruba", "yor"),
    ("so", "somali", "som"),
    ("af", "afrikaans", "afr"),
    ("oc", "occitan", "oci"),
    ("ka", "georgian", "kat"),
    ("be", "belarusian", "bel"),
    ("tg", "tajik", "tgk"),
    ("sd", "sindhi", "snd"),
    ("gu", "gujarati", "guj"),
    ("am", "amharic", "amh"),
    ("yi", "yiddish", "yid"),
    ("lo", "lao", "lao"),
    ("uz", "uzbek", "uzb"),
    ("fo", "faroese", "fao"),
    ("ht", "haitian creole", "hat"),
    ("ps", "pashto", "pus"),
    ("tk", "turkmen", "tuk"),
    ("nn", "nynorsk", "nno"),
    ("mt", "maltese", "mlt"),
    ("sa", "sanskrit", "san"),
    ("lb", "luxembourgish", "ltz"),
    ("my", "myanmar", "mya"),
    ("bo", "tibetan", "bod"),
    ("tl", "tagalog", "tgl"),
    ("mg", "malagasy", "mlg"),
    ("as", "assamese", "asm"),
    ("tt", "tatar", "tat"),
    ("haw", "hawaiian", "haw"),
    ("ln", "lingala", "lin"),
    ("ha", "hausa", "hau"),
    ("ba", "bashkir", "bak"),
    ("jw", "javanese", "jav"),
    ("su", "sundanese", "sun"),
    ("yue", "cantonese", "yue"),
];

/// Whisper's code for a code, name or ISO 639-3 code (case-insensitive); `None` if unknown.
pub fn to_code(name: &str) -> Option<&'static str> {
    let n = name.trim().to_lowercase();
    LANGUAGES.iter().find(|(c, e, i)| *c == n || *e == n || *i == n).map(|l| l.0)
}

/// The ISO 639-3 code of a Whisper code (how ML-SUPERB corpora name languages).
pub fn iso639_3(code: &str) -> Option<&'static str> {
    LANGUAGES.iter().find(|l| l.0 == code).map(|l| l.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_names_and_iso_codes_resolve() {
        assert_eq!(to_code("de"), Some("de"));
        assert_eq!(to_code("German"), Some("de"));
        assert_eq!(to_code("deu"), Some("de"));
        assert_eq!(to_code("haitian creole"), Some("ht"));
        assert_eq!(to_code("xx"), None);
        assert_eq!(iso639_3("en"), Some("eng"));
        // Every code, name and ISO code is unique, so that a lookup is never ambiguous.
        let mut all: Vec<&str> = LANGUAGES.iter().flat_map(|l| [l.0, l.1, l.2]).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        // "lao", "haw" and "yue" are both Whisper/ISO codes of the same language.
        assert_eq!(n - all.len(), 3);
    }
}
