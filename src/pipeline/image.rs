//! PNG in and out. Results carry their generation parameters in a `parameters` text chunk, the
//! format AUTOMATIC1111 writes and civitai reads: tEXt when the text is Latin-1, else iTXt
//! (UTF-8), which both read too, so a prompt with ’, — or CJK is kept as typed. Init images of any
//! PNG colour type become RGB; their declared size is checked before anything is allocated.

use crate::error::{Error, Result};

fn png_err(e: impl std::fmt::Display) -> Error {
    Error::Request(format!("PNG: {e}"))
}

/// Pixels an init image may declare (16384², 768 MiB of RGB): beyond, it is refused before its
/// header's numbers size any buffer.
pub const MAX_PIXELS: u64 = 16384 * 16384;

/// Encodes 8-bit RGB, with an optional `parameters` text chunk.
pub fn encode_png(rgb: &[u8], width: usize, height: usize, parameters: Option<&str>) -> Result<Vec<u8>> {
    if rgb.len() != width * height * 3 {
        return Err(png_err(format!("{} bytes for {width}x{height} RGB", rgb.len())));
    }
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, width as u32, height as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    if let Some(p) = parameters {
        // PNG text may not hold NUL (it ends the keyword); nothing a prompt means is lost.
        let p = p.replace('\0', " ");
        if p.chars().all(|c| (c as u32) <= 0xff) {
            enc.add_text_chunk("parameters".into(), p).map_err(png_err)?;
        } else {
            enc.add_itxt_chunk("parameters".into(), p).map_err(png_err)?;
        }
    }
    let mut w = enc.write_header().map_err(png_err)?;
    w.write_image_data(rgb).map_err(png_err)?;
    w.finish().map_err(png_err)?;
    Ok(out)
}

/// Decodes any 8-bit PNG into RGB (alpha dropped, grey expanded); returns (rgb, width, height).
pub fn decode_png(bytes: &[u8]) -> Result<(Vec<u8>, usize, usize)> {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info().map_err(png_err)?;
    let (w, h) = (reader.info().width, reader.info().height);
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(png_err(format!("the image declares {w}x{h} pixels; at most {MAX_PIXELS} are taken")));
    }
    let size = reader.output_buffer_size().ok_or_else(|| png_err("image too large"))?;
    let mut buf = crate::error::try_zeroed(size as u64, || format!("a {w}x{h} PNG"))?;
    let info = reader.next_frame(&mut buf).map_err(png_err)?;
    let (w, h) = (info.width as usize, info.height as usize);
    let px = &buf[..info.buffer_size()];
    let rgb = match info.color_type {
        png::ColorType::Rgb => px.to_vec(),
        png::ColorType::Rgba => px.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        png::ColorType::Grayscale => px.iter().flat_map(|&g| [g, g, g]).collect(),
        png::ColorType::GrayscaleAlpha => px.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        png::ColorType::Indexed => return Err(png_err("palette images should have been expanded")),
    };
    Ok((rgb, w, h))
}

