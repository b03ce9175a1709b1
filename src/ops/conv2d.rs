//! conv2d as an implicit GEMM (`shaders/conv2d.wgsl`): any kernel size, stride and padding.

use bytemuck::{Pod, Zeroable};

use super::{float_dtype, u32_of};
use crate::error::{Error, Result};
use crate::gpu::kernel::{KernelKey, Shader};
use crate::gpu::GpuTensor;
use crate::quant::{QTensor, QuantFormat};

const SHADER: Shader = Shader { name: "conv2d", source: include_str!("../../shaders/conv2d.wgsl") };

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
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
    pad_: [u32; 3],
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

/// `x` [N, Cin, H, W] * `weight` [Cout, Cin, KH, KW] (+ `bias` [Cout]) -> [N, Cout, Ho, Wo].
pub fn conv2d(x: &GpuTensor, weight: &GpuTensor, bias: Option<&GpuTensor>, cp: Conv2dParams) -> Result<GpuTensor> {
    const OP: &str = "conv2d";
    let mut ts = vec![x, weight];
    ts.extend(bias);
    let dtype = float_dtype(OP, &ts)?;
    let (&[_, cin, h, w], &[cout, wcin, kh, kw]) = (x.shape(), weight.shape()) else {
        return Err(Error::shape(OP, format!("needs NCHW x OIHW, got {:?} x {:?}", x.shape(), weight.shape())));
    };
    if cin != wcin {
        return Err(Error::shape(OP, format!("input has {cin} channels, weight expects {wcin}")));
    }
    if let Some(b) = bias {
        if b.numel() != cout {
            return Err(Error::shape(OP, format!("bias {:?} for {cout} output channels", b.shape())));
        }
    }
    let (ph, pw) = (h + 2 * cp.padding + cp.pad_end, w + 2 * cp.padding + cp.pad_end);
    if cp.stride == 0 || ph < kh || pw < kw {
        return Err(Error::shape(OP, format!("kernel {kh}x{kw} stride {} does not fit {h}x{w}", cp.stride)));
    }
    let ho = (ph - kh) / cp.stride + 1;
    let wo = (pw - kw) / cp.stride + 1;
    let key = KernelKey::new(SHADER, dtype).with("BIAS", bias.is_some() as u32);
    launch(&key, x, weight, bias, cp, Geometry { cout, kh, kw, ho, wo, wpr: 0 })
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
    key: &KernelKey,
    x: &GpuTensor,
    weight: &GpuTensor,
    bias: Option<&GpuTensor>,
    cp: Conv2dParams,
    g: Geometry,
) -> Result<GpuTensor> {
    const OP: &str = "conv2d";
    let [n, cin, h, w] = super::nchw(x, OP)?;
    let Geometry { cout, kh, kw, ho, wo, wpr } = g;
    let out = GpuTensor::empty(x.gpu(), &[n, cout, ho, wo], x.dtype())?;
    let params = Params {
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
        pad_: [0; 3],
    };
    let mut binds = vec![x.bind(OP)?, weight.bind(OP)?, out.bind(OP)?];
    if let Some(b) = bias {
        binds.push(b.bind(OP)?);
    }
    let groups = [(ho * wo).div_ceil(64) as u32, cout.div_ceil(64) as u32, n as u32];
    x.gpu().launch(key, bytemuck::bytes_of(&params), &binds, groups)?;
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
    const OP: &str = "conv2d_quant";
    let mut ts = vec![x];
    ts.extend(bias);
    let dtype = float_dtype(OP, &ts)?;
    let [_, cin, h, w] = super::nchw(x, OP)?;
    if weight.cols != cin * kh * kw || bias.is_some_and(|b| b.numel() != weight.rows) {
        return Err(Error::shape(
            OP,
            format!("input {:?} vs quantized weight [{}, {}] ({kh}x{kw})", x.shape(), weight.rows, weight.cols),
        ));
    }
    let (ph, pw) = (h + 2 * cp.padding + cp.pad_end, w + 2 * cp.padding + cp.pad_end);
    if cp.stride == 0 || ph < kh || pw < kw {
        return Err(Error::shape(OP, format!("kernel {kh}x{kw} stride {} does not fit {h}x{w}", cp.stride)));
    }
    let key = KernelKey::new(SHADER, dtype)
        .with("BIAS", bias.is_some() as u32)
        .with("QUANT", 1)
        .with("Q8", (weight.format == QuantFormat::Q8_0) as u32)
        .with("QWORDS", weight.format.quant_words() as u32);
    let g = Geometry {
        cout: weight.rows,
        kh,
        kw,
        ho: (ph - kh) / cp.stride + 1,
        wo: (pw - kw) / cp.stride + 1,
        wpr: weight.format.row_words(weight.cols),
    };
    launch(&key, x, &weight.data, bias, cp, g)
}
