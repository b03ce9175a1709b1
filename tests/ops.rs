//! Every GPU op against candle on the CPU through `common::check_op`, in f32 and f16, with odd
//! sizes (edge tiles) and scaled-down Stable Diffusion shapes.

mod common;

use candle_core::{DType as CDType, Device, Tensor, D};
use common::{check_op, check_op_in, cpu_attention, inp, inp_scaled, Sweep};
use webdiffusion::ops::{self, AttentionLayout, Conv2dParams, MatmulSpec};

#[test]
fn matmul_plain_and_transposed() {
    // (batch, M, K, N): 1-element, odd, exactly one tile, multi-tile, batched.
    // Every variant on the odd and the multi-tile shape; the others add a shape (Sweep::Shape).
    for (b, m, k, n) in [(1, 1, 1, 1), (1, 17, 33, 9), (1, 64, 64, 64), (1, 130, 96, 200), (3, 31, 47, 29)] {
        let case = format!("{b}x{m}x{k}x{n}");
        let sweep = if matches!((m, n), (17, 9) | (130, 200)) { Sweep::Every } else { Sweep::Shape };
        check_op_in(
            sweep,
            "matmul",
            &case,
            &[inp(&[b, m, k]), inp(&[b, k, n])],
            |x| ops::matmul(&x[0], &x[1], None, MatmulSpec::default()),
            |x| x[0].matmul(&x[1]),
        );
        check_op_in(
            sweep,
            "matmul",
            &format!("{case} trans_b"),
            &[inp(&[b, m, k]), inp(&[b, n, k])],
            |x| ops::matmul(&x[0], &x[1], None, MatmulSpec { trans_b: true }),
            |x| x[0].matmul(&x[1].transpose(1, 2)?.contiguous()?),
        );
    }
}

#[test]
fn linear_with_bias_and_shared_weight() {
    // The attention projection of SD 1.5's first block, scaled down: [2, 256, 320] x [320, 320]^T.
    for (rows, k, n) in [(2 * 256, 320, 320), (77, 96, 130), (5, 7, 3)] {
        check_op_in(
            if rows == 512 { Sweep::Shape } else { Sweep::Every },
            "linear",
            &format!("{rows}x{k}->{n}"),
            &[inp(&[2, rows / 2 + rows % 2, k]), inp(&[n, k]), inp(&[n])],
            |x| ops::linear(&x[0], &x[1], Some(&x[2])),
            |x| x[0].broadcast_matmul(&x[1].t()?)?.broadcast_add(&x[2]),
        );
    }
}

fn cpu_conv(x: &[Tensor], stride: usize, padding: usize) -> candle_core::Result<Tensor> {
    let y = x[0].conv2d(&x[1], padding, stride, 1, 1)?;
    match x.get(2) {
        Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
        None => Ok(y),
    }
}

