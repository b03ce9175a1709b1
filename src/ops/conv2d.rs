//! conv2d as an implicit GEMM (`shaders/conv2d.wgsl`): any kernel size, stride and padding.

use super::gemm::{self, TileShape};
use super::{float_dtype, u32_of, WeightStore};
use crate::error::{Error, Result};
use crate::gpu::kernel::{grid_1d, KernelKey, Shader};
use crate::gpu::layout::uniform;
use crate::gpu::{DType, GpuTensor};
use crate::quant::QTensor;

const SHADER: Shader = Shader { name: "conv2d", source: include_str!("../../shaders/conv2d.wgsl") };
const DIRECT: Shader = Shader { name: "conv2d_direct", source: include_str!("../../shaders/conv2d_direct.wgsl") };

/// Which conv2d kernel to run. `Tiled` (64x64 tiles staged through workgroup memory) suits real
/// GPUs; `Direct` (no workgroup memory, no barriers, lanes on consecutive pixels) is several
/// times faster on CPU adapters such as Mesa's llvmpipe, where barriers are coroutine switches
/// and every per-lane storage load is a scalar loop over the lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Tiled,
    /// `channels`: output channels per invocation (4, 8 or 16; 0 = by Cout); `pixels`: output
    /// pixels per invocation (1, 2 or 4; 0 = by size). Each input load feeds `channels` FMAs.
    Direct {
        channels: usize,
        pixels: usize,
    },
}

/// The conv2d kernels, each variant naming what its shader is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConvKernel {
    /// `residual`: a tensor of the output's shape is added in the epilogue.
    /// `vec`: weights read as vec4 along K, outputs written as vec4 along the pixels;
    /// `pointwise`: a 1x1 stride-1 unpadded conv reads its input as vec4.
    Tiled { bias: Bias, residual: bool, weight: WeightStore, shape: TileShape, vec: [bool; 2], pointwise: bool },
    /// `channels` x `pixels` outputs per invocation, as `direct_block` chose them.
    Direct { bias: Bias, residual: bool, weight: WeightStore, channels: usize, pixels: usize },
}

/// What the epilogue adds per output channel: nothing, a bias `[Cout]`, or a bias per image
/// `[N, Cout]` (a ResNet block's conv bias plus its projected time embedding, so the block's
/// broadcast add is not a dispatch and a pass over the activation of its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bias {
    None,
    Channel,
    Image,
}

impl Bias {
    /// The kind of `bias` for `n` images of `cout` channels, or an error naming its shape.
    fn of(op: &'static str, bias: Option<&GpuTensor>, n: usize, cout: usize) -> Result<Bias> {
        match bias.map(|b| b.shape()) {
            None => Ok(Bias::None),
            Some(&[c]) if c == cout => Ok(Bias::Channel),
            Some(&[bn, c]) if bn == n && c == cout => Ok(Bias::Image),
            Some(s) => Err(Error::shape(
                op,
                format!("bias {s:?} for {n} image(s) x {cout} output channels: needs [{cout}] or [{n}, {cout}]"),
            )),
        }
    }

    fn define(self, key: KernelKey) -> KernelKey {
        key.with("BIAS", (self != Bias::None) as u32).with("BIAS_IMAGE", (self == Bias::Image) as u32)
    }
}

impl ConvKernel {
    fn key(self, dtype: DType) -> KernelKey {
        match self {
            ConvKernel::Tiled { bias, residual, weight, shape, vec: [va, vc], pointwise } => shape.define(
                weight
                    .define(bias.define(KernelKey::new(SHADER, dtype)))
                    .with("RESIDUAL", residual as u32)
                    .with("VEC_A", va as u32)
                    .with("VEC_C", vc as u32)
                    .with("POINTWISE", pointwise as u32),
            ),
            ConvKernel::Direct { bias, residual, weight, channels, pixels } => weight
                .define(bias.define(KernelKey::new(DIRECT, dtype)))
                .with("RESIDUAL", residual as u32)
                .with("COB", channels as u32)
                .with("G2", (channels >= 8) as u32)
                .with("G4", (channels >= 16) as u32)
                .with("PXB", pixels as u32)
                .with("P2", (pixels >= 2) as u32)
                .with("P4", (pixels >= 4) as u32),
        }
    }
}

/// The device's `KernelPolicy::conv2d` decides (`Auto`: `Direct` on CPU adapters).
fn variant(x: &GpuTensor) -> Variant {
    match x.gpu().kernel_policy().conv2d.direct_block(super::cpu_adapter(x)) {
        None => Variant::Tiled,
        Some((channels, pixels)) => Variant::Direct { channels, pixels },
    }
}

