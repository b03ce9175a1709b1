//! f16 conversions in plain integer and float operations, bit for bit as the `half` crate gives
//! them. `half` calls F16C on x86 but falls back to branchy scalar code everywhere else, wasm
//! included, where the q4_0 fit spent as long rounding its 68 scale candidates per block to f16
//! as on everything else; these have no branches, so loops over them vectorize (SIMD128 in wasm).

/// `f16::from_f32(x).to_f32()`: `x` rounded to the nearest f16 (ties to even), as f32. NaN stays
/// NaN (its payload is not kept: the fit never selects a NaN scale).
#[inline(always)]
pub fn round_f16(x: f32) -> f32 {
    let bits = x.to_bits();
    let sign = bits & 0x8000_0000;
    let a = bits & 0x7fff_ffff;
    // Normal f16 range: drop 13 mantissa bits, rounding to nearest even; a carry into the
    // exponent is the right answer, and past the largest f16 the result is infinite.
    let normal = (a.wrapping_add(0x0fff + ((a >> 13) & 1))) & 0xffff_e000;
    let normal = if normal >= 0x4780_0000 { 0x7f80_0000 } else { normal };
    // Below 2^-14 f16 is subnormal, multiples of 2^-24: adding 0.75 (whose ulp is 2^-24) rounds
    // to one, ties to even, exactly as f16 rounds its subnormal mantissa.
    let sub = ((f32::from_bits(a) + 0.75) - 0.75).to_bits();
    let r = if a < 0x3880_0000 { sub } else { normal };
    let r = if a > 0x7f80_0000 { 0x7fc0_0000 } else { r };
    f32::from_bits(sign | r)
}

/// `f16::from_bits(h).to_f32()`, NaN payloads included.
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    // The exponent and mantissa moved into f32's place are the value times 2^-112 (normal and
    // subnormal alike); multiplying by 2^112 is exact.
    let v = (f32::from_bits(em << 13) * f32::from_bits(0x7780_0000)).to_bits();
    let special = 0x7f80_0000 | (em << 13) | if em > 0x7c00 { 0x0040_0000 } else { 0 };
    f32::from_bits(sign | if em >= 0x7c00 { special } else { v })
}

/// Little-endian f16 bytes (an even number) as f32 values.
pub fn f16_bytes_to_f32(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    /// Every f16 bit pattern.
    #[test]
    fn decoding_equals_half_for_every_f16() {
        for h in 0..=u16::MAX {
            let (got, want) = (f16_to_f32(h), f16::from_bits(h).to_f32());
            assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
        }
    }

    /// Every f32 whose low 9 bits are one of three patterns (3 * 2^23 values: all exponents, all
    /// rounding positions of the 13 dropped bits' upper part), plus each f16's neighbourhood:
    /// the exact ties and one ulp either side of them.
    #[test]
    fn rounding_equals_half() {
        let check = |bits: u32| {
            let x = f32::from_bits(bits);
            let (got, want) = (round_f16(x), f16::from_f32(x).to_f32());
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{bits:#010x} ({x:e}): {got:e} vs {want:e}"
            );
        };
        for hi in 0..(1u32 << 23) {
            for lo in [0, 0x100, 0x1ff] {
                check((hi << 9) | lo);
            }
        }
        for h in 0..=u16::MAX {
            let v = f16::from_bits(h).to_f32();
            if !v.is_finite() {
                continue;
            }
            let next = f16::from_bits(h.wrapping_add(1)).to_f32();
            if next.is_finite() && next.abs() > v.abs() {
                let tie = ((v as f64 + next as f64) / 2.0) as f32;
                for b in [tie.to_bits() - 1, tie.to_bits(), tie.to_bits() + 1] {
                    check(b);
                }
            }
        }
    }
}
