//! The safetensors header, checked against the file it came from before anything is sized by
//! it: every offset within the data, no two tensors overlapping, every length equal to what its
//! dtype and shape need (checked arithmetic: a hostile shape cannot wrap the product).

use serde::Deserialize;

use super::weights::{FileDType, TensorInfo};
use crate::error::{Error, Result};

/// The largest header we read (safetensors itself caps it at 100 MB).
pub const MAX_HEADER: u64 = 100 << 20;

/// One tensor of a safetensors file: bytes `start..start + len` of the *file*.
#[derive(Clone, Debug)]
pub struct HeaderTensor {
    pub name: String,
    pub info: TensorInfo,
    pub start: u64,
    pub len: u64,
}

#[derive(Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// Bytes of one element of `dtype`, for dtypes whose size we know.
fn element_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

/// The length the 8-byte prefix of `path` announces, checked against the file's size.
pub fn header_len(path: &str, prefix: &[u8], file_size: Option<u64>) -> Result<u64> {
    let bad = |msg: String| Error::Weights(format!("{path} is not a valid safetensors file: {msg}"));
    let n = u64::from_le_bytes(prefix.try_into().map_err(|_| bad("shorter than its 8-byte header length".into()))?);
    if n > MAX_HEADER {
        return Err(bad(format!("header length {n} is over the {MAX_HEADER}-byte limit")));
    }
    if let Some(size) = file_size {
        if 8 + n > size {
            return Err(bad(format!("header length {n} runs past the end of the {size}-byte file")));
        }
    }
    Ok(n)
}

/// Parses the `n`-byte JSON header of `path`; tensors come back sorted by their place in the file.
/// `file_size` (when known) bounds every tensor.
pub fn parse(path: &str, json: &[u8], file_size: Option<u64>) -> Result<Vec<HeaderTensor>> {
    let bad = |msg: String| Error::Weights(format!("{path} is not a valid safetensors file: {msg}"));
    let data_start = 8 + json.len() as u64;
    let mut map: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(json).map_err(|e| bad(format!("header: {e}")))?;
    map.remove("__metadata__");
    let mut out = Vec::with_capacity(map.len());
    for (name, v) in map {
        let e: Entry = serde_json::from_value(v).map_err(|e| bad(format!("tensor {name}: {e}")))?;
        let [a, b] = e.data_offsets;
        let len = b.checked_sub(a).ok_or_else(|| bad(format!("tensor {name}: data_offsets {a}..{b} run backwards")))?;
        let numel = e.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let want = numel.zip(element_bytes(&e.dtype)).and_then(|(n, s)| n.checked_mul(s));
        match want {
            Some(w) if w == len => {}
            Some(w) => {
                return Err(bad(format!(
                    "tensor {name}: {len} bytes at {a}..{b}, its {} shape {:?} needs {w}",
                    e.dtype, e.shape
                )))
            }
            None if numel.is_none() => return Err(bad(format!("tensor {name}: shape {:?} is too large", e.shape))),
            None => {} // a dtype we do not know: its length is checked against the file only
        }
        let start = data_start.checked_add(a).ok_or_else(|| bad(format!("tensor {name}: offset {a} overflows")))?;
        let end = start.checked_add(len).ok_or_else(|| bad(format!("tensor {name}: offset {b} overflows")))?;
        if let Some(size) = file_size {
            if end > size {
                return Err(bad(format!("tensor {name} ends at byte {end}, past the end of the {size}-byte file")));
            }
        }
        out.push(HeaderTensor {
            name,
            info: TensorInfo { dtype: FileDType::parse(&e.dtype), shape: e.shape },
            start,
            len,
        });
    }
    out.sort_by_key(|t| (t.start, t.len));
    for w in out.windows(2) {
        if w[0].start + w[0].len > w[1].start {
            return Err(bad(format!("tensors {} and {} overlap", w[0].name, w[1].name)));
        }
    }
    // The data is the tensors, back to back (the format has no holes): bytes no tensor owns are
    // a sign of a crafted or damaged file.
    let mut at = data_start;
    for t in &out {
        if t.start != at {
            return Err(bad(format!("bytes {at}..{} belong to no tensor", t.start)));
        }
        at = t.start + t.len;
    }
    if let Some(size) = file_size.filter(|&s| s != at) {
        return Err(bad(format!("bytes {at}..{size} belong to no tensor")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header for tensors `(name, shape, [a, b])` of F32.
    fn header(tensors: &[(&str, &[usize], [u64; 2])]) -> Vec<u8> {
        let m: serde_json::Map<String, serde_json::Value> = tensors
            .iter()
            .map(|(n, shape, o)| {
                (n.to_string(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": o}))
            })
            .collect();
        serde_json::to_vec(&m).unwrap()
    }

    #[test]
    fn overlaps_holes_and_lying_lengths_are_refused() {
        let ok = header(&[("a", &[2], [0, 8]), ("b", &[1], [8, 12])]);
        let size = 8 + ok.len() as u64 + 12;
        let t = parse("m.safetensors", &ok, Some(size)).unwrap();
        assert_eq!((t[0].name.as_str(), t[1].start), ("a", 8 + ok.len() as u64 + 8));
        let err = |h: Vec<u8>, extra: u64| {
            let size = 8 + h.len() as u64 + extra;
            parse("m.safetensors", &h, Some(size)).unwrap_err().to_string()
        };
        let e = err(header(&[("a", &[2], [0, 8]), ("b", &[2], [4, 12])]), 12);
        assert!(e.contains("m.safetensors") && e.contains("overlap"), "{e}");
        let e = err(header(&[("a", &[2], [0, 8]), ("b", &[1], [12, 16])]), 16);
        assert!(e.contains("belong to no tensor"), "{e}");
        let e = err(header(&[("a", &[2], [0, 8])]), 20);
        assert!(e.contains("belong to no tensor"), "trailing bytes: {e}");
        let e = err(header(&[("a", &[3], [0, 8])]), 8);
        assert!(e.contains("needs 12"), "{e}");
        let e = err(header(&[("a", &[1usize << 62, 16], [0, 8])]), 8);
        assert!(e.contains("too large"), "{e}");
        let e = err(header(&[("a", &[2], [0, 8])]), 4);
        assert!(e.contains("past the end"), "{e}");
        assert!(header_len("m.safetensors", &u64::MAX.to_le_bytes(), Some(100)).is_err());
    }
}
