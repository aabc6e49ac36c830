//! Seeded mutations for the stable driver (no coverage feedback): bit flips, interesting
//! integers written over 1/2/4/8 bytes (sizes and counts are where parsers go wrong), numbers
//! in text replaced by extreme ones, byte runs inserted, deleted, duplicated or spliced in from
//! another seed, and truncation.

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next_u64() % n as u64) as usize }
    }
}

const INTERESTING: [u64; 14] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

const NUMBERS: [&str; 10] = [
    "0",
    "-1",
    "1e308",
    "4294967296",
    "18446744073709551616",
    "99999999999",
    "-9223372036854775808",
    "NaN",
    "1.5",
    "65536",
];

/// A mutation of `seeds[k]` for a random k, with 1-8 edits.
pub fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut d = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(8) {
        let len = d.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                d[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                d[i] = rng.next_u64() as u8;
            }
            2 if len > 0 => {
                let width = [1usize, 2, 4, 8][rng.below(4)];
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let i = rng.below(len);
                let bytes = if rng.below(2) == 0 { v.to_le_bytes() } else { v.to_be_bytes() };
                for (k, b) in bytes.iter().take(width).enumerate() {
                    if i + k < len {
                        d[i + k] = *b;
                    }
                }
            }
            3 if len > 0 => {
                // a number in text → an extreme one
                let start = rng.below(len);
                if let Some(p) = d[start..].iter().position(u8::is_ascii_digit) {
                    let a = start + p;
                    let b = a + d[a..].iter().take_while(|c| c.is_ascii_digit() || **c == b'.').count();
                    let n = NUMBERS[rng.below(NUMBERS.len())].as_bytes();
                    d.splice(a..b, n.iter().copied());
                }
            }
            4 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                d.splice(i..i, bytes);
            }
            5 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(256));
                d.drain(i..i + n);
            }
            6 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(256));
                let chunk = d[i..i + n].to_vec();
                let at = rng.below(len + 1);
                d.splice(at..at, chunk);
            }
            7 => {
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let i = rng.below(other.len());
                    let n = 1 + rng.below((other.len() - i).min(512));
                    let at = rng.below(len + 1);
                    d.splice(at..at, other[i..i + n].iter().copied());
                }
            }
            8 if len > 0 => d.truncate(rng.below(len)),
            _ => {}
        }
    }
    d
}
