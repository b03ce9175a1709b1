//! A kernel self-test that runs anywhere the library does (CLI `selftest`, the browser page):
//! matmul, conv2d and attention on the GPU against a plain CPU reference, with random inputs.

use crate::error::Result;
use crate::gpu::{DType, Gpu, GpuTensor};
use crate::ops;
use crate::random::random_values;

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

/// The self-test's CPU reference: the three kernels written as plainly as possible, with f64
/// sums. It ships in the wasm, where pulling in candle for three loops would cost megabytes; the
/// test suites compare every op against candle.
mod reference {
    /// `a [m, k] @ w[n, k]^T + bias[n]`.
    pub fn matmul_nt(a: &[f32], w: &[f32], bias: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k).map(|p| f64::from(a[i * k + p]) * f64::from(w[j * k + p])).sum();
                out.push((dot + f64::from(bias[j])) as f32);
            }
        }
        out
    }

    /// NCHW conv2d with a square kernel, zero padding and a bias.
    pub struct Conv {
        pub batch: usize,
        pub cin: usize,
        pub cout: usize,
        pub h: usize,
        pub w: usize,
        pub k: usize,
        pub stride: usize,
        pub pad: usize,
    }

    pub fn conv2d(x: &[f32], wt: &[f32], bias: &[f32], c: &Conv) -> Vec<f32> {
        let oh = (c.h + 2 * c.pad - c.k) / c.stride + 1;
        let ow = (c.w + 2 * c.pad - c.k) / c.stride + 1;
        let mut out = Vec::with_capacity(c.batch * c.cout * oh * ow);
        for b in 0..c.batch {
            for o in 0..c.cout {
                for y in 0..oh {
                    for xo in 0..ow {
                        let mut sum = f64::from(bias[o]);
                        for i in 0..c.cin {
                            for ky in 0..c.k {
                                for kx in 0..c.k {
                                    let (iy, ix) = (
                                        (y * c.stride + ky) as isize - c.pad as isize,
                                        (xo * c.stride + kx) as isize - c.pad as isize,
                                    );
                                    if iy < 0 || ix < 0 || iy >= c.h as isize || ix >= c.w as isize {
                                        continue;
                                    }
                                    let xv = x[((b * c.cin + i) * c.h + iy as usize) * c.w + ix as usize];
                                    let wv = wt[((o * c.cin + i) * c.k + ky) * c.k + kx];
                                    sum += f64::from(xv) * f64::from(wv);
                                }
                            }
                        }
                        out.push(sum as f32);
                    }
                }
            }
        }
        out
    }

    /// softmax(q k^T / sqrt(d)) v over `[groups, n, d]` (batch × heads folded into `groups`).
    pub fn attention(q: &[f32], k: &[f32], v: &[f32], groups: usize, nq: usize, nk: usize, d: usize) -> Vec<f32> {
        let scale = 1.0 / (d as f64).sqrt();
        let mut out = Vec::with_capacity(groups * nq * d);
        for g in 0..groups {
            for i in 0..nq {
                let qi = &q[(g * nq + i) * d..][..d];
                let scores: Vec<f64> = (0..nk)
                    .map(|j| {
                        let kj = &k[(g * nk + j) * d..][..d];
                        qi.iter().zip(kj).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>() * scale
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = e.iter().sum();
                for c in 0..d {
                    let acc: f64 = (0..nk).map(|j| e[j] * f64::from(v[(g * nk + j) * d + c])).sum();
                    out.push((acc / total) as f32);
                }
            }
        }
        out
    }
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
        let r = reference::matmul_nt(&a, &w, &bias, m, k, n);
        out.push(check("matmul 77x130x95 +bias", dtype, &g.to_vec_f32().await?, &r, tol(1e-4, 0.1)));

        // conv2d 3x3, padding 1, stride 2, as the U-Net's downsamplers.
        let (cin, cout, h, wd) = (12, 20, 17, 15);
        let (x, wt, b) = (random_values(4, 2 * cin * h * wd), random_values(5, cout * cin * 9), random_values(6, cout));
        let g = ops::conv2d(
            &GpuTensor::from_f32_as(gpu, &x, &[2, cin, h, wd], dtype)?,
            &GpuTensor::from_f32_as(gpu, &wt, &[cout, cin, 3, 3], dtype)?,
            Some(&GpuTensor::from_f32_as(gpu, &b, &[cout], dtype)?),
            ops::Conv2dParams { stride: 2, padding: 1, pad_end: 0 },
        )?;
        let conv = reference::Conv { batch: 2, cin, cout, h, w: wd, k: 3, stride: 2, pad: 1 };
        let r = reference::conv2d(&x, &wt, &b, &conv);
        out.push(check("conv2d 3x3 s2 p1", dtype, &g.to_vec_f32().await?, &r, tol(1e-4, 0.1)));

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
        let r = reference::attention(&q, &kk, &v, bh * heads, nq, nk, d);
        out.push(check("attention N=70x83 d=40", dtype, &g.to_vec_f32().await?, &r, tol(1e-5, 5e-3)));
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
