//! Whole-signal resampling with rubato's FFT resampler, delay-compensated so that output sample
//! `i` lines up with input time `i / to`.

use rubato::{FftFixedIn, Resampler};

use crate::{Error, Result};

/// Resample a mono signal from `from` Hz to `to` Hz. The output has `round(len * to / from)` samples.
pub fn resample(x: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
    if from == to || x.is_empty() {
        return Ok(x.to_vec());
    }
    let err = |e: &dyn std::fmt::Display| Error::Resample { from, to, reason: e.to_string() };
    // rubato reports its delay as fft_size_out / 2, exact only when that is even: use FFT sizes
    // that are even multiples of the smallest whole-sample block (from/gcd in, to/gcd out).
    let g = gcd(from as usize, to as usize);
    let block_in = from as usize / g;
    // The FFT sizes grow with from/gcd: 441 for 44.1 kHz, but 16001 for a 16001-Hz header, with
    // tables of hundreds of MB. Real recordings use rates with a large common divisor.
    if !(1000..=768_000).contains(&from) || block_in > 4096 || to as usize / g > 4096 {
        return Err(err(&format!(
            "unusual sample rate (the ratio {from}/{to} reduces to {block_in}/{}); convert the file first, \
             e.g. `ffmpeg -i IN -ar 16000 OUT.flac`",
            to as usize / g
        )));
    }
    let chunk = block_in * 2 * (1024 / (2 * block_in)).max(1);
    let mut r = FftFixedIn::<f32>::new(from as usize, to as usize, chunk, 1, 1).map_err(|e| err(&e))?;
    let delay = r.output_delay();
    let expected = ((x.len() as u64 * to as u64 + from as u64 / 2) / from as u64) as usize;
    let mut out = Vec::with_capacity(expected + delay + 2048);
    let mut pos = 0;
    while pos + r.input_frames_next() <= x.len() {
        let n = r.input_frames_next();
        let o = r.process(&[&x[pos..pos + n]], None).map_err(|e| err(&e))?;
        out.extend_from_slice(&o[0]);
        pos += n;
    }
    if pos < x.len() {
        let o = r.process_partial(Some(&[&x[pos..]]), None).map_err(|e| err(&e))?;
        out.extend_from_slice(&o[0]);
    }
    while out.len() < delay + expected {
        let o = r.process_partial::<&[f32]>(None, None).map_err(|e| err(&e))?;
        out.extend_from_slice(&o[0]);
    }
    Ok(out[delay..delay + expected].to_vec())
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f32, rate: u32, n: usize) -> Vec<f32> {
        (0..n).map(|i| (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin()).collect()
    }

    #[test]
    fn tones_arrive_in_phase_from_common_rates() {
        for from in [48000, 44100, 32000, 22050, 8000] {
            for freq in [440.0, 3000.0] {
                let x = tone(freq, from, from as usize);
                let y = resample(&x, from, 16000).unwrap();
                assert_eq!(y.len(), 16000, "{from} Hz");
                let want = tone(freq, 16000, 16000);
                // Away from the edges the output is the ideal tone: no delay, no gain change.
                let err = y[200..15800].iter().zip(&want[200..15800]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(err < 0.01, "{from} Hz, {freq} Hz tone: max error {err}");
            }
        }
    }

    #[test]
    fn identity_when_rates_match() {
        let x = tone(100.0, 16000, 100);
        assert_eq!(resample(&x, 16000, 16000).unwrap(), x);
    }
}