#[test]
fn conv2d_shapes() {
    // (N, Cin, H, W, Cout, K, stride, pad): ResNet 3x3, downsampler, 1x1 shortcut, conv_in with
    // 4 channels, odd spatial sizes, a tall kernel-sized input.
    let cases = [
        (2, 32, 16, 16, 32, 3, 1, 1),
        (1, 32, 16, 16, 32, 3, 2, 1),
        (2, 48, 9, 7, 24, 1, 1, 0),
        (1, 4, 13, 11, 32, 3, 1, 1),
        (1, 7, 3, 3, 5, 3, 1, 0),
        (2, 3, 10, 12, 70, 3, 2, 0),
    ];
    // Every variant on the aligned ResNet conv, the tiny-tail and the odd strided one; the
    // others add a shape (Sweep::Shape).
    for (i, (n, cin, h, w, cout, k, s, p)) in cases.into_iter().enumerate() {
        let case = format!("{n}x{cin}x{h}x{w}->{cout} k{k} s{s} p{p}");
        let cp = Conv2dParams { stride: s, padding: p, pad_end: 0 };
        check_op_in(
            if matches!(i, 0 | 4 | 5) { Sweep::Every } else { Sweep::Shape },
            "conv2d",
            &case,
            &[inp(&[n, cin, h, w]), inp(&[cout, cin, k, k]), inp(&[cout])],
            |x| ops::conv2d(&x[0], &x[1], Some(&x[2]), cp),
            |x| cpu_conv(x, s, p),
        );
    }
    // The residual fused into the epilogue (a ResNet block's skip), with and without a bias,
    // 3x3 and strided.
    // Every variant on the first with a bias; the rest add the no-bias and strided shapes.
    for (n, cin, h, w, cout, k, s, p) in [(2, 32, 9, 7, 24, 3, 1, 1), (1, 8, 10, 12, 5, 3, 2, 1)] {
        let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let cp = Conv2dParams { stride: s, padding: p, pad_end: 0 };
        let first = n == 2;
        check_op_in(
            if first { Sweep::Every } else { Sweep::Shape },
            "conv2d",
            &format!("{n}x{cin}x{h}x{w}->{cout} k{k} s{s} + residual"),
            &[inp(&[n, cin, h, w]), inp(&[cout, cin, k, k]), inp(&[cout]), inp(&[n, cout, ho, wo])],
            |x| ops::conv2d_add(&x[0], &x[1], Some(&x[2]), cp, Some(&x[3])),
            |x| cpu_conv(&x[..3], s, p)? + &x[3],
        );
        check_op_in(
            Sweep::Shape,
            "conv2d",
            &format!("{n}x{cin}x{h}x{w}->{cout} k{k} s{s} no bias + residual"),
            &[inp(&[n, cin, h, w]), inp(&[cout, cin, k, k]), inp(&[n, cout, ho, wo])],
            |x| ops::conv2d_add(&x[0], &x[1], None, cp, Some(&x[2])),
            |x| cpu_conv(&x[..2], s, p)? + &x[2],
        );
    }
    // A bias per image and channel, [N, Cout] (a ResNet block's conv1 bias plus its projected
    // time embedding), alone and with a residual.
    for (n, cin, h, w, cout) in [(2, 32, 9, 7, 24), (3, 4, 5, 6, 6)] {
        let cp = Conv2dParams { stride: 1, padding: 1, pad_end: 0 };
        let per_image = |x: &[Tensor]| x[0].conv2d(&x[1], 1, 1, 1, 1)?.broadcast_add(&x[2].reshape((n, cout, 1, 1))?);
        let sweep = if n == 2 { Sweep::Every } else { Sweep::Shape };
        check_op_in(
            sweep,
            "conv2d",
            &format!("{n}x{cin}x{h}x{w}->{cout} bias per image"),
            &[inp(&[n, cin, h, w]), inp(&[cout, cin, 3, 3]), inp(&[n, cout])],
            |x| ops::conv2d(&x[0], &x[1], Some(&x[2]), cp),
            per_image,
        );
        check_op_in(
            sweep,
            "conv2d",
            &format!("{n}x{cin}x{h}x{w}->{cout} bias per image + residual"),
            &[inp(&[n, cin, h, w]), inp(&[cout, cin, 3, 3]), inp(&[n, cout]), inp(&[n, cout, h, w])],
            |x| ops::conv2d_add(&x[0], &x[1], Some(&x[2]), cp, Some(&x[3])),
            move |x| per_image(&x[..3])? + &x[3],
        );
    }
    let g = common::gpu();
    let t = |shape: &[usize]| webdiffusion::GpuTensor::from_f32(g, &vec![0.0; shape.iter().product()], shape).unwrap();
    for bad in [&[3, 6][..], &[2, 5], &[12]] {
        let err = ops::conv2d(&t(&[2, 4, 5, 5]), &t(&[6, 4, 3, 3]), Some(&t(bad)), Conv2dParams::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("bias {bad:?} for 2 image(s) x 6 output channels")), "{err}");
    }
    check_op(
        "conv2d",
        "no bias",
        &[inp(&[1, 8, 6, 6]), inp(&[16, 8, 3, 3])],
        |x| ops::conv2d(&x[0], &x[1], None, Conv2dParams { stride: 1, padding: 1, pad_end: 0 }),
        |x| cpu_conv(x, 1, 1),
    );
}

