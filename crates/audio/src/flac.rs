//! 16-bit mono FLAC encoding (flacenc, pure Rust) of 16-kHz waveforms.

use flacenc::component::BitRepr;
use flacenc::error::Verify;

use crate::{Error, SAMPLE_RATE};

/// Samples in [-1, 1) → 16-bit PCM (× 32768, rounded, clipped), the inverse of decoders' / 32768.
pub fn to_pcm16(wave: &[f32]) -> Vec<i32> {
    wave.iter().map(|&x| ((x * 32768.0).round() as i32).clamp(-32768, 32767)).collect()
}

/// A complete FLAC file (16 kHz, mono, 16 bit) for `wave`.
pub fn encode_flac(wave: &[f32]) -> Result<Vec<u8>, Error> {
    let fail = |reason: String| Error::Encode { reason };
    let config = flacenc::config::Encoder::default().into_verified().map_err(|e| fail(format!("{e:?}")))?;
    let pcm = to_pcm16(wave);
    let source = flacenc::source::MemSource::from_samples(&pcm, 1, 16, SAMPLE_RATE as usize);
    let stream = flacenc::encode_with_fixed_block_size(&config, source, config.block_size)
        .map_err(|e| fail(format!("{e:?}")))?;
    let mut sink = flacenc::bitsink::ByteSink::new();
    stream.write(&mut sink).map_err(|e| fail(format!("{e:?}")))?;
    let mut bytes = sink.as_slice().to_vec();
    // STREAMINFO's minimum block size excludes the last block (FLAC spec); flacenc counts the
    // short last block, which makes decoders such as symphonia read a fixed-blocksize stream as
    // variable and stop at the first frame. Bytes 8-9 hold the minimum, 10-11 the maximum.
    if bytes.len() >= 12 && &bytes[..4] == b"fLaC" {
        let (max0, max1) = (bytes[10], bytes[11]);
        bytes[8] = max0;
        bytes[9] = max1;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn flac_round_trip_is_lossless_at_16_bit() {
        let wave: Vec<f32> = (0..16000).map(|i| ((i as f32) * 0.05).sin() * 0.5).collect();
        let bytes = super::encode_flac(&wave).unwrap();
        assert_eq!(&bytes[..4], b"fLaC");
        let back = crate::decode_bytes(bytes.clone(), std::path::Path::new("x.flac")).unwrap();
        assert_eq!(back.sample_rate, 16000);
        let pcm = super::to_pcm16(&wave);
        let got = super::to_pcm16(&back.samples);
        assert_eq!(got, pcm, "16-bit samples survive exactly");
        assert!(bytes.len() < 32000, "compressed: {} bytes for 32000 of PCM", bytes.len());
    }
}
