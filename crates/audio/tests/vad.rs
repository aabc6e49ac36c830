//! The native Silero VAD against torch on the same vendored weights (scripts/make_vad_reference.py),
//! and its frame precision and recall on demo speech between silence and noise.

use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo")).join("../../tests/fixtures/vad")
}

#[test]
fn silero_probabilities_match_the_official_model() {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let want: Vec<f32> =
        reference["probabilities"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let wave = speechtune_audio::load_mono_16k(&fixtures().join("speech_in_silence.wav")).unwrap();
    let got = speechtune_audio::vad::SileroVad::new().probabilities(&wave);
    assert_eq!(got.len(), want.len());
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "largest difference {worst}");
    // The file is 1 s of silence, speech, 1 s of noise: speech is found only in the middle.
    let speech: Vec<usize> = (0..got.len()).filter(|&i| got[i] > 0.5).collect();
    let (first, last) = (speech[0] as f32 * 0.032, *speech.last().unwrap() as f32 * 0.032);
    assert!(first > 0.9 && last < 2.2, "speech from {first} s to {last} s");
}

/// Frame precision and recall of Silero + hysteresis on demo utterances joined by silence and
/// noise: the number reported in the README (`cargo test -p speechtune-audio --test vad -- --nocapture`).
#[test]
fn vad_finds_the_speech_between_silence_and_noise() {
    use speechtune_audio::segment::{FRAME_SECONDS, SegmentConfig, speech_frames};
    let demo = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap()).join("../../data/demo/espeak");
    let mut wave = Vec::new();
    let mut truth: Vec<(usize, usize)> = Vec::new();
    let mut seed = 12345u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 10_000) as f32 / 10_000.0
    };
    for lang in ["deu", "eng", "spa", "pol"] {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(demo.join(lang).join("wav")).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files.iter().take(5) {
            // A gap of 0.5-2 s: half of them silence, half white noise at -34 dBFS (RMS 0.02).
            let gap = (8000.0 + 24000.0 * rand()) as usize;
            let noisy = rand() < 0.5;
            wave.extend((0..gap).map(|_| if noisy { (rand() - 0.5) * 0.07 } else { 0.0 }));
            let u = speechtune_audio::load_mono_16k(f).unwrap();
            // The speech: from the first to the last sample above 1% of the peak.
            let peak = u.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let first = u.iter().position(|x| x.abs() > 0.01 * peak).unwrap();
            let last = u.iter().rposition(|x| x.abs() > 0.01 * peak).unwrap();
            truth.push((wave.len() + first, wave.len() + last));
            wave.extend(u);
        }
    }
    let probs = speechtune_audio::vad::SileroVad::new().probabilities(&wave);
    let cfg = SegmentConfig::default();
    let mut predicted = vec![false; probs.len()];
    for (s, e) in speech_frames(&probs, &cfg) {
        predicted[s..e].iter_mut().for_each(|p| *p = true);
    }
    let frame = (FRAME_SECONDS * 16000.0) as usize;
    let mut actual = vec![false; probs.len()];
    for (s, e) in &truth {
        actual[s / frame..=(e / frame).min(probs.len() - 1)].iter_mut().for_each(|a| *a = true);
    }
    let tp = predicted.iter().zip(&actual).filter(|(p, a)| **p && **a).count() as f64;
    let precision = tp / predicted.iter().filter(|&&p| p).count() as f64;
    let recall = tp / actual.iter().filter(|&&a| a).count() as f64;
    println!(
        "VAD on {:.1} s ({} utterances, silence and noise gaps): frame precision {precision:.3}, recall {recall:.3}",
        wave.len() as f64 / 16000.0,
        truth.len()
    );
    assert!(precision > 0.9 && recall > 0.9, "precision {precision}, recall {recall}");
}
