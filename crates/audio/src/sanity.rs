//! Length fields checked before decoding.
//!
//! symphonia 0.5 allocates some buffers at the size a header claims before reading them (a FLAC
//! or Vorbis comment of up to 4 GB, a RIFF INFO chunk, MP4 sample tables, ID3v2 frames), so a
//! 1-KB file could ask for gigabytes. Before symphonia sees a file, this walks the structures
//! whose lengths it trusts and refuses any that claim more bytes than the file (or the enclosing
//! structure) holds. Tags are not used by speechtune, so FLAC comment and picture blocks are
//! turned into padding (symphonia skips padding without reading it) rather than parsed.

use std::io::{Read, Seek, SeekFrom};

use symphonia::core::io::MediaSource;

/// Bytes to change as the decoder reads the file: (offset, new value).
pub type Patches = Vec<(u64, u8)>;

/// A source with a few bytes replaced on the fly.
pub struct Patched<R> {
    inner: R,
    len: u64,
    pos: u64,
    patches: Patches,
}

impl<R: Read + Seek> Patched<R> {
    pub fn new(inner: R, len: u64, patches: Patches) -> Self {
        Self { inner, len, pos: 0, patches }
    }
}

impl<R: Read> Read for Patched<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &(at, v) in &self.patches {
            if at >= self.pos && at < self.pos + n as u64 {
                buf[(at - self.pos) as usize] = v;
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Seek> Seek for Patched<R> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = self.inner.seek(to)?;
        Ok(self.pos)
    }
}

impl<R: Read + Seek + Send + Sync> MediaSource for Patched<R> {
    fn is_seekable(&self) -> bool {
        true
    }

    fn byte_len(&self) -> Option<u64> {
        Some(self.len)
    }
}

/// Reads header fields at given offsets, never more than a small amount at once.
struct Reader<'a, R> {
    src: &'a mut R,
    len: u64,
}

impl<R: Read + Seek> Reader<'_, R> {
    fn bytes(&mut self, at: u64, n: usize) -> Option<Vec<u8>> {
        if at.checked_add(n as u64)? > self.len {
            return None;
        }
        self.src.seek(SeekFrom::Start(at)).ok()?;
        let mut b = vec![0u8; n];
        self.src.read_exact(&mut b).ok()?;
        Some(b)
    }

    fn u32be(&mut self, at: u64) -> Option<u64> {
        self.bytes(at, 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64)
    }

    fn u32le(&mut self, at: u64) -> Option<u64> {
        self.bytes(at, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64)
    }
}

/// What symphonia's probe would find first from some position.
#[derive(Debug, PartialEq)]
enum Marker {
    Id3,
    Riff,
    Aiff,
    Flac,
    Ogg,
    Mp4,
    /// MPEG audio or ADTS frame sync: frames have bounded sizes, nothing to check.
    Frames,
}

/// The markers symphonia 0.5.5 registers (its probe takes the first position where any
/// matches, within 1 MiB; an ID3v2 tag is read and the search goes on after it).
fn marker_at(w: &[u8]) -> Option<Marker> {
    const SYNC: [u8; 19] = [
        0xfe, 0xff, 0xf6, 0xf7, 0xe6, 0xe7, 0xfc, 0xfd, 0xf4, 0xf5, 0xe4, 0xe5, 0xfa, 0xfb, 0xf2, 0xf3, 0xe2, 0xe3,
        0xf1,
    ];
    Some(match w {
        [b'I', b'D', b'3', ..] => Marker::Id3,
        [b'R', b'I', b'F', b'F', ..] => Marker::Riff,
        [b'F', b'O', b'R', b'M', ..] => Marker::Aiff,
        [b'f', b'L', b'a', b'C', ..] => Marker::Flac,
        [b'O', b'g', b'g', b'S', ..] => Marker::Ogg,
        [b'f', b't', b'y', b'p', ..] => Marker::Mp4,
        [0xff, b, ..] if SYNC.contains(b) => Marker::Frames,
        _ => return None,
    })
}

const PROBE_LIMIT: u64 = 1 << 20;