uniform! {
    struct Params {
        cin: u32,
        h: u32,
        w: u32,
        cout: u32,
        ho: u32,
        wo: u32,
        kh: u32,
        kw: u32,
        stride: u32,
        pad: u32,
        k: u32,
        p: u32,
        wpr: u32,
        /// Direct kernel only: batch size, pixel blocks (pixels / pixels per invocation, the stride
        /// between an invocation's pixels) and invocations in all.
        n: u32,
        s: u32,
        inv: u32,
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Conv2dParams {
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// Extra zero rows/columns at the bottom/right only: the VAE encoder's downsampler pads
    /// (0, 1, 0, 1) before a stride-2 conv.
    pub pad_end: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams { stride: 1, padding: 0, pad_end: 0 }
    }
}

/// `x` [N, Cin, H, W] * `weight` [Cout, Cin, KH, KW] (+ `bias` [Cout] or [N, Cout]) -> [N, Cout, Ho, Wo].
pub fn conv2d(x: &GpuTensor, weight: &GpuTensor, bias: Option<&GpuTensor>, cp: Conv2dParams) -> Result<GpuTensor> {
    conv2d_add(x, weight, bias, cp, None)
}

/// `conv2d(…) + residual`, the add done in the conv's epilogue (one dispatch and one pass over
/// the activation fewer: a ResNet block's skip). `residual` has the output's shape and dtype.
pub fn conv2d_add(
    x: &GpuTensor,
    weight: &GpuTensor,
    bias: Option<&GpuTensor>,
    cp: Conv2dParams,
    residual: Option<&GpuTensor>,
) -> Result<GpuTensor> {
    const OP: &str = "conv2d";
    let mut ts = vec![x, weight];
    ts.extend(bias);
    // The kernel runs in the input's dtype; this refuses U32 and mixed dtypes.
    float_dtype(OP, &ts)?;
    let (&[_, cin, h, w], &[cout, wcin, kh, kw]) = (x.shape(), weight.shape()) else {
        return Err(Error::shape(OP, format!("needs NCHW x OIHW, got {:?} x {:?}", x.shape(), weight.shape())));
    };
    if cin != wcin {
        return Err(Error::shape(OP, format!("input has {cin} channels, weight expects {wcin}")));
    }
    let (ph, pw) = (h + 2 * cp.padding + cp.pad_end, w + 2 * cp.padding + cp.pad_end);
    if cp.stride == 0 || ph < kh || pw < kw {
        return Err(Error::shape(OP, format!("kernel {kh}x{kw} stride {} does not fit {h}x{w}", cp.stride)));
    }
    let ho = (ph - kh) / cp.stride + 1;
    let wo = (pw - kw) / cp.stride + 1;
    launch(WeightStore::Plain, x, weight, bias, residual, cp, Geometry { cout, kh, kw, ho, wo, wpr: 0 })
}

/// Invocations per workgroup of the direct kernel (`WG` in the shader).
const DIRECT_WG: u32 = 64;
/// The direct kernel's blocks shrink until there are at least this many workgroups, so that
/// every CPU thread gets work.
const DIRECT_MIN_GROUPS: usize = 2;

/// Output channels x pixels per invocation of the direct kernel, for `outputs_px` output pixels
/// (batch included) and `cout` channels; a non-zero `channels` / `pixels` is kept as asked. On
/// llvmpipe every per-lane storage load costs a scalar loop over the SIMD lanes, so the cost of
/// a K step is about channels + pixels loads for channels * pixels FMAs: the biggest block that
/// still leaves DIRECT_MIN_GROUPS workgroups, and among equal ones the squarest, wins.
fn direct_block(outputs_px: usize, cout: usize, channels: usize, pixels: usize) -> (usize, usize) {
    const BLOCKS: [(usize, usize); 9] = [(16, 4), (8, 4), (16, 2), (4, 4), (8, 2), (16, 1), (4, 2), (8, 1), (4, 1)];
    let fits = |&&(c, p): &&(usize, usize)| {
        (channels == 0 || c == channels) && (pixels == 0 || p == pixels) && (c == 4 || c <= cout.next_multiple_of(4))
    };
    let invocations = |c: usize, p: usize| outputs_px.div_ceil(p) * cout.div_ceil(c);
    let enough = |&&(c, p): &&(usize, usize)| invocations(c, p) >= DIRECT_MIN_GROUPS * DIRECT_WG as usize;
    BLOCKS.iter().filter(fits).find(enough).or_else(|| BLOCKS.iter().rev().find(fits)).copied().unwrap_or((4, 1))
}

struct Geometry {
    cout: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
    /// u32 words per weight row when quantized.
    wpr: usize,
}

fn launch(
    store: WeightStore,
    x: &GpuTensor,
    weight: &GpuTensor,
    bias: Option<&GpuTensor>,
    residual: Option<&GpuTensor>,
    cp: Conv2dParams,
    g: Geometry,
) -> Result<GpuTensor> {
    const OP: &str = "conv2d";
    let [n, cin, h, w] = super::nchw(x, OP)?;
    let Geometry { cout, kh, kw, ho, wo, wpr } = g;
    let bias_kind = Bias::of(OP, bias, n, cout)?;
    if let Some(r) = residual {
        if r.shape() != [n, cout, ho, wo] || r.dtype() != x.dtype() {
            return Err(Error::shape(
                OP,
                format!("residual {:?} {} for an output [{n}, {cout}, {ho}, {wo}] {}", r.shape(), r.dtype(), x.dtype()),
            ));
        }
    }
    let out = GpuTensor::empty(x.gpu(), &[n, cout, ho, wo], x.dtype())?;
    let mut params = Params {
        cin: cin as u32,
        h: h as u32,
        w: w as u32,
        cout: cout as u32,
        ho: ho as u32,
        wo: wo as u32,
        kh: kh as u32,
        kw: kw as u32,
        stride: cp.stride as u32,
        pad: cp.padding as u32,
        k: u32_of(OP, cin * kh * kw)?,
        p: u32_of(OP, ho * wo)?,
        wpr: wpr as u32,
        n: n as u32,
        s: 0,
        inv: 0,
    };
    let mut binds = vec![x.bind(OP)?, weight.bind(OP)?, out.bind(OP)?];
    if let Some(b) = bias {
        binds.push(b.bind(OP)?);
    }
    if let Some(r) = residual {
        binds.push(r.bind(OP)?);
    }
    let gpu = x.gpu();
    gpu.count_flops(2.0 * (n * cout * cin * kh * kw * ho * wo) as f64);
    let (dtype, has_res) = (x.dtype(), residual.is_some());
    let (key, groups) = match variant(x) {
        Variant::Tiled => {
            let shape = gemm::plan_for(x, gpu.kernel_policy().conv2d, store != WeightStore::Plain, cout, ho * wo, n);
            let k = cin * kh * kw;
            let vec_a = store == WeightStore::Plain && k % 4 == 0;
            let vec_c = (ho * wo) % 4 == 0;
            let pointwise = kh == 1 && kw == 1 && cp.stride == 1 && cp.padding == 0 && cp.pad_end == 0 && vec_c;
            let kernel = ConvKernel::Tiled {
                bias: bias_kind,
                residual: has_res,
                weight: store,
                shape,
                vec: [vec_a, vec_c],
                pointwise,
            };
            (kernel.key(dtype), shape.groups(cout, ho * wo, n))
        }
        Variant::Direct { channels, pixels } => {
            let (channels, pixels) = direct_block(n * ho * wo, cout, channels, pixels);
            let s = (n * ho * wo).div_ceil(pixels);
            let inv = u32_of(OP, s * cout.div_ceil(channels))?;
            params.s = s as u32;
            params.inv = inv;
            let key =
                ConvKernel::Direct { bias: bias_kind, residual: has_res, weight: store, channels, pixels }.key(dtype);
            (key, grid_1d(inv.div_ceil(DIRECT_WG)))
        }
    };
    gpu.launch(&key, &params, &binds, groups)?;
    Ok(out)
}

/// conv2d with a quantized weight: `weight` is [Cout, Cin*KH*KW] (the conv weight flattened along
/// its reduction dimension), dequantized as tiles are staged.
pub fn conv2d_quant(
    x: &GpuTensor,
    weight: &QTensor,
    kh: usize,
    kw: usize,
    bias: Option<&GpuTensor>,
    cp: Conv2dParams,
) -> Result<GpuTensor> {
    conv2d_quant_add(x, weight, kh, kw, bias, cp, None)
}

/// `conv2d_quant(…) + residual`, added in the epilogue as `conv2d_add` does.
pub fn conv2d_quant_add(
    x: &GpuTensor,
    weight: &QTensor,
    kh: usize,
    kw: usize,
    bias: Option<&GpuTensor>,
    cp: Conv2dParams,
    residual: Option<&GpuTensor>,
) -> Result<GpuTensor> {
    const OP: &str = "conv2d_quant";
    let mut ts = vec![x];
    ts.extend(bias);
    // The kernel runs in the input's dtype; this refuses U32 and mixed dtypes.
    float_dtype(OP, &ts)?;
    let [_, cin, h, w] = super::nchw(x, OP)?;
    if weight.cols != cin * kh * kw {
        return Err(Error::shape(
            OP,
            format!("input {:?} vs quantized weight [{}, {}] ({kh}x{kw})", x.shape(), weight.rows, weight.cols),
        ));
    }
    let (ph, pw) = (h + 2 * cp.padding + cp.pad_end, w + 2 * cp.padding + cp.pad_end);
    if cp.stride == 0 || ph < kh || pw < kw {
        return Err(Error::shape(OP, format!("kernel {kh}x{kw} stride {} does not fit {h}x{w}", cp.stride)));
    }
    let g = Geometry {
        cout: weight.rows,
        kh,
        kw,
        ho: (ph - kh) / cp.stride + 1,
        wo: (pw - kw) / cp.stride + 1,
        wpr: weight.format.row_words(weight.cols),
    };
    launch(WeightStore::Quant(weight.format), x, &weight.data, bias, residual, cp, g)
}
