//! A tiny WGSL preprocessor: kernel variants (dtype, transposes, fused epilogues, tile sizes) are
//! chosen at pipeline-creation time, so the hot loops carry no runtime branches on them.
//!
//! Syntax, one directive per line:
//! - `#if NAME` / `#else` / `#endif` (nestable): NAME is true when defined and non-zero.
//! - `#include "file.wgsl"`: pastes a snippet from `shaders/common/`.
//! - `{{NAME}}` anywhere in a line: replaced by the define's decimal value.
//!
//! The dtype prelude (`enable f16; alias T = f16;` or `alias T = f32;`, and in the browser
//! `enable subgroups;` for SUBGROUPS variants) is prepended here because `enable` must come
//! first in a module.

use crate::error::{Error, Result};

const INCLUDES: &[(&str, &str)] = &[
    ("activation.wgsl", include_str!("../../shaders/common/activation.wgsl")),
    ("quant.wgsl", include_str!("../../shaders/common/quant.wgsl")),
    ("gemm_tile.wgsl", include_str!("../../shaders/common/gemm_tile.wgsl")),
    ("reduce.wgsl", include_str!("../../shaders/common/reduce.wgsl")),
];

/// Expands `source` for the given defines. `f16` selects the storage type `T`.
pub fn preprocess(name: &str, source: &str, defines: &[(&str, u32)], f16: bool) -> Result<String> {
    let mut out = String::with_capacity(source.len() + 256);
    // Browsers require `enable subgroups;` before subgroup builtins; naga 30 (native) refuses
    // the directive as unimplemented and takes the builtins without it.
    if cfg!(target_arch = "wasm32") && defines.contains(&("SUBGROUPS", 1)) {
        out.push_str("enable subgroups;\n");
    }
    out.push_str(if f16 { "enable f16;\nalias T = f16;\n" } else { "alias T = f32;\n" });
    let lookup = |key: &str| -> Option<u32> {
        if key == "F16" {
            return Some(f16 as u32);
        }
        defines.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    };
    expand(name, source, &lookup, &mut out, 0)?;
    Ok(out)
}

/// Appends the expansion of `source` (and, recursively, of its includes) to `out`.
fn expand(
    name: &str,
    source: &str,
    lookup: &dyn Fn(&str) -> Option<u32>,
    out: &mut String,
    depth: usize,
) -> Result<()> {
    let err = |msg: String| Error::Preprocess { shader: name.to_string(), msg };
    if depth > 4 {
        return Err(err("includes nest too deeply".into()));
    }
    // Each entry: (this branch active, some branch of this #if already taken).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    for line in source.lines() {
        let trimmed = line.trim_start();
        let active = stack.iter().all(|(a, _)| *a);
        if let Some(rest) = trimmed.strip_prefix("#if ") {
            let cond = lookup(rest.trim()).unwrap_or(0) != 0;
            stack.push((cond, cond));
        } else if trimmed.starts_with("#else") {
            let top = stack.last_mut().ok_or_else(|| err("#else without #if".into()))?;
            *top = (!top.1, true);
        } else if trimmed.starts_with("#endif") {
            stack.pop().ok_or_else(|| err("#endif without #if".into()))?;
        } else if !active {
            continue;
        } else if let Some(rest) = trimmed.strip_prefix("#include ") {
            let file = rest.trim().trim_matches('"');
            let snippet = INCLUDES
                .iter()
                .find(|(n, _)| *n == file)
                .map(|(_, s)| *s)
                .ok_or_else(|| err(format!("unknown include {file}")))?;
            expand(name, snippet, lookup, out, depth + 1)?;
        } else {
            let mut rest = line;
            while let Some(start) = rest.find("{{") {
                out.push_str(&rest[..start]);
                let end = rest[start..].find("}}").ok_or_else(|| err(format!("unclosed {{{{ in `{line}`")))?;
                let key = &rest[start + 2..start + end];
                let value = lookup(key).ok_or_else(|| err(format!("undefined {{{{{key}}}}}")))?;
                out.push_str(&value.to_string());
                rest = &rest[start + end + 2..];
            }
            out.push_str(rest);
            out.push('\n');
        }
    }
    if !stack.is_empty() {
        return Err(err("missing #endif".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches_and_substitution() {
        let src = "a\n#if X\nb {{N}}\n#if Y\nc\n#else\nd\n#endif\n#else\ne\n#endif\nf";
        let out = preprocess("t", src, &[("X", 1), ("N", 7)], false).unwrap();
        assert_eq!(out, "alias T = f32;\na\nb 7\nd\nf\n");
        let out = preprocess("t", src, &[("N", 7)], true).unwrap();
        assert_eq!(out, "enable f16;\nalias T = f16;\na\ne\nf\n");
    }

    #[test]
    fn errors_are_reported() {
        assert!(preprocess("t", "#if X\n", &[], false).is_err());
        assert!(preprocess("t", "#endif\n", &[], false).is_err());
        assert!(preprocess("t", "{{MISSING}}\n", &[], false).is_err());
        assert!(preprocess("t", "#include \"nope.wgsl\"\n", &[], false).is_err());
    }
}
