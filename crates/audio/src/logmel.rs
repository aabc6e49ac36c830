//! Whisper's log-mel spectrogram, as transformers' `WhisperFeatureExtractor` computes it
//! (`_torch_extract_fbank_features`): periodic Hann window, frames centred with reflect padding,
//! power spectrum, slaney-normalised mel filters on the slaney mel scale from 0 to 8 kHz,
//! log10 floored at 1e-10, the last frame dropped, dynamic range clamped to 8 (log10 units) below
//! the maximum, then `(x + 4) / 4`.

use realfft::RealFftPlanner;

/// Front-end settings, named as in `preprocessor_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogMelConfig {
    pub n_mels: usize,
    pub n_fft: usize,
    pub hop_length: usize,
    pub sampling_rate: u32,
    /// Audio is zero-padded (or truncated) to this many samples, 30 s for the released models.
    /// `None` is the non-standard unpadded mode: one frame per hop of real audio.
    pub n_samples: Option<usize>,
}

impl LogMelConfig {
    /// The released Whisper models' front-end: 30-s windows of 3000 frames.
    pub fn whisper(n_mels: usize) -> Self {
        Self { n_mels, n_fft: 400, hop_length: 160, sampling_rate: 16_000, n_samples: Some(480_000) }
    }

    /// Number of frames produced for `len` input samples.
    pub fn frames(&self, len: usize) -> usize {
        self.n_samples.unwrap_or(len) / self.hop_length
    }
}

/// Log-mel features `[n_mels, frames]`, row-major.
#[derive(Debug, Clone)]
pub struct LogMel {
    pub data: Vec<f32>,
    pub n_mels: usize,
    pub frames: usize,
}

fn hz_to_mel_slaney(f: f64) -> f64 {
    let (min_log_hz, min_log_mel, logstep) = (1000.0, 15.0, 27.0 / 6.4f64.ln());
    if f >= min_log_hz { min_log_mel + (f / min_log_hz).ln() * logstep } else { 3.0 * f / 200.0 }
}

fn mel_to_hz_slaney(m: f64) -> f64 {
    let (min_log_hz, min_log_mel, logstep) = (1000.0, 15.0, 6.4f64.ln() / 27.0);
    if m >= min_log_mel { min_log_hz * (logstep * (m - min_log_mel)).exp() } else { 200.0 * m / 3.0 }
}

/// Triangular mel filters `[n_freq][n_mels]` (transformers' `mel_filter_bank` with
/// `norm="slaney", mel_scale="slaney"`, 0 Hz to 8 kHz).
pub fn mel_filters(n_freq: usize, n_mels: usize, sampling_rate: u32) -> Vec<Vec<f64>> {
    let (lo, hi) = (hz_to_mel_slaney(0.0), hz_to_mel_slaney(8000.0));
    let filter_hz: Vec<f64> =
        (0..n_mels + 2).map(|i| mel_to_hz_slaney(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64)).collect();
    let nyquist = (sampling_rate / 2) as f64;
    (0..n_freq)
        .map(|k| {
            let f = nyquist * k as f64 / (n_freq - 1) as f64;
            (0..n_mels)
                .map(|m| {
                    let down = (f - filter_hz[m]) / (filter_hz[m + 1] - filter_hz[m]);
                    let up = (filter_hz[m + 2] - f) / (filter_hz[m + 2] - filter_hz[m + 1]);
                    let enorm = 2.0 / (filter_hz[m + 2] - filter_hz[m]);
                    down.min(up).max(0.0) * enorm
                })
                .collect()
        })
        .collect()
}

/// Compute log-mel features of a 16-kHz mono waveform.
pub fn log_mel(x: &[f32], cfg: &LogMelConfig) -> LogMel {
    let n_fft = cfg.n_fft;
    let hop = cfg.hop_length;
    let half = n_fft / 2;
    let mut wave: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    if let Some(n) = cfg.n_samples {
        wave.resize(n, 0.0);
    }
    // torch.stft(center=True, pad_mode="reflect"): mirror without repeating the edge sample.
    let len = wave.len();
    let at = |i: isize| -> f64 {
        let n = len as isize;
        let j = if i < 0 {
            -i
        } else if i >= n {
            2 * (n - 1) - i
        } else {
            i
        };
        wave[j.clamp(0, n - 1) as usize]
    };
    let frames_stft = 1 + len / hop;
    let frames = frames_stft - 1; // Whisper drops the last frame
    let window: Vec<f64> =
        (0..n_fft).map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n_fft as f64).cos()).collect();
    let filters = mel_filters(half + 1, cfg.n_mels, cfg.sampling_rate);
    let fft = RealFftPlanner::<f64>::new().plan_fft_forward(n_fft);
    let mut input = fft.make_input_vec();
    let mut spectrum = fft.make_output_vec();
    let mut power = vec![0.0f64; half + 1];
    let mut logmel = vec![0.0f64; cfg.n_mels * frames];
    for t in 0..frames {
        let start = (t * hop) as isize - half as isize;
        for (i, v) in input.iter_mut().enumerate() {
            *v = at(start + i as isize) * window[i];
        }
        fft.process(&mut input, &mut spectrum).expect("buffers come from the planner");
        for (p, c) in power.iter_mut().zip(&spectrum) {
            *p = c.norm_sqr();
        }
        for m in 0..cfg.n_mels {
            let e: f64 = power.iter().zip(&filters).map(|(p, f)| p * f[m]).sum();
            logmel[m * frames + t] = e.max(1e-10).log10();
        }
    }
    let max = logmel.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let data = logmel.iter().map(|&v| ((v.max(max - 8.0) + 4.0) / 4.0) as f32).collect();
    LogMel { data, n_mels: cfg.n_mels, frames }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slaney_scale_round_trips_and_is_linear_below_1khz() {
        for f in [0.0, 200.0, 999.0, 1000.0, 4000.0, 8000.0] {
            assert!((mel_to_hz_slaney(hz_to_mel_slaney(f)) - f).abs() < 1e-9);
        }
        assert!((hz_to_mel_slaney(600.0) - 9.0).abs() < 1e-12);
    }

    #[test]
    fn frames_follow_the_padding_mode() {
        assert_eq!(LogMelConfig::whisper(80).frames(12345), 3000);
        let unpadded = LogMelConfig { n_samples: None, ..LogMelConfig::whisper(80) };
        assert_eq!(unpadded.frames(16000), 100);
        let m = log_mel(&vec![0.1; 16000], &unpadded);
        assert_eq!((m.n_mels, m.frames, m.data.len()), (80, 100, 8000));
    }
}
