use std::path::PathBuf;

/// Where an utterance's audio is.
#[derive(Debug, Clone, PartialEq)]
pub enum AudioSource {
    File(PathBuf),
    /// A member of an uncompressed tar shard, read in place: `offset` and `size` in bytes.
    TarMember {
        shard: PathBuf,
        member: String,
        offset: u64,
        size: u64,
    },
}

impl AudioSource {
    /// A path for messages and format hints.
    pub fn display_path(&self) -> PathBuf {
        match self {
            AudioSource::File(p) => p.clone(),
            AudioSource::TarMember { shard, member, .. } => shard.join(member),
        }
    }
}

/// Corpus splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    Train,
    Dev,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Dev, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }
}

/// One utterance of any corpus layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Utterance {
    pub id: String,
    pub audio: AudioSource,
    /// Segment start and end in seconds, when the utterance is part of a longer file.
    pub start: Option<f64>,
    pub end: Option<f64>,
    pub text: Option<String>,
    pub lang: Option<String>,
    /// Class label for utterance classification (emotion, keyword, speaker, ...).
    pub label: Option<String>,
    /// Seconds, when known from the manifest or a header probe.
    pub duration: Option<f64>,
}

impl Utterance {
    pub fn new(id: impl Into<String>, audio: AudioSource) -> Self {
        Self { id: id.into(), audio, start: None, end: None, text: None, lang: None, label: None, duration: None }
    }

    /// Duration from the segment bounds, else the stored duration.
    pub fn seconds(&self) -> Option<f64> {
        match (self.start, self.end) {
            (Some(s), Some(e)) => Some(e - s),
            _ => self.duration,
        }
    }
}
