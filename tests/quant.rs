//! q8_0 / q4_0: our GGML blocks byte-for-byte against candle's quantizer, and the quantized
//! matmul, conv and embedding kernels (dequantizing on the fly) against candle's dequantize +
//! matmul/conv. q3_0 is ours (GGML has no 3-bit 32-block format): its CPU dequantization is
//! checked against the format's definition in `quant`'s unit tests, and the kernels here against
//! it + candle's matmul/conv.

mod common;

use candle_core::quantized::{GgmlDType, QTensor as CandleQ};
use candle_core::{Device, Tensor};
use common::{compare, gpu, to_vec, Sweep};
use webdiffusion::gpu::{DType, Gpu, GpuOptions, GpuTensor};
use webdiffusion::ops::{self, Conv2dParams};
use webdiffusion::quant::{self, QTensor, QuantFormat};
use webdiffusion::random::random_values;

const FORMATS: [(QuantFormat, Option<GgmlDType>); 3] =
    [(QuantFormat::Q8_0, Some(GgmlDType::Q8_0)), (QuantFormat::Q4_0, Some(GgmlDType::Q4_0)), (QuantFormat::Q3_0, None)];

fn cpu(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
}

/// candle's quantization of `w` [rows, cols], dequantized again: the weights the GPU must use
/// (for q3_0, which candle lacks, our quantization and dequantization).
fn candle_roundtrip(w: &[f32], rows: usize, cols: usize, f: QuantFormat, g: Option<GgmlDType>) -> (Vec<u8>, Tensor) {
    let Some(g) = g else {
        let q = quant::quantize(f, w).unwrap();
        let deq = quant::dequantize(f, &q).unwrap();
        return (q, cpu(&deq, &[rows, cols]));
    };
    let q = CandleQ::quantize(&cpu(w, &[rows, cols]), g).unwrap();
    (q.data().unwrap().into_owned(), q.dequantize(&Device::Cpu).unwrap())
}

#[test]
fn blocks_match_candle_byte_for_byte() {
    let (rows, cols) = (7, 96);
    let w: Vec<f32> = random_values(5, rows * cols).iter().map(|x| x * 3.0).collect();
    for (f, g) in FORMATS {
        let Some(g) = g else { continue };
        let ours = quant::quantize(f, &w).unwrap();
        let (theirs, deq) = candle_roundtrip(&w, rows, cols, f, Some(g));
        assert_eq!(ours, theirs, "{f:?} blocks");
        let back = quant::dequantize(f, &ours).unwrap();
        assert_eq!(back, deq.flatten_all().unwrap().to_vec1::<f32>().unwrap(), "{f:?} dequantize");
    }
}

/// The quantized matmul against candle's dequantize + matmul, under each kernel policy of
/// `policies` (the weight, inputs and reference made once: they are the slow part).
#[allow(clippy::too_many_arguments)]
fn check_matmul(
    g: &Gpu,
    f: QuantFormat,
    cf: Option<GgmlDType>,
    m: usize,
    k: usize,
    n: usize,
    dtype: DType,
    sweep: Option<Sweep>,
) {
    let (a, w, b) = (random_values(1, m * k), random_values(2, n * k), random_values(3, n));
    let qt = QTensor::from_f32(g, f, &w, n, k).unwrap();
    let a_up = GpuTensor::from_f32_as(g, &a, &[m, k], dtype).unwrap();
    let b_up = GpuTensor::from_f32_as(g, &b, &[n], dtype).unwrap();
    let a_ref: Vec<f32> = to_vec(&a_up);
    let b_ref: Vec<f32> = to_vec(&b_up);
    let (_, deq) = candle_roundtrip(&w, n, k, f, cf);
    let want = cpu(&a_ref, &[m, k]).matmul(&deq.t().unwrap()).unwrap().broadcast_add(&cpu(&b_ref, &[n])).unwrap();
    let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    let run = |kernel: &str| {
        let got = ops::matmul_quant(&a_up, &qt, Some(&b_up)).unwrap();
        let tol = common::kernel_tolerance("matmul", dtype, kernel);
        let err = compare(&format!("{f:?} matmul {m}x{k}x{n} {dtype} {kernel}"), tol, &to_vec(&got), &want);
        eprintln!("{f:?} {dtype} {m}x{k}x{n} {kernel}: max |err| {err:.2e}");
    };
    match sweep {
        Some(sweep) => common::each_kernel_in("matmul", sweep, run),
        None => run(""),
    }
}

#[test]
fn quantized_matmul_matches_candle_dequantize_matmul() {
    for (f, cf) in FORMATS {
        for dtype in common::dtypes() {
            // Every policy on the multi-tile and the long-K odd-N shape; the others add a shape.
            for (m, k, n) in [(1, 32, 1), (77, 320, 96), (130, 64, 200), (5, 1280, 33)] {
                // q3_0 differs from q4_0 only in the dequantization: every policy once.
                let every = if f == QuantFormat::Q3_0 { m == 130 } else { matches!(m, 130 | 5) };
                let sweep = if every { Sweep::Every } else { Sweep::Shape };
                check_matmul(gpu(), f, cf, m, k, n, dtype, Some(sweep));
            }
        }
    }
}