/// The first marker at or after `from`, within the probe's limit.
fn find_marker<R: Read + Seek>(r: &mut Reader<R>, from: u64) -> Option<(u64, Marker)> {
    // Markers may start at [from, end); each read covers `step` starts plus 8 bytes, so a marker
    // across two reads is seen whole. The first read is small: this runs before every decode,
    // and the marker is almost always at the start.
    let end = r.len.min(from.saturating_add(PROBE_LIMIT));
    let (mut start, mut step) = (from, 512u64);
    while start < end {
        let scan_end = (start + step).min(end);
        step = 64 << 10;
        let window = r.bytes(start, ((scan_end + 8).min(r.len) - start) as usize)?;
        let found = (0..(scan_end - start) as usize).find_map(|i| marker_at(&window[i..]).map(|m| (i, m)));
        if let Some((i, m)) = found {
            return Some((start + i as u64, m));
        }
        start = scan_end;
    }
    None
}

/// Check `src` (of `len` bytes) where symphonia will parse it; the patches to apply while
/// decoding, or what is wrong.
pub fn check<R: Read + Seek>(src: &mut R, len: u64) -> Result<Patches, String> {
    let mut r = Reader { src, len };
    let mut patches = Vec::new();
    let mut from = 0;
    loop {
        let Some((at, marker)) = find_marker(&mut r, from) else { return Ok(patches) };
        match marker {
            Marker::Id3 => {
                from = id3v2(&mut r, at)?;
                continue;
            }
            Marker::Riff => riff(&mut r, at)?,
            Marker::Aiff => aiff(&mut r, at)?,
            Marker::Flac => flac(&mut r, at + 4, &mut patches)?,
            Marker::Ogg => ogg_comment(&mut r, at)?,
            Marker::Mp4 if at >= 4 => mp4(&mut r, at - 4, len, 0, b"")?,
            Marker::Mp4 | Marker::Frames => {}
        }
        return Ok(patches);
    }
}

fn past_end(what: &str, claims: u64, at: u64, room: u64) -> String {
    format!("{what} at byte {at} claims {claims} bytes, but only {room} remain (truncated or corrupt file)")
}

/// ID3v2 tag (before MP3 or FLAC data): the tag and each frame within its bounds. Returns where
/// the tag ends.
fn id3v2<R: Read + Seek>(r: &mut Reader<R>, base: u64) -> Result<u64, String> {
    let h = r.bytes(base, 10).ok_or("truncated ID3v2 header")?;
    let syncsafe = |b: &[u8]| b.iter().fold(0u64, |a, &x| (a << 7) | (x & 0x7f) as u64);
    let (major, flags) = (h[3], h[5]);
    let size = syncsafe(&h[6..10]);
    let end = base + 10 + size + if flags & 0x10 != 0 { 10 } else { 0 };
    if end > r.len {
        return Err(past_end("ID3v2 tag", size, base, r.len - base - 10));
    }
    if flags & 0x40 != 0 || major < 2 {
        return Ok(end); // extended header: frames not walked, the tag's bound holds
    }
    let (id_len, header) = if major == 2 { (3, 6) } else { (4, 10) };
    let tag_end = base + 10 + size;
    let mut at = base + 10;
    while at + header <= tag_end {
        let f = r.bytes(at, header as usize).ok_or("truncated ID3v2 frame")?;
        if f[0] == 0 {
            break; // padding
        }
        let frame = match major {
            2 => ((f[3] as u64) << 16) | ((f[4] as u64) << 8) | f[5] as u64,
            3 => u32::from_be_bytes([f[4], f[5], f[6], f[7]]) as u64,
            _ => syncsafe(&f[4..8]),
        };
        let room = tag_end - at - header;
        if frame > room {
            let id = String::from_utf8_lossy(&f[..id_len]).to_string();
            return Err(past_end(&format!("ID3v2 frame {id}"), frame, at, room));
        }
        at += header + frame;
    }
    Ok(end)
}