#[test]
fn group_norm_with_and_without_silu() {
    // Inputs offset from zero so a one-pass variance would lose precision.
    for (shape, groups, eps) in [(vec![2, 32, 8, 8], 8, 1e-5), (vec![1, 64, 5, 7], 32, 1e-6), (vec![1, 6, 3], 3, 1e-5)]
    {
        let c = shape[1];
        for silu in [false, true] {
            check_op(
                "group_norm",
                &format!("{shape:?} g{groups} silu={silu}"),
                &[inp_scaled(&shape, 3.0, 2.0), inp(&[c]), inp(&[c])],
                |x| ops::group_norm(&x[0], groups, &x[1], &x[2], eps as f32, silu),
                |x| {
                    let gn = candle_nn::GroupNorm::new(x[1].clone(), x[2].clone(), c, groups, eps)?;
                    let y = candle_core::Module::forward(&gn, &x[0])?;
                    if silu {
                        y.silu()
                    } else {
                        Ok(y)
                    }
                },
            );
        }
    }
}

#[test]
fn layer_norm_rows() {
    // Narrow rows (up to 128) take an invocation each, over several workgroups here; wider ones
    // a workgroup each.
    for shape in [vec![2, 7, 96], vec![3, 100, 128], vec![1, 77, 768], vec![2, 129], vec![3, 5]] {
        let d = *shape.last().unwrap();
        check_op(
            "layer_norm",
            &format!("{shape:?}"),
            &[inp_scaled(&shape, 2.0, 1.0), inp(&[d]), inp(&[d])],
            |x| ops::layer_norm(&x[0], &x[1], &x[2], 1e-5),
            |x| candle_nn::ops::layer_norm(&x[0], &x[1], &x[2], 1e-5),
        );
    }
}

#[test]
fn softmax_rows() {
    for (shape, scale) in [(vec![3, 5, 77], 1.0), (vec![4, 1000], 0.125), (vec![2, 1], 3.0)] {
        check_op(
            "softmax",
            &format!("{shape:?} x{scale}"),
            &[inp_scaled(&shape, 4.0, 0.0)],
            |x| ops::softmax(&x[0], scale),
            |x| candle_nn::ops::softmax_last_dim(&(&x[0] * scale as f64)?),
        );
    }
}

/// [B, N, H*D] -> [B, H, N, D] on the CPU.
fn split_heads(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (b, n, hd) = t.dims3()?;
    t.reshape((b, n, heads, hd / heads))?.transpose(1, 2)?.contiguous()
}

#[test]
fn attention_layouts_and_shapes() {
    // (batch, heads, Nq, Nk, D, causal): SD 1.5 self-attention at each width (D = 40, 80, 160),
    // cross-attention over 77 text tokens, SD 2's D = 64, CLIP's causal self-attention.
    let cases = [
        (2, 8, 64, 64, 40, false),
        (2, 8, 100, 77, 40, false),
        (1, 8, 33, 33, 80, false),
        (1, 8, 20, 77, 160, false),
        (2, 5, 70, 70, 64, false),
        (2, 12, 77, 77, 64, true),
        (1, 1, 1, 1, 8, false),
    ];
    for (b, h, nq, nk, d, causal) in cases {
        check_attention(&format!("b{b} h{h} {nq}x{nk} d{d} causal={causal}"), b, h, nq, nk, d, causal);
    }
}

/// Split and Merged attention of one case against the CPU reference.
fn check_attention(case: &str, b: usize, h: usize, nq: usize, nk: usize, d: usize, causal: bool) {
    check_op(
        "attention",
        &format!("{case} split"),
        &[inp_scaled(&[b, h, nq, d], 2.0, 0.0), inp(&[b, h, nk, d]), inp(&[b, h, nk, d])],
        |x| ops::attention(&x[0], &x[1], &x[2], h, AttentionLayout::Split, causal, None),
        |x| cpu_attention(&x[0], &x[1], &x[2], causal),
    );
    check_op(
        "attention",
        &format!("{case} merged"),
        &[inp_scaled(&[b, nq, h * d], 2.0, 0.0), inp(&[b, nk, h * d]), inp(&[b, nk, h * d])],
        |x| ops::attention(&x[0], &x[1], &x[2], h, AttentionLayout::Merged, causal, None),
        |x| {
            let (q, k, v) = (split_heads(&x[0], h)?, split_heads(&x[1], h)?, split_heads(&x[2], h)?);
            let o = cpu_attention(&q, &k, &v, causal)?;
            o.transpose(1, 2)?.reshape((b, nq, h * d))
        },
    );
}

