//! TensorBoard event files (`events.out.tfevents.*`): TFRecord framing (length, masked CRC-32C,
//! payload, masked CRC-32C) around hand-encoded `Event` protocol buffers carrying scalar
//! summaries. Enough for `tensorboard --logdir RUN_DIR` to plot loss, learning rate and metrics.

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// CRC-32C (Castagnoli), bitwise.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(field: u32, data: &[u8], out: &mut Vec<u8>) {
    varint(((field << 3) | 2) as u64, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// `Event { wall_time = 1; step = 2; file_version = 3 | summary = 5 }`.
fn event(step: i64, file_version: Option<&str>, scalars: &[(&str, f64)]) -> Vec<u8> {
    let wall =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let mut e = vec![0x09];
    e.extend_from_slice(&wall.to_le_bytes());
    e.push(0x10);
    varint(step as u64, &mut e);
    if let Some(v) = file_version {
        bytes_field(3, v.as_bytes(), &mut e);
    }
    if !scalars.is_empty() {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            // Summary.Value { tag = 1; simple_value = 2 (float) }
            let mut v = Vec::new();
            bytes_field(1, tag.as_bytes(), &mut v);
            v.push(0x15);
            v.extend_from_slice(&(*value as f32).to_le_bytes());
            bytes_field(1, &v, &mut summary);
        }
        bytes_field(5, &summary, &mut e);
    }
    e
}

fn record(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut r = Vec::with_capacity(payload.len() + 16);
    r.extend_from_slice(&len);
    r.extend_from_slice(&masked_crc(&len).to_le_bytes());
    r.extend_from_slice(payload);
    r.extend_from_slice(&masked_crc(payload).to_le_bytes());
    r
}

/// Appends scalar events to a new event file in the run folder. Write errors after creation are
/// ignored: the JSONL metrics are the record; TensorBoard is a view.
pub struct EventWriter {
    file: std::fs::File,
}

impl EventWriter {
    /// A new file; `resumed` gives it a distinct name next to the first run's file.
    pub fn create(dir: &Path, resumed: bool) -> Result<Self> {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let suffix = if resumed { ".resumed" } else { "" };
        let path = dir.join(format!("events.out.tfevents.{secs}.speechtune{suffix}"));
        let mut file = std::fs::File::create(&path).map_err(|source| Error::Write { path: path.clone(), source })?;
        file.write_all(&record(&event(0, Some("brain.Event:2"), &[])))
            .map_err(|source| Error::Write { path: path.clone(), source })?;
        Ok(Self { file })
    }

    pub fn scalars(&mut self, step: usize, values: &[(&str, f64)]) {
        let _ = self.file.write_all(&record(&event(step as i64, None, values)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // RFC 3720's check value for "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn records_frame_events_that_decode_back() {
        let e = event(7, None, &[("train/loss", 1.5)]);
        let r = record(&e);
        let len = u64::from_le_bytes(r[..8].try_into().unwrap()) as usize;
        assert_eq!(len, e.len());
        assert_eq!(u32::from_le_bytes(r[8..12].try_into().unwrap()), masked_crc(&r[..8]));
        assert_eq!(&r[12..12 + len], &e[..]);
        // wall_time (9 bytes), then step 7 as a varint, then the summary with the tag and 1.5f32.
        assert_eq!(&e[9..11], &[0x10, 7]);
        let tail = &e[11..];
        assert!(tail.windows(10).any(|w| w == b"train/loss"));
        assert!(tail.ends_with(&[0x15, 0, 0, 0xC0, 0x3F]), "{tail:?}");
    }
}