/// The CRC-32 a PNG chunk carries over its type and data (for tools that rewrite chunks: the
/// fuzzer, tests).
pub fn chunk_crc(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

/// The generation parameters in AUTOMATIC1111's text format.
pub fn a1111_parameters(
    prompt: &str,
    negative: Option<&str>,
    steps: usize,
    sampler: &str,
    guidance: f32,
    seed: Option<u64>,
    width: usize,
    height: usize,
    model: &str,
) -> String {
    let mut s = prompt.to_string();
    if let Some(n) = negative.filter(|n| !n.is_empty()) {
        s.push_str(&format!("\nNegative prompt: {n}"));
    }
    s.push_str(&format!("\nSteps: {steps}, Sampler: {sampler}, CFG scale: {guidance}, "));
    if let Some(seed) = seed {
        s.push_str(&format!("Seed: {seed}, "));
    }
    s.push_str(&format!("Size: {width}x{height}, Model: {model}"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trip_keeps_pixels_and_parameters() {
        let rgb: Vec<u8> = (0..5 * 3 * 3).map(|i| (i * 7) as u8).collect();
        let params = a1111_parameters("a cat", Some("blurry"), 20, "Euler a", 7.5, Some(42), 5, 3, "tiny");
        let png = encode_png(&rgb, 5, 3, Some(&params)).unwrap();
        assert_eq!(decode_png(&png).unwrap(), (rgb, 5, 3));
        let text = String::from_utf8_lossy(&png);
        assert!(text.contains("parameters") && text.contains("Negative prompt: blurry"));
        assert!(text.contains("Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 5x3"));
        assert!(decode_png(b"not a png").is_err());
    }

    /// The text chunks of `png` as the png crate reads them: (keyword, text, utf8?).
    fn texts(png: &[u8]) -> Vec<(String, String, bool)> {
        let mut r = png::Decoder::new(std::io::Cursor::new(png)).read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        r.next_frame(&mut buf).unwrap();
        r.finish().unwrap();
        let info = r.info();
        let mut out: Vec<_> =
            info.uncompressed_latin1_text.iter().map(|t| (t.keyword.clone(), t.text.clone(), false)).collect();
        for t in &info.utf8_text {
            out.push((t.keyword.clone(), t.get_text().unwrap(), true));
        }
        out
    }

    #[test]
    fn any_unicode_prompt_is_kept_as_typed() {
        let rgb = vec![7u8; 2 * 2 * 3];
        for (prompt, utf8) in [
            ("a café, naïve", false),
            ("a cat’s toy — on a table", true),
            ("富士山と桜, 水彩", true),
            ("🦊 in the snow", true),
            ("tab\tand\u{0}nul", false),
        ] {
            let params = a1111_parameters(prompt, Some("blurry"), 4, "Euler a", 0.0, Some(1), 2, 2, "m");
            let png = encode_png(&rgb, 2, 2, Some(&params)).unwrap();
            let t = texts(&png);
            assert_eq!(t.len(), 1, "{prompt}");
            assert_eq!(
                (t[0].0.as_str(), t[0].1.as_str(), t[0].2),
                ("parameters", params.replace('\0', " ").as_str(), utf8)
            );
        }
        let negative = a1111_parameters("a cat", Some("ぼやけた"), 4, "Euler a", 0.0, Some(1), 2, 2, "m");
        let t = texts(&encode_png(&rgb, 2, 2, Some(&negative)).unwrap());
        assert_eq!((t[0].1.as_str(), t[0].2), (negative.as_str(), true), "a negative prompt counts too");
    }

    #[test]
    fn a_declared_size_past_the_limit_is_refused_before_allocating() {
        let png = encode_png(&[0; 3], 1, 1, None).unwrap();
        // IHDR's width and height sit at bytes 16..24; the CRC that follows is fixed up.
        let mut bad = png.clone();
        bad[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bad[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = chunk_crc(&bad[12..29]);
        bad[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode_png(&bad).unwrap_err().to_string();
        assert!(err.contains("100000x100000") && err.contains("at most"), "{err}");
    }
}

/// RGB → grey as PIL's `convert("L")` does it (ITU-R 601-2 luma in 16-bit fixed point), which is
/// how diffusers reads an RGB mask.
pub fn luma(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .map(|p| ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8)
        .collect()
}

/// Outpainting's canvas: `rgb` (`width` × `height`) extended by `[left, right, up, down]`
/// pixels, the new border filled with the nearest edge pixel (a neutral start the prompt redraws),
/// and the mask that redraws exactly that border. Sizes are checked (each side at most
/// `MAX_SIDE`).
pub fn outpaint(rgb: &[u8], width: usize, height: usize, by: [usize; 4]) -> Result<(Vec<u8>, Vec<u8>, usize, usize)> {
    let [left, right, up, down] = by;
    let max = crate::pipeline::generate::MAX_SIDE;
    // Sizes come from a request: checked before they multiply or size anything.
    let side = |a: usize, b: usize, c: usize| a.checked_add(b)?.checked_add(c).filter(|&s| s <= max);
    let (Some(w), Some(h)) = (side(width, left, right), side(height, up, down)) else {
        return Err(Error::Request(format!(
            "outpainting {width}x{height} by {by:?} is beyond the largest side, {max}"
        )));
    };
    if width == 0 || height == 0 || rgb.len() != width * height * 3 {
        return Err(Error::Request(format!("the image to extend must be {width}x{height} RGB")));
    }
    let mut out = vec![0u8; w * h * 3];
    let mut mask = vec![255u8; w * h];
    for y in 0..h {
        let sy = y.saturating_sub(up).min(height - 1);
        for x in 0..w {
            let sx = x.saturating_sub(left).min(width - 1);
            let (o, s) = ((y * w + x) * 3, (sy * width + sx) * 3);
            out[o..o + 3].copy_from_slice(&rgb[s..s + 3]);
            if (up..up + height).contains(&y) && (left..left + width).contains(&x) {
                mask[y * w + x] = 0;
            }
        }
    }
    Ok((out, mask, w, h))
}

/// The mask softened by a Gaussian of `sigma` pixels (separable, 3σ radius, edges clamped), as
/// 0..=1 weights: the seam where an inpainted region meets the kept pixels.
pub fn blur_mask(mask: &[u8], width: usize, height: usize, sigma: f32) -> Vec<f32> {
    let m: Vec<f32> = mask.iter().map(|&v| if v >= 128 { 1.0 } else { 0.0 }).collect();
    if sigma <= 0.0 {
        return m;
    }
    let r = (3.0 * sigma).ceil() as isize;
    let k: Vec<f32> = (-r..=r).map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let sum: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|v| v / sum).collect();
    let pass = |src: &[f32], horizontal: bool| -> Vec<f32> {
        let mut out = vec![0f32; src.len()];
        for y in 0..height as isize {
            for x in 0..width as isize {
                let mut acc = 0f32;
                for (j, w) in k.iter().enumerate() {
                    let d = j as isize - r;
                    let (sx, sy) = if horizontal { (x + d, y) } else { (x, y + d) };
                    let (sx, sy) = (sx.clamp(0, width as isize - 1), sy.clamp(0, height as isize - 1));
                    acc += w * src[sy as usize * width + sx as usize];
                }
                out[y as usize * width + x as usize] = acc;
            }
        }
        out
    };
    pass(&pass(&m, true), false)
}

/// The inpainted image over the original: the original's pixels where the mask keeps them, the
/// generated ones where it redraws, blended across the blurred seam (`weights` from
/// `blur_mask`), as A1111's inpainting overlay does: untouched pixels stay exactly as they were.
pub fn overlay(original: &[u8], generated: &[u8], weights: &[f32]) -> Vec<u8> {
    original
        .chunks_exact(3)
        .zip(generated.chunks_exact(3))
        .zip(weights)
        .flat_map(|((o, g), &a)| {
            let mix = |c: usize| (o[c] as f32 * (1.0 - a) + g[c] as f32 * a).round().clamp(0.0, 255.0) as u8;
            [mix(0), mix(1), mix(2)]
        })
        .collect()
}

#[cfg(test)]
mod outpaint_tests {
    use super::*;

    #[test]
    fn outpainting_sizes_are_checked_before_they_multiply() {
        let rgb = vec![7u8; 2 * 2 * 3];
        let (out, mask, w, h) = outpaint(&rgb, 2, 2, [1, 0, 0, 2]).unwrap();
        assert_eq!((w, h), (3, 4));
        assert_eq!(out.len(), 36);
        assert_eq!(mask.iter().filter(|&&m| m == 0).count(), 4, "the original's 4 pixels are kept");
        for by in [[usize::MAX, 1, 0, 0], [0, 0, 5000, 0]] {
            let e = outpaint(&rgb, 2, 2, by).unwrap_err().to_string();
            assert!(e.contains("beyond the largest side"), "{e}");
        }
        let e = outpaint(&rgb, usize::MAX / 2, 3, [0; 4]).unwrap_err().to_string();
        assert!(e.contains("beyond the largest side"), "{e}");
    }
}