/// RIFF/WAVE: every chunk before `data` within the file, LIST sub-chunks within their list.
fn riff<R: Read + Seek>(r: &mut Reader<R>, base: u64) -> Result<(), String> {
    let mut at = base + 12;
    while let (Some(id), Some(size)) = (r.bytes(at, 4), r.u32le(at + 4)) {
        if id == b"data" {
            break; // streamed or truncated data chunks are common and read as they come
        }
        let room = r.len - at - 8;
        let name = String::from_utf8_lossy(&id).to_string();
        if size > room {
            return Err(past_end(&format!("RIFF chunk {name:?}"), size, at, room));
        }
        if id == b"fmt " {
            // symphonia asserts on these (a time base of 0 Hz): refuse them here instead.
            let f = r.bytes(at + 8, 16.min(size as usize)).unwrap_or_default();
            let le16 = |i: usize| f.get(i..i + 2).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as u64);
            let rate = f.get(4..8).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64);
            if f.len() < 16 || le16(2) == 0 || rate == 0 || le16(12) == 0 {
                return Err(format!(
                    "RIFF fmt chunk at byte {at}: {} channels, {rate} Hz, block align {} (not a valid WAV header)",
                    le16(2),
                    le16(12)
                ));
            }
        }
        if id == b"LIST" {
            let end = at + 8 + size;
            let mut sub = at + 12;
            while sub + 8 <= end {
                let s = r.u32le(sub + 4).ok_or("truncated RIFF LIST")?;
                if s > end - sub - 8 {
                    return Err(past_end("RIFF LIST entry", s, sub, end - sub - 8));
                }
                sub += 8 + s + (s & 1);
            }
        }
        at += 8 + size + (size & 1);
    }
    Ok(())
}

/// AIFF/AIFC: every chunk before the sound data within the file (big-endian sizes).
fn aiff<R: Read + Seek>(r: &mut Reader<R>, base: u64) -> Result<(), String> {
    let mut at = base + 12;
    while let (Some(id), Some(size)) = (r.bytes(at, 4), r.u32be(at + 4)) {
        if id == b"SSND" {
            break;
        }
        let room = r.len - at - 8;
        if size > room {
            return Err(past_end(&format!("AIFF chunk {:?}", String::from_utf8_lossy(&id)), size, at, room));
        }
        at += 8 + size + (size & 1);
    }
    Ok(())
}

/// FLAC metadata blocks: each within the file; comments and pictures become padding.
fn flac<R: Read + Seek>(r: &mut Reader<R>, mut at: u64, patches: &mut Patches) -> Result<(), String> {
    while let Some(h) = r.bytes(at, 4) {
        let (last, kind) = (h[0] & 0x80 != 0, h[0] & 0x7f);
        let size = ((h[1] as u64) << 16) | ((h[2] as u64) << 8) | h[3] as u64;
        let room = r.len - at - 4;
        if size > room {
            return Err(past_end(&format!("FLAC metadata block (type {kind})"), size, at, room));
        }
        if kind == 4 || kind == 6 {
            patches.push((at, (h[0] & 0x80) | 1)); // VORBIS_COMMENT / PICTURE → PADDING
        }
        if last {
            break;
        }
        at += 4 + size;
    }
    Ok(())
}

/// Ogg: the Vorbis or Opus comment packet (the second packet of the first stream), whose
/// lengths must fit in the packet.
fn ogg_comment<R: Read + Seek>(r: &mut Reader<R>, base: u64) -> Result<(), String> {
    let (mut at, mut serial) = (base, None);
    let (mut packets, mut current) = (0usize, Vec::new());
    // Comment packets (with cover art) can span many pages; look at the first 32 MB at most.
    while at < r.len.min(base + (32 << 20)) {
        let Some(h) = r.bytes(at, 27) else { break };
        if &h[..4] != b"OggS" {
            break; // not a page boundary: leave it to the decoder
        }
        let s = u32::from_le_bytes([h[14], h[15], h[16], h[17]]);
        let n = h[26] as usize;
        let lacing = r.bytes(at + 27, n).ok_or("truncated Ogg page")?;
        let body = at + 27 + n as u64;
        let total: u64 = lacing.iter().map(|&l| l as u64).sum();
        if *serial.get_or_insert(s) == s {
            let data = r.bytes(body, total as usize).ok_or("truncated Ogg page")?;
            let mut off = 0;
            for &l in &lacing {
                current.extend_from_slice(&data[off..off + l as usize]);
                off += l as usize;
                if l < 255 {
                    if packets == 1 {
                        return comment_packet(&current);
                    }
                    packets += 1;
                    current.clear();
                }
            }
        }
        at = body + total;
    }
    Ok(())
}

