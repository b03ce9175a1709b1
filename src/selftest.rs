//! A kernel self-test that runs anywhere the library does (CLI `selftest`, the browser page):
//! matmul, conv2d and attention on the GPU against candle on the CPU, with random inputs.

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::gpu::{DType, Gpu, GpuTensor};
use crate::ops;

/// Deterministic pseudo-random values in [-1, 1): splitmix64. For tests and self-tests only;
/// the generation RNG (matching seeds across platforms) lives with the pipeline.
pub fn random_values(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckResult {
    pub name: String,
    pub dtype: String,
    pub max_abs_err: f32,
    pub tolerance: f32,
    pub passed: bool,
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) })
}

fn cpu(data: &[f32], shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_slice(data, shape, &Device::Cpu)?)
}

fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Reference attention on the CPU, [B, H, N, D] layout: softmax(q k^T * scale) v.
pub fn cpu_attention(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<Tensor> {
    let d = q.dim(3)?;
    let s = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
    let s = if causal {
        let (nq, nk) = (s.dim(2)?, s.dim(3)?);
        let mask: Vec<f32> = (0..nq * nk).map(|x| if x % nk > x / nk { f32::NEG_INFINITY } else { 0.0 }).collect();
        s.broadcast_add(&Tensor::from_vec(mask, (nq, nk), &Device::Cpu)?)?
    } else {
        s
    };
    let m = s.max_keepdim(3)?;
    let e = s.broadcast_sub(&m)?.exp()?;
    let p = e.broadcast_div(&e.sum_keepdim(3)?)?;
    Ok(p.matmul(v)?)
}

/// Runs the three kernels the browser must prove, in f32 and (where offered) f16.
pub async fn run(gpu: &Gpu) -> Result<Vec<CheckResult>> {
    let mut dtypes = vec![DType::F32];
    if gpu.caps().shader_f16 {
        dtypes.push(DType::F16);
    }
    let mut out = Vec::new();
    for dtype in dtypes {
        let tol = |f32_tol: f32, f16_tol: f32| {
            if dtype == DType::F16 {
                f16_tol
            } else {
                f32_tol
            }
        };

        // matmul, odd sizes so edge tiles are exercised, with bias and a transposed weight.
        let (m, k, n) = (77, 130, 95);
        let (a, w, bias) = (random_values(1, m * k), random_values(2, n * k), random_values(3, n));
        let g = ops::matmul(
            &GpuTensor::from_f32_as(gpu, &a, &[m, k], dtype)?,
            &GpuTensor::from_f32_as(gpu, &w, &[n, k], dtype)?,
            Some(&GpuTensor::from_f32_as(gpu, &bias, &[n], dtype)?),
            ops::MatmulSpec { trans_b: true },
        )?;
        let r = cpu(&a, &[m, k])?.matmul(&cpu(&w, &[n, k])?.t()?)?.broadcast_add(&cpu(&bias, &[n])?)?;
        out.push(check("matmul 77x130x95 +bias", dtype, &g.to_vec_f32().await?, &flat(&r)?, tol(1e-4, 0.1)));

        // conv2d 3x3, padding 1, stride 2, as the U-Net's downsamplers.
        let (cin, cout, h, wd) = (12, 20, 17, 15);
        let (x, wt, b) = (random_values(4, 2 * cin * h * wd), random_values(5, cout * cin * 9), random_values(6, cout));
        let g = ops::conv2d(
            &GpuTensor::from_f32_as(gpu, &x, &[2, cin, h, wd], dtype)?,
            &GpuTensor::from_f32_as(gpu, &wt, &[cout, cin, 3, 3], dtype)?,
            Some(&GpuTensor::from_f32_as(gpu, &b, &[cout], dtype)?),
            ops::Conv2dParams { stride: 2, padding: 1, pad_end: 0 },
        )?;
        let r = cpu(&x, &[2, cin, h, wd])?.conv2d(&cpu(&wt, &[cout, cin, 3, 3])?, 1, 2, 1, 1)?;
        let r = r.broadcast_add(&cpu(&b, &[1, cout, 1, 1])?)?;
        out.push(check("conv2d 3x3 s2 p1", dtype, &g.to_vec_f32().await?, &flat(&r)?, tol(1e-4, 0.1)));

        // attention, SD-like head dim 40, more keys than one tile.
        let (bh, heads, nq, nk, d) = (2, 3, 70, 83, 40);
        let (q, kk, v) = (
            random_values(7, bh * heads * nq * d),
            random_values(8, bh * heads * nk * d),
            random_values(9, bh * heads * nk * d),
        );
        let g = ops::attention(
            &GpuTensor::from_f32_as(gpu, &q, &[bh, heads, nq, d], dtype)?,
            &GpuTensor::from_f32_as(gpu, &kk, &[bh, heads, nk, d], dtype)?,
            &GpuTensor::from_f32_as(gpu, &v, &[bh, heads, nk, d], dtype)?,
            heads,
            ops::AttentionLayout::Split,
            false,
            None,
        )?;
        let r = cpu_attention(
            &cpu(&q, &[bh, heads, nq, d])?,
            &cpu(&kk, &[bh, heads, nk, d])?,
            &cpu(&v, &[bh, heads, nk, d])?,
            false,
        )?;
        out.push(check("attention N=70x83 d=40", dtype, &g.to_vec_f32().await?, &flat(&r)?, tol(1e-5, 5e-3)));
    }
    Ok(out)
}

fn check(name: &str, dtype: DType, got: &[f32], want: &[f32], tolerance: f32) -> CheckResult {
    let max_abs_err = max_abs_diff(got, want);
    CheckResult {
        name: name.into(),
        dtype: dtype.to_string(),
        max_abs_err,
        tolerance,
        passed: max_abs_err <= tolerance,
    }
}
