//! The generation RNG: standard-normal draws from a seed, bit-identical on every platform.
//!
//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) keyed by
//! the 64-bit seed, counter from 0; each 128-bit block gives two uniforms (53-bit) and Box-Muller
//! turns them into two normals, computed in f64 with the `libm` crate (not the platform's libm,
//! whose last bits differ between glibc and wasm) and rounded to f32. Draws are consumed in order:
//! initial latents first, then per-step noise, so a seed fixes the whole image.

use super::generate::NoiseSource;
use crate::error::Result;

const M0: u64 = 0xD251_1F53;
const M1: u64 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

fn philox(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for _ in 0..10 {
        let p0 = M0 * c[0] as u64;
        let p1 = M1 * c[2] as u64;
        c = [(p1 >> 32) as u32 ^ c[1] ^ k[0], p1 as u32, (p0 >> 32) as u32 ^ c[3] ^ k[1], p0 as u32];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
    }
    c
}

pub struct NormalRng {
    key: [u32; 2],
    counter: u64,
    spare: Option<f32>,
}

impl NormalRng {
    pub fn new(seed: u64) -> NormalRng {
        NormalRng { key: [seed as u32, (seed >> 32) as u32], counter: 0, spare: None }
    }

    fn pair(&mut self) -> (f32, f32) {
        let b = philox([self.counter as u32, (self.counter >> 32) as u32, 0, 0], self.key);
        self.counter += 1;
        let to_unit = |hi: u32, lo: u32| ((((hi as u64) << 32 | lo as u64) >> 11) as f64) / (1u64 << 53) as f64;
        let u1 = 1.0 - to_unit(b[0], b[1]); // (0, 1]: ln is finite
        let u2 = to_unit(b[2], b[3]);
        let r = libm::sqrt(-2.0 * libm::log(u1));
        let a = 2.0 * std::f64::consts::PI * u2;
        ((r * libm::cos(a)) as f32, (r * libm::sin(a)) as f32)
    }

    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n);
        if let Some(s) = self.spare.take() {
            out.push(s);
        }
        while out.len() < n {
            let (a, b) = self.pair();
            out.push(a);
            if out.len() < n {
                out.push(b)
            } else {
                self.spare = Some(b)
            }
        }
        out.truncate(n);
        out
    }
}

impl NoiseSource for NormalRng {
    fn draw(&mut self, n: usize) -> Result<Vec<f32>> {
        Ok(self.normals(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_known_answer() {
        // Known-answer vectors of the Random123 reference for Philox4x32-10.
        assert_eq!(philox([0, 0, 0, 0], [0, 0]), [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
        assert_eq!(philox([0xffff_ffff; 4], [0xffff_ffff; 2]), [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]);
    }

    #[test]
    fn normals_are_standard_and_reproducible() {
        let a = NormalRng::new(42).normals(200_000);
        assert_eq!(a, NormalRng::new(42).normals(200_000));
        assert_ne!(a[..8], NormalRng::new(43).normals(8)[..]);
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.01, "mean {mean}, var {var}");
        // Odd-sized draws continue the same stream.
        let mut r = NormalRng::new(42);
        let (x, y) = (r.normals(3), r.normals(5));
        assert_eq!([x, y].concat(), a[..8]);
    }
}
