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
    /// Tiles staged through workgroup memory (real GPUs), their size by device class and shape.
    Tiled,
    /// The tiled kernel at one tile size.
    Tile(GemmTile),
    Direct {
        block: (usize, usize),
    },
}

/// The tiled kernels' output tile per workgroup of 16×16 threads, and the outputs each thread
/// computes (rows × columns): bigger tiles load less per FMA but need more registers and give
/// fewer workgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GemmTile {
    /// 64×64, 4×4 per thread.
    T64x64,
    /// 128×64, 8×4 per thread.
    T128x64,
    /// 128×128, 8×8 per thread.
    T128x128,
}

impl GemmTile {
    pub const ALL: [GemmTile; 3] = [GemmTile::T64x64, GemmTile::T128x64, GemmTile::T128x128];

    /// Outputs per thread: (rows, columns).
    pub fn per_thread(self) -> (usize, usize) {
        match self {
            GemmTile::T64x64 => (4, 4),
            GemmTile::T128x64 => (8, 4),
            GemmTile::T128x128 => (8, 8),
        }
    }

    /// The output tile: (rows, columns), 16×16 threads.
    pub fn dims(self) -> (usize, usize) {
        let (rm, rn) = self.per_thread();
        (16 * rm, 16 * rn)
    }

    fn name(self) -> &'static str {
        match self {
            GemmTile::T64x64 => "64x64",
            GemmTile::T128x64 => "128x64",
            GemmTile::T128x128 => "128x128",
        }
    }
}

/// The sizes a direct kernel's block may take along each of its two axes (0 = by size).
const BLOCK_A: [usize; 4] = [0, 4, 8, 16];
const BLOCK_B: [usize; 4] = [0, 1, 2, 4];

impl KernelChoice {
    /// `auto`, `tiled`, `tiled:64x64|128x64|128x128`, `direct`, `direct:A` or `direct:A:B` (A in
    /// 4/8/16, B in 1/2/4).
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: String| Error::Request(format!("kernel choice `{text}`: {why}"));
        let mut parts = text.split(':');
        let choice = match parts.next().unwrap_or("") {
            "auto" => KernelChoice::Auto,
            "tiled" => match parts.next() {
                None => KernelChoice::Tiled,
                Some(t) => KernelChoice::Tile(
                    GemmTile::ALL
                        .into_iter()
                        .find(|g| g.name() == t)
                        .ok_or_else(|| bad(format!("tile `{t}` is not 64x64, 128x64 or 128x128")))?,
                ),
            },
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
            other => return Err(bad(format!("`{other}` is not auto, tiled[:TILE] or direct[:A[:B]]"))),
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
            KernelChoice::Tiled | KernelChoice::Tile(_) => None,
            KernelChoice::Direct { block } => Some(block),
        }
    }

    /// The tile a tiled kernel must use (`None`: by device and shape).
    pub fn tile(self) -> Option<GemmTile> {
        match self {
            KernelChoice::Tile(t) => Some(t),
            _ => None,
        }
    }
}

impl std::fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelChoice::Auto => f.write_str("auto"),
            KernelChoice::Tiled => f.write_str("tiled"),
            KernelChoice::Tile(t) => write!(f, "tiled:{}", t.name()),
            KernelChoice::Direct { block: (0, 0) } => f.write_str("direct"),
            KernelChoice::Direct { block: (a, 0) } => write!(f, "direct:{a}"),
            KernelChoice::Direct { block: (a, b) } => write!(f, "direct:{a}:{b}"),
        }
    }
}

/// The ops that have kernel variants, and the choice for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelPolicy {
    pub matmul: KernelChoice,
    pub conv2d: KernelChoice,
    /// The tiled matmul and conv kernels multiply in f16 (summing in f32) when tensors are f16.
    /// Off by default: the products' rounding costs ~4x the f32 math's error on the same f16
    /// inputs (tests/ops.rs); `scripts/gpu-bench.sh` times both. Attention, norms and softmax
    /// always compute in f32.
    pub f16_math: bool,
    /// Group norm, layer norm and softmax reduce through subgroups where the device has them
    /// (`Capabilities::subgroups`); off: through workgroup memory everywhere.
    pub subgroups: bool,
}

impl Default for KernelPolicy {
    fn default() -> Self {
        KernelPolicy { matmul: KernelChoice::Auto, conv2d: KernelChoice::Auto, f16_math: false, subgroups: true }
    }
}

impl KernelPolicy {
    /// `matmul=tiled,conv2d=direct:8:2,f16-math=on` (any part may be left out: `auto`, `off`).
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
            let choice = choice.trim();
            match op.trim() {
                "matmul" => policy.matmul = KernelChoice::parse(choice)?,
                "conv2d" => policy.conv2d = KernelChoice::parse(choice)?,
                "f16-math" => policy.f16_math = on_off("f16-math", choice)?,
                "subgroups" => policy.subgroups = on_off("subgroups", choice)?,
                other => {
                    return Err(Error::Request(format!(
                        "kernel policy: `{other}` is not matmul, conv2d, f16-math or subgroups"
                    )))
                }
            }
        }
        Ok(policy)
    }
}

fn on_off(what: &str, choice: &str) -> Result<bool> {
    match choice {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(Error::Request(format!("kernel policy: {what} `{choice}` is not on or off"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_print_and_resolve() {
        for text in ["auto", "tiled", "tiled:64x64", "tiled:128x128", "direct", "direct:8", "direct:16:2"] {
            assert_eq!(KernelChoice::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(KernelChoice::parse("direct:4:1").unwrap(), KernelChoice::Direct { block: (4, 1) });
        assert_eq!(KernelChoice::parse("tiled:128x64").unwrap().tile(), Some(GemmTile::T128x64));
        for bad in ["", "fast", "direct:3", "direct:8:8", "direct:8:2:1", "tiled:4", "tiled:64x64:1"] {
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
        assert_eq!(
            p,
            KernelPolicy {
                matmul: KernelChoice::Tiled,
                conv2d: KernelChoice::Direct { block: (8, 2) },
                f16_math: false,
                subgroups: true,
            }
        );
        assert!(KernelPolicy::parse("f16-math=on").unwrap().f16_math);
        assert!(!KernelPolicy::parse("subgroups=off").unwrap().subgroups);
        assert!(KernelPolicy::parse("subgroups=yes").is_err());
        assert!(KernelPolicy::parse("f16-math=maybe").is_err());
        assert_eq!(KernelPolicy::parse("").unwrap(), KernelPolicy::default());
        assert!(KernelPolicy::parse("attention=tiled").is_err());
        assert!(KernelPolicy::parse("matmul").is_err());
        // `with` sets what it names and keeps the rest (the CLI: variables, then the flag).
        let base = KernelPolicy { matmul: KernelChoice::Tiled, conv2d: KernelChoice::Tiled, ..KernelPolicy::default() };
        assert_eq!(base.with("conv2d=auto").unwrap(), KernelPolicy { conv2d: KernelChoice::Auto, ..base });
    }
}