#[test]
fn attention_long_sequences() {
    // Regression: lavapipe ends every loop of an invocation once 65535 iterations (all loops
    // together) have run, and the kernel used to need ~130 per key at D = 64: N = 1024 came back
    // ~98% zeros. Self-attention over 1024 tokens (SD's 32x32 level) at SD 1.5's D = 40 and
    // SD 2's D = 64, two heads to keep lavapipe's time down.
    for d in [40, 64] {
        check_attention(&format!("h2 1024x1024 d{d}"), 1, 2, 1024, 1024, d, false);
    }
}

#[test]
fn attention_key_chunks() {
    // More keys than one dispatch takes: the softmax state is carried to the next dispatch. The
    // first dispatch uses its whole loop budget, so an estimate (`attention_keys_per_dispatch`)
    // that drifts from the shader fails here on lavapipe. U-Net head dims, the VAE's 512 (column
    // slices), and an odd one (zero-padded vec4s), with two heads.
    for (h, d) in [(1, 40), (1, 64), (1, 160), (1, 512), (2, 37)] {
        let nk = ops::attention_keys_per_dispatch(d) + 37;
        check_attention(&format!("h{h} 50x{nk} d{d}"), 1, h, 50, nk, d, false);
    }
    // Causal with three chunks: the later ones hold no key of this workgroup's rows and must
    // pass the state through untouched.
    let nk = 2 * ops::attention_keys_per_dispatch(160) + 37;
    check_attention(&format!("causal 50x{nk} d160"), 1, 1, 50, nk, 160, true);
}

#[test]
fn activations() {
    let shapes = [vec![1000], vec![3, 333], vec![1]];
    for shape in &shapes {
        let case = format!("{shape:?}");
        let x = [inp_scaled(shape, 6.0, 0.0)];
        check_op("silu", &case, &x, |x| ops::silu(&x[0]), |x| x[0].silu());
        check_op("gelu", &case, &x, |x| ops::gelu(&x[0]), |x| x[0].gelu_erf());
        check_op(
            "gelu_quick",
            &case,
            &x,
            |x| ops::gelu_quick(&x[0]),
            |x| &x[0] * candle_nn::ops::sigmoid(&(&x[0] * 1.702)?)?,
        );
        check_op("affine", &case, &x, |x| ops::affine(&x[0], 0.18215, -0.5), |x| x[0].affine(0.18215, -0.5));
        check_op("relu", &case, &x, |x| ops::relu(&x[0]), |x| x[0].relu());
        // Beyond where a naive exp(2x) tanh overflows, too.
        let wide = [inp_scaled(shape, 400.0, 0.0)];
        for x in [&x, &wide] {
            check_op(
                "soft_clamp",
                &case,
                x,
                |x| ops::soft_clamp(&x[0], 3.0),
                |x| x[0].affine(1.0 / 3.0, 0.0)?.tanh()? * 3.0,
            );
        }
    }
}

#[test]
fn geglu_gating() {
    for shape in [vec![2, 10, 96], vec![1, 77, 2 * 1280 / 8], vec![3, 2]] {
        check_op(
            "geglu",
            &format!("{shape:?}"),
            &[inp_scaled(&shape, 3.0, 0.0)],
            |x| ops::geglu(&x[0]),
            |x| {
                let halves = x[0].chunk(2, D::Minus1)?;
                &halves[0] * halves[1].gelu_erf()?
            },
        );
    }
}

