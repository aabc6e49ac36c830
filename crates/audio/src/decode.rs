//! Decoding any container/codec symphonia knows (wav, flac, ogg/vorbis, mp3, aac/m4a) to f32.

use std::fs::File;
use std::io::Seek;
use std::path::Path;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{CODEC_TYPE_NULL, CodecParameters, DecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::{Error, Result, SAMPLE_RATE, resample, sanity};

/// Decoded audio, downmixed to one channel.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    /// Channels in the file before the downmix.
    pub channels: usize,
}

/// Header facts about an audio file, read without decoding it.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioInfo {
    pub sample_rate: u32,
    pub channels: usize,
    /// Samples per channel, when the container states it.
    pub frames: Option<u64>,
}

impl AudioInfo {
    pub fn duration(&self) -> Option<f64> {
        self.frames.map(|n| n as f64 / self.sample_rate as f64)
    }
}

/// An opened container and its first audio track.
struct Stream {
    format: Box<dyn FormatReader>,
    track_id: u32,
    params: CodecParameters,
}

fn open_stream(source: Box<dyn MediaSource>, ext: Option<&str>, path: &Path) -> Result<Stream> {
    let unreadable = |reason: String| Error::Unreadable { path: path.to_path_buf(), reason };
    let mss = MediaSourceStream::new(source, Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = ext {
        hint.with_extension(ext);
    }
    // Gapless: trim encoder delay and padding where the container records them (Ogg, LAME MP3).
    let opts = FormatOptions { enable_gapless: true, ..Default::default() };
    let probed = symphonia::default::get_probe()
        .format(&hint, mss, &opts, &MetadataOptions::default())
        .map_err(|e| unreadable(format!("unsupported or corrupt container ({e}){}", ffmpeg_hint(path))))?;
    let format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| unreadable("no audio track".into()))?;
    let (track_id, params) = (track.id, track.codec_params.clone());
    Ok(Stream { format, track_id, params })
}

/// Containers symphonia cannot open (MPEG-TS, video files, ...) still convert with ffmpeg.
fn ffmpeg_hint(path: &Path) -> String {
    format!("; convert it first, e.g. `ffmpeg -i {} -ac 1 -ar 16000 out.flac`", path.display())
}

/// Read the header of an audio file: sample rate, channels and length, without decoding.
pub fn probe_file(path: &Path) -> Result<AudioInfo> {
    let ext = path.extension().and_then(|e| e.to_str());
    let p = guarded(path, || Ok(open_stream(checked_file(path)?, ext, path)?.params))?;
    let rate = p
        .sample_rate
        .ok_or_else(|| Error::Unreadable { path: path.to_path_buf(), reason: "unknown sample rate".into() })?;
    Ok(AudioInfo { sample_rate: rate, channels: p.channels.map(|c| c.count()).unwrap_or(0), frames: p.n_frames })
}

/// Decode a file and average its channels into mono. Samples keep the file's rate.
pub fn decode_file(path: &Path) -> Result<Decoded> {
    decode_source(checked_file(path)?, path.extension().and_then(|e| e.to_str()), path)
}

/// A file whose length fields were checked (see `sanity`), as a source for symphonia.
fn checked_file(path: &Path) -> Result<Box<dyn MediaSource>> {
    let open = |source| Error::Open { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(open)?;
    let len = file.metadata().map_err(open)?.len();
    let patches =
        sanity::check(&mut file, len).map_err(|reason| Error::Unreadable { path: path.to_path_buf(), reason })?;
    file.rewind().map_err(open)?;
    Ok(Box::new(sanity::Patched::new(file, len, patches)))
}

/// Decode audio held in memory (e.g. a tar member); `name` is used for the format hint and in errors.
pub fn decode_bytes(bytes: Vec<u8>, name: &Path) -> Result<Decoded> {
    let len = bytes.len() as u64;
    let mut cursor = std::io::Cursor::new(bytes);
    let patches =
        sanity::check(&mut cursor, len).map_err(|reason| Error::Unreadable { path: name.to_path_buf(), reason })?;
    cursor.set_position(0);
    decode_source(Box::new(sanity::Patched::new(cursor, len, patches)), name.extension().and_then(|e| e.to_str()), name)
}

/// Run symphonia, turning a panic inside it (it asserts on some malformed headers) into an error
/// naming the file: a bad file in a corpus must not take a training run down.
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let what = p.downcast_ref::<String>().cloned().or(p.downcast_ref::<&str>().map(|s| s.to_string()));
            Err(Error::Unreadable {
                path: path.to_path_buf(),
                reason: format!("malformed file (the decoder failed: {})", what.unwrap_or_default()),
            })
        }
    }
}

fn decode_source(source: Box<dyn MediaSource>, ext: Option<&str>, path: &Path) -> Result<Decoded> {
    guarded(path, || decode_stream(source, ext, path))
}