fn comment_packet(p: &[u8]) -> Result<(), String> {
    let start = if p.starts_with(b"\x03vorbis") {
        7
    } else if p.starts_with(b"OpusTags") {
        8
    } else {
        return Ok(());
    };
    let u32_at = |i: usize| p.get(i..i + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let mut at = start;
    let vendor = u32_at(at).ok_or("truncated Ogg comment header")?;
    if vendor > p.len() - at - 4 {
        return Err(past_end("Ogg comment vendor string", vendor as u64, at as u64, (p.len() - at - 4) as u64));
    }
    at += 4 + vendor;
    let count = u32_at(at).ok_or("truncated Ogg comment header")?;
    at += 4;
    for _ in 0..count {
        let Some(n) = u32_at(at) else {
            return Err("Ogg comment header lists more comments than it holds".into());
        };
        if n > p.len() - at - 4 {
            return Err(past_end("Ogg comment", n as u64, at as u64, (p.len() - at - 4) as u64));
        }
        at += 4 + n;
    }
    Ok(())
}

/// MP4 boxes: each within its parent; the sample tables' entry counts within their box.
fn mp4<R: Read + Seek>(r: &mut Reader<R>, mut at: u64, end: u64, depth: usize, parent: &[u8]) -> Result<(), String> {
    const CONTAINERS: [&[u8; 4]; 12] =
        [b"moov", b"trak", b"mdia", b"minf", b"stbl", b"udta", b"edts", b"dinf", b"mvex", b"moof", b"traf", b"ilst"];
    if depth > 16 {
        return Err("MP4 boxes nested deeper than 16".into());
    }
    while at + 8 <= end {
        let mut size = r.u32be(at).ok_or("truncated MP4 box")?;
        let kind = r.bytes(at + 4, 4).ok_or("truncated MP4 box")?;
        let name = String::from_utf8_lossy(&kind).to_string();
        let mut header = 8;
        if size == 1 {
            let b = r.bytes(at + 8, 8).ok_or("truncated MP4 box")?;
            size = u64::from_be_bytes(b.try_into().expect("8 bytes"));
            header = 16;
        } else if size == 0 {
            size = end - at;
        }
        if size < header || size > end - at {
            return Err(past_end(&format!("MP4 box {name:?}"), size, at, end - at));
        }
        let payload = size - header;
        let body = at + header;
        let min = match &kind[..] {
            b"hdlr" => 24,
            b"data" => 8,
            b"stsz" => 12,
            b"stts" | b"ctts" | b"stsc" | b"stco" | b"co64" | b"stss" | b"elst" => 8,
            _ => 0,
        };
        if payload < min {
            return Err(format!("MP4 box {name:?} at byte {at} is {payload} bytes, shorter than its fields ({min})"));
        }
        let entry = match &kind[..] {
            b"stts" | b"ctts" | b"co64" => Some(8),
            b"stsc" => Some(12),
            b"stco" | b"stss" => Some(4),
            b"elst" => Some(if r.bytes(body, 1).is_some_and(|v| v[0] == 1) { 20 } else { 12 }),
            _ => None,
        };
        if let Some(e) = entry {
            let count = r.u32be(body + 4).ok_or("truncated MP4 table")?;
            if count.saturating_mul(e) > payload - 8 {
                return Err(past_end(&format!("MP4 table {name:?} of {count} entries"), count * e, at, payload - 8));
            }
        }
        if &kind[..] == b"stsz" {
            let (fixed, count) =
                (r.u32be(body + 4).ok_or("truncated stsz")?, r.u32be(body + 8).ok_or("truncated stsz")?);
            if fixed == 0 && count.saturating_mul(4) > payload - 12 {
                return Err(past_end(&format!("MP4 table \"stsz\" of {count} entries"), count * 4, at, payload - 12));
            }
            if fixed == 0 {
                // Sample sizes beyond the file cannot be real (the table is within its box,
                // checked above, so reading it whole is bounded by the file).
                let table = r.bytes(body + 12, (count * 4) as usize).ok_or("truncated stsz")?;
                for (i, b) in table.chunks_exact(4).enumerate() {
                    let s = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64;
                    if s > r.len {
                        return Err(past_end("MP4 sample", s, body + 12 + 4 * i as u64, r.len));
                    }
                }
            } else if fixed > r.len {
                return Err(past_end("MP4 sample", fixed, body + 4, r.len));
            }
        }
        if CONTAINERS.iter().any(|c| c[..] == kind[..]) || parent == b"ilst" {
            // (the items of an iTunes `ilst`, ©nam, trkn, ..., hold `data` boxes)
            mp4(r, body, at + size, depth + 1, &kind)?;
        } else if &kind[..] == b"meta" {
            // ISO meta is a full box (4 bytes of version and flags); QuickTime's is not.
            let skip = if r.bytes(body + 4, 4).is_some_and(|t| t == b"hdlr") { 0 } else { 4 };
            mp4(r, body + skip, at + size, depth + 1, &kind)?;
        }
        at += size;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn run(bytes: &[u8]) -> Result<Patches, String> {
        check(&mut Cursor::new(bytes), bytes.len() as u64)
    }

    #[test]
    fn flac_comments_become_padding_and_lengths_are_bounded() {
        // fLaC, STREAMINFO (34 bytes), a 4-byte VORBIS_COMMENT block marked last.
        let mut f = b"fLaC\x00\x00\x00\x22".to_vec();
        f.extend([0u8; 34]);
        f.extend(b"\x84\x00\x00\x04\xff\xff\xff\xff");
        assert_eq!(run(&f).unwrap(), vec![(42, 0x81)]);
        f[43] = 0x10; // the block now claims 1 MB
        assert!(run(&f).unwrap_err().contains("FLAC metadata block (type 4) at byte 42 claims"));
    }

    #[test]
    fn structures_are_checked_where_the_probe_finds_them() {
        // symphonia's probe searches for its markers: a FLAC stream after 5 bytes of junk.
        let mut f = b"junk!fLaC\x04\x00\x10\x00".to_vec();
        f.extend([0u8; 16]);
        assert!(run(&f).unwrap_err().contains("FLAC metadata block (type 4) at byte 9"));
        // Also across the 64-KiB reads of the search.
        // (reads of 512 bytes, then 64 KiB: the marker straddles the second boundary)
        let far = [vec![b'.'; 512 + (64 << 10) - 2], f[5..].to_vec()].concat();
        assert!(run(&far).unwrap_err().contains("at byte 66050"), "{:?}", run(&far));
        // ...but not past an earlier MPEG frame sync, which is what the probe would pick.
        let mpeg = [b"\xff\xfb\x90\x00".as_slice(), &f].concat();
        assert_eq!(run(&mpeg).unwrap(), vec![]);
    }

    #[test]
    fn riff_chunks_and_mp4_tables_must_fit() {
        let mut w = b"RIFF\x00\x00\x00\x00WAVELIST\xff\xff\xff\x7fINFO".to_vec();
        w.extend([0u8; 8]);
        assert!(run(&w).unwrap_err().contains("RIFF chunk \"LIST\""));
        // ftyp, then an stts claiming 2^32-1 entries in a 16-byte box.
        let mut m = b"\x00\x00\x00\x0cftypM4A ".to_vec();
        m.extend(b"\x00\x00\x00\x18stts\x00\x00\x00\x00\xff\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00");
        assert!(run(&m).unwrap_err().contains("MP4 table \"stts\""));
    }

    #[test]
    fn patched_reads_replace_bytes_wherever_the_read_starts() {
        let mut p = Patched::new(Cursor::new(vec![1u8, 2, 3, 4, 5]), 5, vec![(3, 9)]);
        let mut b = [0u8; 2];
        p.seek(SeekFrom::Start(2)).unwrap();
        p.read_exact(&mut b).unwrap();
        assert_eq!(b, [3, 9]);
    }
}