#[test]
fn broadcasting_add_and_mul() {
    let cases: [(Vec<usize>, Vec<usize>); 6] = [
        (vec![2, 3, 4, 5], vec![2, 3, 4, 5]),
        (vec![2, 32, 6, 6], vec![1, 32, 1, 1]),
        (vec![2, 320, 7], vec![2, 320, 1]),
        (vec![4, 5], vec![5]),
        (vec![2, 1, 4], vec![3, 1]),
        (vec![2, 3, 4, 5, 6], vec![3, 1, 1, 6]),
    ];
    for (a, b) in cases {
        let case = format!("{a:?} {b:?}");
        let x = [inp(&a), inp(&b)];
        check_op("add", &case, &x, |x| ops::add(&x[0], &x[1]), |x| x[0].broadcast_add(&x[1]));
        check_op("mul", &case, &x, |x| ops::mul(&x[0], &x[1]), |x| x[0].broadcast_mul(&x[1]));
    }
}

#[test]
fn data_movement() {
    check_op(
        "upsample",
        "2x3x5x7",
        &[inp(&[2, 3, 5, 7])],
        |x| ops::upsample_nearest2x(&x[0]),
        |x| x[0].upsample_nearest2d(10, 14),
    );
    for (dim, a, b) in
        [(1, vec![2, 3, 4, 5], vec![2, 6, 4, 5]), (0, vec![1, 4], vec![3, 4]), (3, vec![2, 2, 2, 3], vec![2, 2, 2, 1])]
    {
        check_op(
            "concat",
            &format!("dim{dim} {a:?} {b:?}"),
            &[inp(&a), inp(&b)],
            |x| ops::concat(&[&x[0], &x[1]], dim),
            |x| Tensor::cat(&[&x[0], &x[1]], dim),
        );
    }
    let perms: [(Vec<usize>, Vec<usize>); 4] = [
        (vec![2, 3, 4, 5], vec![0, 2, 3, 1]),
        (vec![2, 3, 4, 5], vec![0, 2, 1, 3]),
        (vec![7, 9], vec![1, 0]),
        (vec![2, 3, 4, 5, 6], vec![0, 1, 3, 2, 4]),
    ];
    for (shape, perm) in perms {
        check_op(
            "permute",
            &format!("{shape:?} {perm:?}"),
            &[inp(&shape)],
            |x| ops::permute(&x[0], &perm),
            |x| x[0].permute(perm.as_slice())?.contiguous(),
        );
    }
}

#[test]
fn embedding_gather() {
    let ids = [0u32, 49, 3, 3, 17, 48];
    check_op(
        "embedding",
        "50x16",
        &[inp(&[50, 16])],
        |x| ops::embedding(&x[0], &ids),
        |x| x[0].index_select(&Tensor::new(&ids[..], &Device::Cpu)?, 0),
    );
    let table = webdiffusion::GpuTensor::from_f32(common::gpu(), &[0.0; 8], &[4, 2]).unwrap();
    let err = ops::embedding(&table, &[4]).unwrap_err().to_string();
    assert!(err.contains("id 4 outside a vocabulary of 4"), "{err}");
}

/// diffusers' get_timestep_embedding, step by step, in candle.
fn cpu_timestep(t: &[f32], dim: usize, flip: bool, shift: f64) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let exponent = (Tensor::arange(0u32, half as u32, &Device::Cpu)?.to_dtype(CDType::F32)? * -(10000f64.ln()))?;
    // A true f32 division, as torch does (candle's scalar division multiplies by the inverse).
    let denom = Tensor::new(&[(half as f64 - shift) as f32], &Device::Cpu)?;
    let freqs = exponent.broadcast_div(&denom)?.exp()?;
    let ts = Tensor::from_slice(t, (t.len(), 1), &Device::Cpu)?;
    let emb = ts.broadcast_mul(&freqs.unsqueeze(0)?)?;
    let (s, c) = (emb.sin()?, emb.cos()?);
    if flip {
        Tensor::cat(&[c, s], 1)
    } else {
        Tensor::cat(&[s, c], 1)
    }
}

