//! PNG in and out. Results carry their generation parameters in a `parameters` tEXt chunk, the
//! format AUTOMATIC1111 writes and civitai reads; init images of any PNG colour type become RGB.

use crate::error::{Error, Result};

fn png_err(e: impl std::fmt::Display) -> Error {
    Error::Request(format!("PNG: {e}"))
}

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
        enc.add_text_chunk("parameters".into(), p.into()).map_err(png_err)?;
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
    let size = reader.output_buffer_size().ok_or_else(|| png_err("image too large"))?;
    let mut buf = vec![0; size];
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
}
