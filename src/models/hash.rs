//! SHA-256 whose running state can be saved and restored: a download converted while it streams
//! resumes mid-file after a reload, and the file's digest must still cover every byte from the
//! first. The compression function is `sha2`'s; only the buffering and padding are ours.

use serde::{Deserialize, Serialize};
use sha2::digest::generic_array::GenericArray;

const H0: [u32; 8] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sha256State {
    state: [u32; 8],
    /// Bytes hashed so far.
    len: u64,
    /// The tail that does not fill a 64-byte block yet.
    tail: Vec<u8>,
}

impl Default for Sha256State {
    fn default() -> Self {
        Sha256State { state: H0, len: 0, tail: Vec::new() }
    }
}

impl Sha256State {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.tail.is_empty() {
            let take = (64 - self.tail.len()).min(data.len());
            self.tail.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.tail.len() < 64 {
                return;
            }
            let block = std::mem::take(&mut self.tail);
            sha2::compress256(&mut self.state, &[*GenericArray::from_slice(&block)]);
        }
        let whole = data.len() / 64 * 64;
        // 16 KiB at a time: a chunk of a download is tens of MB, not worth copying whole.
        let mut blocks = Vec::with_capacity((whole / 64).min(256));
        for b in data[..whole].chunks_exact(64) {
            blocks.push(*GenericArray::from_slice(b));
            if blocks.len() == 256 {
                sha2::compress256(&mut self.state, &blocks);
                blocks.clear();
            }
        }
        sha2::compress256(&mut self.state, &blocks);
        self.tail.extend_from_slice(&data[whole..]);
    }

    /// The digest as lowercase hex (the state itself is left as it was).
    pub fn hex(&self) -> String {
        let mut s = self.clone();
        let bits = s.len.wrapping_mul(8);
        let mut pad = vec![0x80u8];
        pad.resize((55usize.wrapping_sub(s.tail.len()) % 64) + 1, 0);
        pad.extend_from_slice(&bits.to_be_bytes());
        let len = s.len;
        s.update(&pad);
        s.len = len;
        debug_assert!(s.tail.is_empty());
        s.state.iter().map(|w| format!("{w:08x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_sha2_for_every_split() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for n in [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000] {
            let want = super::super::package::sha256_hex(&data[..n]);
            assert_eq!(Sha256State::new().tap(&data[..n]).hex(), want, "{n} bytes");
            for cut in [0, 1, 3, 63, 64, 65, n / 2, n] {
                let cut = cut.min(n);
                let mut h = Sha256State::new();
                h.update(&data[..cut]);
                // Saved and restored between the two halves, as a resumed download does.
                let mut h: Sha256State = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
                h.update(&data[cut..n]);
                assert_eq!(h.hex(), want, "{n} bytes cut at {cut}");
            }
        }
        // Past the 256-block batches `update` compresses in, with a tail and a split in a batch.
        let big: Vec<u8> = (0..40_000u32).map(|i| (i * 31 + i / 977) as u8).collect();
        let mut h = Sha256State::new();
        h.update(&big[..17_000]);
        h.update(&big[17_000..]);
        assert_eq!(h.hex(), super::super::package::sha256_hex(&big));
        assert_eq!(Sha256State::new().hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    impl Sha256State {
        fn tap(mut self, d: &[u8]) -> Self {
            self.update(d);
            self
        }
    }
}