#[test]
fn timestep_embedding_matches_diffusers_formula() {
    let t = [0.0, 1.0, 250.0, 500.0, 999.0];
    for (dim, flip, shift) in [(320, true, 0.0), (32, false, 1.0)] {
        check_op(
            "timestep_embedding",
            &format!("dim{dim} flip={flip}"),
            // The one input only carries the dtype under test.
            &[inp(&[1])],
            |x| ops::timestep_embedding(common::gpu(), &t, dim, flip, shift as f32, x[0].dtype()),
            |_| cpu_timestep(&t, dim, flip, shift),
        );
    }
}

#[test]
fn conv2d_asymmetric_end_padding() {
    // The VAE encoder's downsampler: pad (0, 1, 0, 1), then 3x3 stride 2 without padding.
    let cp = Conv2dParams { stride: 2, padding: 0, pad_end: 1 };
    check_op(
        "conv2d",
        "vae downsample 2x8x9x9",
        &[inp(&[2, 8, 9, 9]), inp(&[8, 8, 3, 3]), inp(&[8])],
        |x| ops::conv2d(&x[0], &x[1], Some(&x[2]), cp),
        |x| {
            let padded = x[0].pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?;
            cpu_conv(&[padded, x[1].clone(), x[2].clone()], 2, 0)
        },
    );
}

#[test]
fn narrow_and_clamp() {
    for (dim, start, len) in [(1, 4, 4), (0, 1, 1), (2, 3, 2)] {
        check_op(
            "permute",
            &format!("narrow d{dim} {start}+{len}"),
            &[inp(&[2, 8, 5])],
            |x| ops::narrow(&x[0], dim, start, len),
            |x| x[0].narrow(dim, start, len)?.contiguous(),
        );
    }
    check_op(
        "affine",
        "clamp",
        &[inp_scaled(&[500], 40.0, 0.0)],
        |x| ops::clamp(&x[0], -30.0, 20.0),
        |x| x[0].clamp(-30f32, 20f32),
    );
}

/// The VAE decoder's real sizes: wide groups, a 512-dim single-head attention, 64x64 convs.
/// (A random real-size VAE decoded differently from run to run: the 512-wide head overflowed the
/// per-thread arrays; it is now split into column slices.)
#[test]
fn vae_sized_ops() {
    for (shape, groups) in [(vec![1, 128, 64, 64], 32), (vec![1, 512, 16, 16], 32), (vec![1, 256, 32, 32], 32)] {
        let c = shape[1];
        check_op(
            "group_norm",
            &format!("{shape:?} g{groups}"),
            &[inp_scaled(&shape, 3.0, 2.0), inp(&[c]), inp(&[c])],
            |x| ops::group_norm(&x[0], groups, &x[1], &x[2], 1e-6, true),
            |x| {
                let gn = candle_nn::GroupNorm::new(x[1].clone(), x[2].clone(), c, groups, 1e-6)?;
                candle_core::Module::forward(&gn, &x[0])?.silu()
            },
        );
    }
    // 256 keys: more than the kernel's loops used to survive on lavapipe at D = 512.
    for (n, d) in [(64, 512), (256, 512)] {
        check_op(
            "attention",
            &format!("vae mid attention {n}x{d}"),
            &[inp_scaled(&[1, n, d], 2.0, 0.0), inp(&[1, n, d]), inp(&[1, n, d])],
            |x| ops::attention(&x[0], &x[1], &x[2], 1, AttentionLayout::Merged, false, None),
            |x| {
                let (q, k, v) = (split_heads(&x[0], 1)?, split_heads(&x[1], 1)?, split_heads(&x[2], 1)?);
                let o = cpu_attention(&q, &k, &v, false)?;
                o.transpose(1, 2)?.reshape((1, n, d))
            },
        );
    }
    // The size is what this adds: conv2d_shapes sweeps the variants.
    let cp = Conv2dParams { stride: 1, padding: 1, pad_end: 0 };
    check_op_in(
        Sweep::Shape,
        "conv2d",
        "1x128x64x64->128 k3",
        &[inp(&[1, 128, 64, 64]), inp(&[128, 128, 3, 3]), inp(&[128])],
        |x| ops::conv2d(&x[0], &x[1], Some(&x[2]), cp),
        |x| cpu_conv(x, 1, 1),
    );
}
