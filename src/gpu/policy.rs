//! Which kernel variant the ops with several run: a value in `GpuOptions`, never the environment,
//! so a library user, a test and a benchmark each say what they want (the CLI fills it from
//! `--kernels` or `WEBDIFFUSION_MATMUL` / `WEBDIFFUSION_CONV2D`).

use crate::error::{Error, Result};

/// One op's choice. `Direct { block }`: the barrier-free kernel with a work block per
/// invocation (matmul: columns × rows; conv2d: output channels × pixels), `0` meaning "by size".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KernelChoice {
    /// Direct kernels on CPU adapters (llvmpipe/lavapipe, SwiftShader), tiled ones elsewhere.
    #[default]
    Auto,
    /// 64×64 tiles staged through workgroup memory: real GPUs.
    Tiled,
    Direct {
        block: (usize, usize),
    },
}

/// The sizes a direct kernel's block may take along each of its two axes (0 = by size).
const BLOCK_A: [usize; 4] = [0, 4, 8, 16];
const BLOCK_B: [usize; 4] = [0, 1, 2, 4];

impl KernelChoice {
    /// `auto`, `tiled`, `direct`, `direct:A` or `direct:A:B` (A in 4/8/16, B in 1/2/4).
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: String| Error::Request(format!("kernel choice `{text}`: {why}"));
        let mut parts = text.split(':');
        let choice = match parts.next().unwrap_or("") {
            "auto" => KernelChoice::Auto,
            "tiled" => KernelChoice::Tiled,
            "direct" => {
                let mut size = |allowed: &[usize; 4]| -> Result<usize> {
                    let Some(p) = parts.next() else { return Ok(0) };
                    p.parse()
                        .ok()
                        .filter(|v| allowed.contains(v))
                        .ok_or_else(|| bad(format!("block size `{p}` is not one of {:?}", &allowed[1..])))
                };
                let a = size(&BLOCK_A)?;
                let b = size(&BLOCK_B)?;
                KernelChoice::Direct { block: (a, b) }
            }
            other => return Err(bad(format!("`{other}` is not auto, tiled or direct[:A[:B]]"))),
        };
        if parts.next().is_some() {
            return Err(bad("too many `:` parts".into()));
        }
        Ok(choice)
    }

    /// The direct kernel's block to run, or `None` for the tiled kernel.
    pub fn direct_block(self, cpu_adapter: bool) -> Option<(usize, usize)> {
        match self {
            KernelChoice::Auto => cpu_adapter.then_some((0, 0)),
            KernelChoice::Tiled => None,
            KernelChoice::Direct { block } => Some(block),
        }
    }
}

impl std::fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelChoice::Auto => f.write_str("auto"),
            KernelChoice::Tiled => f.write_str("tiled"),
            KernelChoice::Direct { block: (0, 0) } => f.write_str("direct"),
            KernelChoice::Direct { block: (a, 0) } => write!(f, "direct:{a}"),
            KernelChoice::Direct { block: (a, b) } => write!(f, "direct:{a}:{b}"),
        }
    }
}

/// The ops that have kernel variants, and the choice for each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelPolicy {
    pub matmul: KernelChoice,
    pub conv2d: KernelChoice,
}

impl KernelPolicy {
    /// `matmul=tiled,conv2d=direct:8:2` (either part may be left out: `auto`).
    pub fn parse(spec: &str) -> Result<Self> {
        KernelPolicy::default().with(spec)
    }

    /// This policy with the ops `spec` names set as it says (the others kept).
    pub fn with(self, spec: &str) -> Result<Self> {
        let mut policy = self;
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (op, choice) = part
                .split_once('=')
                .ok_or_else(|| Error::Request(format!("kernel policy `{part}`: expected OP=CHOICE")))?;
            let choice = KernelChoice::parse(choice.trim())?;
            match op.trim() {
                "matmul" => policy.matmul = choice,
                "conv2d" => policy.conv2d = choice,
                other => return Err(Error::Request(format!("kernel policy: `{other}` is not matmul or conv2d"))),
            }
        }
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_print_and_resolve() {
        for text in ["auto", "tiled", "direct", "direct:8", "direct:16:2"] {
            assert_eq!(KernelChoice::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(KernelChoice::parse("direct:4:1").unwrap(), KernelChoice::Direct { block: (4, 1) });
        for bad in ["", "fast", "direct:3", "direct:8:8", "direct:8:2:1", "tiled:4"] {
            assert!(KernelChoice::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(KernelChoice::Auto.direct_block(true), Some((0, 0)));
        assert_eq!(KernelChoice::Auto.direct_block(false), None);
        assert_eq!(KernelChoice::Tiled.direct_block(true), None);
        assert_eq!(KernelChoice::Direct { block: (16, 2) }.direct_block(false), Some((16, 2)));
    }

    #[test]
    fn policies_name_each_op() {
        let p = KernelPolicy::parse("matmul=tiled, conv2d=direct:8:2").unwrap();
        assert_eq!(p, KernelPolicy { matmul: KernelChoice::Tiled, conv2d: KernelChoice::Direct { block: (8, 2) } });
        assert_eq!(KernelPolicy::parse("").unwrap(), KernelPolicy::default());
        assert!(KernelPolicy::parse("attention=tiled").is_err());
        assert!(KernelPolicy::parse("matmul").is_err());
        // `with` sets what it names and keeps the rest (the CLI: variables, then the flag).
        let base = KernelPolicy { matmul: KernelChoice::Tiled, conv2d: KernelChoice::Tiled };
        assert_eq!(base.with("conv2d=auto").unwrap(), KernelPolicy { conv2d: KernelChoice::Auto, ..base });
    }
}