#[test]
fn quantized_weights_split_over_bindings() {
    // 16 KiB bindings split a [300, 128] q8_0 weight (300 x 136 bytes) into several chunks.
    let g = pollster::block_on(Gpu::new(&GpuOptions { binding_cap: Some(16 * 1024), ..common::options() })).unwrap();
    let qt = QTensor::from_f32(&g, QuantFormat::Q8_0, &random_values(2, 300 * 128), 300, 128).unwrap();
    assert!(qt.data.num_chunks() >= 2);
    check_matmul(&g, QuantFormat::Q8_0, Some(GgmlDType::Q8_0), 9, 128, 300, DType::F32, None);
    let qt = QTensor::from_f32(&g, QuantFormat::Q3_0, &random_values(2, 400 * 128), 400, 128).unwrap();
    assert!(qt.data.num_chunks() >= 2);
    check_matmul(&g, QuantFormat::Q3_0, None, 9, 128, 400, DType::F32, None);
}

#[test]
fn quantized_conv2d_matches_candle() {
    for (f, cf) in FORMATS {
        for dtype in common::dtypes() {
            // 3x3 with Cin*9 a multiple of 32 (as SD's 320-channel convs), and a 1x1 shortcut.
            for (cin, cout, k, stride, pad) in [(32, 40, 3, 1, 1), (64, 24, 1, 1, 0), (32, 16, 3, 2, 1)] {
                let (h, w) = (9, 11);
                let x = random_values(7, 2 * cin * h * w);
                let wt = random_values(8, cout * cin * k * k);
                let bias = random_values(9, cout);
                let qt = QTensor::from_f32(gpu(), f, &wt, cout, cin * k * k).unwrap();
                let x_up = GpuTensor::from_f32_as(gpu(), &x, &[2, cin, h, w], dtype).unwrap();
                let b_up = GpuTensor::from_f32_as(gpu(), &bias, &[cout], dtype).unwrap();
                let cp = Conv2dParams { stride, padding: pad, pad_end: 0 };
                // The 1x1 case also adds a residual in the epilogue (a ResNet shortcut's sum).
                let (ho, wo) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
                let res = (k == 1).then(|| random_values(10, 2 * cout * ho * wo));
                let res_up = res.as_ref().map(|r| GpuTensor::from_f32_as(gpu(), r, &[2, cout, ho, wo], dtype).unwrap());
                let (_, deq) = candle_roundtrip(&wt, cout, cin * k * k, f, cf);
                let deq = deq.reshape((cout, cin, k, k)).unwrap();
                let want = cpu(&to_vec(&x_up), &[2, cin, h, w]).conv2d(&deq, pad, stride, 1, 1).unwrap();
                let mut want = want.broadcast_add(&cpu(&to_vec(&b_up), &[1, cout, 1, 1])).unwrap();
                if let Some(r) = &res_up {
                    want = (want + cpu(&to_vec(r), &[2, cout, ho, wo])).unwrap();
                }
                let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
                // The weight, inputs and reference once; the kernel under each policy (every
                // policy on the 3x3 and the 1x1 with its residual; the strided one adds a shape).
                let every = if f == QuantFormat::Q3_0 { k == 3 && stride == 1 } else { stride == 1 };
                let sweep = if every { Sweep::Every } else { Sweep::Shape };
                common::each_kernel_in("conv2d", sweep, |kernel| {
                    let got = ops::conv2d_quant_add(&x_up, &qt, k, k, Some(&b_up), cp, res_up.as_ref()).unwrap();
                    let label = format!("{f:?} conv {cin}->{cout} k{k} s{stride} {dtype} {kernel}");
                    let tol = common::kernel_tolerance("conv2d", dtype, kernel);
                    let err = compare(&label, tol, &to_vec(&got), &want);
                    eprintln!("{label}: max |err| {err:.2e}");
                });
            }
        }
    }
}

#[test]
fn quantized_embedding_gathers_dequantized_rows() {
    // 16 KiB bindings split the table, so ids fall in different chunks.
    let g = pollster::block_on(Gpu::new(&GpuOptions { binding_cap: Some(16 * 1024), ..common::options() })).unwrap();
    let (vocab, d) = (700, 64);
    let table = random_values(4, vocab * d);
    let ids = [0u32, 699, 5, 350, 5, 123];
    for (f, cf) in FORMATS {
        let qt = QTensor::from_f32(&g, f, &table, vocab, d).unwrap();
        assert!(qt.data.num_chunks() >= 2, "{f:?}");
        let (_, deq) = candle_roundtrip(&table, vocab, d, f, cf);
        let deq: Vec<f32> = deq.flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<f32> = ids.iter().flat_map(|&i| deq[i as usize * d..(i as usize + 1) * d].to_vec()).collect();
        for dtype in common::dtypes() {
            let got = ops::embedding_quant(&qt, &ids, dtype).unwrap();
            assert_eq!(got.shape(), &[ids.len(), d]);
            let tol = common::kernel_tolerance("embedding_quant", dtype, "");
            compare(&format!("{f:?} embedding {dtype}"), tol, &to_vec(&got), &want);
        }
        assert!(ops::embedding_quant(&qt, &[700], DType::F32).unwrap_err().to_string().contains("id 700"));
    }
}

#[test]
fn quantized_shapes_are_checked() {
    let qt = QTensor::from_f32(gpu(), QuantFormat::Q4_0, &random_values(1, 64), 2, 32).unwrap();
    let a = GpuTensor::from_f32(gpu(), &[0.0; 48], &[3, 16]).unwrap();
    assert!(ops::matmul_quant(&a, &qt, None).unwrap_err().to_string().contains("quantized [2, 32]"));
    assert!(QTensor::from_f32(gpu(), QuantFormat::Q8_0, &[0.0; 40], 2, 20).is_err());
}