fn decode_stream(source: Box<dyn MediaSource>, ext: Option<&str>, path: &Path) -> Result<Decoded> {
    let unreadable = |reason: String| Error::Unreadable { path: path.to_path_buf(), reason };
    let Stream { mut format, track_id, params } = open_stream(source, ext, path)?;
    let mut sample_rate = params.sample_rate;
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| unreadable(format!("unsupported codec ({e}){}", ffmpeg_hint(path))))?;

    let mut mono = Vec::new();
    let mut channels = params.channels.map(|c| c.count()).unwrap_or(0);
    let mut buf: Option<SampleBuffer<f32>> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(SymError::ResetRequired) => break,
            Err(e) => return Err(unreadable(format!("reading packet: {e}"))),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            // A damaged packet in an otherwise good stream: skip it as players do.
            Err(SymError::DecodeError(_)) => continue,
            Err(e) => return Err(unreadable(format!("decoding: {e}"))),
        };
        let spec = *decoded.spec();
        sample_rate = Some(spec.rate);
        channels = spec.channels.count();
        if channels == 0 {
            return Err(unreadable("a packet with no channels".into()));
        }
        let needed = decoded.capacity() as u64;
        if buf.as_ref().is_none_or(|b| (b.capacity() as u64) < needed * channels as u64) {
            buf = Some(SampleBuffer::new(needed, spec));
        }
        let b = buf.as_mut().expect("buffer allocated above");
        b.copy_interleaved_ref(decoded);
        let scale = 1.0 / channels as f32;
        for frame in b.samples().chunks_exact(channels) {
            mono.push(frame.iter().sum::<f32>() * scale);
        }
    }
    let sample_rate = sample_rate.ok_or_else(|| unreadable("unknown sample rate".into()))?;
    if mono.is_empty() {
        return Err(Error::Empty { path: path.to_path_buf() });
    }
    Ok(Decoded { samples: mono, sample_rate, channels })
}

/// Decode, downmix and resample to 16 kHz: the input every model expects.
pub fn load_mono_16k(path: &Path) -> Result<Vec<f32>> {
    let d = decode_file(path)?;
    resample(&d.samples, d.sample_rate, SAMPLE_RATE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"))
            .join("../../tests/fixtures/audio")
            .join(name)
    }

    #[test]
    fn wav_int16_decodes_exactly() {
        let d = decode_file(&fixture("mono16k.wav")).unwrap();
        assert_eq!((d.sample_rate, d.channels, d.samples.len()), (16000, 1, 1600));
        // Every sample is k/32768 for an integer k.
        assert!(d.samples.iter().all(|s| (s * 32768.0).fract() == 0.0));
        assert!(d.samples.iter().any(|s| s.abs() > 0.1));
    }

    #[test]
    fn stereo_is_downmixed_and_resampled() {
        let d = decode_file(&fixture("stereo22k.wav")).unwrap();
        assert_eq!((d.sample_rate, d.channels, d.samples.len()), (22050, 2, 22050));
        let y = load_mono_16k(&fixture("stereo22k.wav")).unwrap();
        assert_eq!(y.len(), 16000);
        let rms = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        // Band-limited content keeps its energy through resampling.
        let (a, b) = (rms(&d.samples), rms(&y));
        assert!((a - b).abs() / a < 0.02, "rms {a} vs {b}");
    }

    /// Best normalised correlation of `y` against `r` over lags in `lags`, and that lag.
    fn best_alignment(r: &[f32], y: &[f32], lags: std::ops::Range<i64>) -> (i64, f64) {
        let mut best = (0, f64::MIN);
        for lag in lags {
            let (mut num, mut a2, mut b2) = (0.0f64, 0.0f64, 0.0f64);
            for (i, &a) in r.iter().enumerate() {
                if let Some(&b) = usize::try_from(i as i64 + lag).ok().and_then(|j| y.get(j)) {
                    num += a as f64 * b as f64;
                    a2 += a as f64 * a as f64;
                    b2 += b as f64 * b as f64;
                }
            }
            let c = num / (a2.sqrt() * b2.sqrt() + 1e-12);
            if c > best.1 {
                best = (lag, c);
            }
        }
        best
    }

    #[test]
    fn every_container_decodes_to_the_same_speech() {
        // The same 1.5-s recording encoded by sox (scripts/make_audio_fixtures.sh).
        let fx = |p: &str| {
            PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"))
                .join("../../tests/fixtures")
                .join(p)
        };
        let reference = decode_file(&fx("logmel/speech_1500ms.wav")).unwrap().samples;
        // (file, samples at 16 kHz, lag of the content, minimum correlation)
        let cases = [
            ("audio/speech.flac", 24000, 0, 1.0 - 1e-9),
            ("audio/speech_44k_stereo.flac", 24000, 0, 0.999),
            ("audio/speech.ogg", 24000, 0, 0.995),
            // No LAME header in this file, so its encoder delay (1105 samples) cannot be trimmed.
            ("audio/speech.mp3", 25344, 1105, 0.999),
        ];
        for (file, len, lag, min_corr) in cases {
            let y = load_mono_16k(&fx(file)).unwrap();
            assert_eq!(y.len(), len, "{file}");
            let (best_lag, corr) = best_alignment(&reference, &y, -50..1200);
            assert_eq!(best_lag, lag, "{file}");
            assert!(corr >= min_corr, "{file}: correlation {corr}");
        }
    }

    #[test]
    fn probe_reads_headers_and_bytes_decode_like_files() {
        let info = probe_file(&fixture("stereo22k.wav")).unwrap();
        assert_eq!(info, AudioInfo { sample_rate: 22050, channels: 2, frames: Some(22050) });
        assert_eq!(info.duration(), Some(1.0));
        let path = fixture("mono16k.wav");
        let from_bytes = decode_bytes(std::fs::read(&path).unwrap(), &path).unwrap();
        assert_eq!(from_bytes.samples, decode_file(&path).unwrap().samples);
    }

    #[test]
    fn bad_files_name_the_file_and_reason() {
        let e = decode_file(&fixture("empty.wav")).unwrap_err().to_string();
        assert!(e.contains("empty.wav") && e.contains("no samples"), "{e}");
        let e = decode_file(&fixture("not_audio.wav")).unwrap_err().to_string();
        assert!(e.contains("not_audio.wav") && e.contains("corrupt"), "{e}");
        let e = decode_file(&fixture("missing.flac")).unwrap_err().to_string();
        assert!(e.contains("missing.flac") && e.contains("cannot open"), "{e}");
    }
}
