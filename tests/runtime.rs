//! The runtime under the ops: batching across submits, buffer reuse without hazards, the
//! pipeline cache, split storage for tensors over the binding limit, and clear errors.

mod common;

use candle_core::{Device, Tensor};
use common::{compare, gpu, to_vec, tolerance};
use webdiffusion::gpu::{DType, Gpu, GpuOptions, GpuTensor, KernelChoice, KernelPolicy};
use webdiffusion::ops::{self, MatmulSpec};
use webdiffusion::random::random_values;
use webdiffusion::Error;

#[test]
fn long_chains_span_many_submits() {
    // 300 dispatches: several full batches, so the uniform slots are rewritten between submits.
    let data = random_values(11, 1000);
    let mut t = GpuTensor::from_f32(gpu(), &data, &[1000]).unwrap();
    let before = gpu().stats();
    for i in 0..300 {
        t = ops::affine(&t, 1.0, if i % 2 == 0 { 0.5 } else { -0.25 }).unwrap();
    }
    let got = to_vec(&t);
    let want: Vec<f32> = data.iter().map(|x| x + 150.0 * 0.5 - 150.0 * 0.25).collect();
    compare("300 chained affines", tolerance("affine", DType::F32), &got, &want);
    let after = gpu().stats();
    assert!(after.dispatches - before.dispatches >= 300);
    assert!(after.submits - before.submits >= 300 / webdiffusion::gpu::batch::MAX_DISPATCHES as u64);
}

#[test]
fn pooled_buffer_reuse_keeps_queue_order() {
    // `b` is recorded (not submitted) reading `a`; `a` is freed and its buffer handed to the
    // upload of `c`. The upload must not overtake the pending read.
    let own = pollster::block_on(Gpu::new(&GpuOptions::default())).unwrap();
    let a_vals = vec![1.0f32; 4096];
    let a = GpuTensor::from_f32(&own, &a_vals, &[4096]).unwrap();
    own.flush();
    let b = ops::affine(&a, 2.0, 0.0).unwrap();
    drop(a);
    let live_before = own.stats().bytes_live;
    let c = GpuTensor::from_f32(&own, &vec![7.0f32; 4096], &[4096]).unwrap();
    assert_eq!(own.stats().bytes_pooled, 0, "the freed buffer was reused");
    assert!(own.stats().bytes_live > live_before);
    assert!(to_vec(&b).iter().all(|&x| x == 2.0));
    assert!(to_vec(&c).iter().all(|&x| x == 7.0));
}

#[test]
fn pipelines_are_cached_per_variant() {
    let own = pollster::block_on(Gpu::new(&GpuOptions::default())).unwrap();
    let x = GpuTensor::from_f32(&own, &[1.0, -2.0, 3.0], &[3]).unwrap();
    ops::silu(&x).unwrap();
    let n = own.cached_pipelines();
    ops::silu(&x).unwrap();
    ops::silu(&x.reshape(&[1, 3]).unwrap()).unwrap();
    assert_eq!(own.cached_pipelines(), n, "same variant, no new pipeline");
    ops::gelu(&x).unwrap();
    assert_eq!(own.cached_pipelines(), n + 1);
}

/// The kernels each op ran, by the profile's labels (the pipeline key is the label).
fn kernels_run(policy: KernelPolicy) -> Vec<String> {
    let own =
        pollster::block_on(Gpu::new(&GpuOptions { kernels: policy, profile: true, ..GpuOptions::default() })).unwrap();
    let x = GpuTensor::from_f32(&own, &random_values(1, 2 * 8 * 6 * 6), &[2, 8, 6, 6]).unwrap();
    let w = GpuTensor::from_f32(&own, &random_values(2, 8 * 8 * 9), &[8, 8, 3, 3]).unwrap();
    to_vec(&ops::conv2d(&x, &w, None, ops::Conv2dParams { stride: 1, padding: 1, pad_end: 0 }).unwrap());
    let a = GpuTensor::from_f32(&own, &random_values(3, 5 * 16), &[5, 16]).unwrap();
    let b = GpuTensor::from_f32(&own, &random_values(4, 12 * 16), &[12, 16]).unwrap();
    to_vec(&ops::linear(&a, &b, None).unwrap());
    own.profile().unwrap().into_iter().map(|(label, _, _)| label).collect()
}

#[test]
fn the_kernel_policy_picks_each_ops_variant() {
    let has = |labels: &[String], prefix: &str| labels.iter().any(|l| l.starts_with(prefix));
    let tiled = kernels_run(KernelPolicy {
        matmul: KernelChoice::Tiled,
        conv2d: KernelChoice::Tiled,
        ..KernelPolicy::default()
    });
    assert!(
        has(&tiled, "conv2d[")
            && has(&tiled, "matmul[")
            && !has(&tiled, "conv2d_direct")
            && !has(&tiled, "matmul_direct"),
        "{tiled:?}"
    );
    let direct = kernels_run(KernelPolicy {
        matmul: KernelChoice::Direct { block: (4, 1) },
        conv2d: KernelChoice::Direct { block: (8, 2) },
        ..KernelPolicy::default()
    });
    assert!(
        has(&direct, "conv2d_direct[")
            && has(&direct, "matmul_direct[")
            && !has(&direct, "conv2d[")
            && !has(&direct, "matmul["),
        "{direct:?}"
    );
}

/// The norms and softmax reduce through subgroups exactly where the device has them (lavapipe
/// does) unless the policy turns them off; both variants agree with each other closely.
#[test]
fn reductions_use_subgroups_where_the_device_has_them() {
    let run = |subgroups: bool| {
        let kernels = KernelPolicy { subgroups, ..KernelPolicy::default() };
        let own = pollster::block_on(Gpu::new(&GpuOptions { kernels, ..GpuOptions::default() })).unwrap();
        let x = GpuTensor::from_f32(&own, &random_values(5, 2 * 32 * 7 * 5), &[2, 32, 7, 5]).unwrap();
        let (g, b) = (
            GpuTensor::from_f32(&own, &[1.5; 32], &[32]).unwrap(),
            GpuTensor::from_f32(&own, &[0.25; 32], &[32]).unwrap(),
        );
        let mut out = to_vec(&ops::group_norm(&x, 8, &g, &b, 1e-5, true).unwrap());
        let rows = x.reshape(&[70, 32]).unwrap();
        // Rows over 128 wide: narrower ones take an invocation each, with no reduction to share.
        let (wide, gw, bw) = (
            x.reshape(&[14, 160]).unwrap(),
            GpuTensor::from_f32(&own, &[1.5; 160], &[160]).unwrap(),
            GpuTensor::from_f32(&own, &[0.25; 160], &[160]).unwrap(),
        );
        out.extend(to_vec(&ops::layer_norm(&wide, &gw, &bw, 1e-5).unwrap()));
        out.extend(to_vec(&ops::softmax(&rows, 0.5).unwrap()));
        (own.caps().subgroups, own.pipeline_labels(), out)
    };
    let (has, on, a) = run(true);
    let (_, off, b) = run(false);
    for op in ["group_norm[", "layer_norm[", "softmax["] {
        let want = format!(",SUBGROUPS={}", has as u32);
        assert!(on.iter().any(|l| l.starts_with(op) && l.contains(&want)), "{op}{want} not in {on:?}");
        assert!(
            off.iter().any(|l| l.starts_with(op) && l.contains(",SUBGROUPS=0")),
            "{op} without subgroups not in {off:?}"
        );
    }
    let err = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(err <= 1e-5, "subgroup and workgroup reductions differ by {err}");
}

fn capped_gpu(cap: u64) -> Gpu {
    let options = GpuOptions { binding_cap: Some(cap), ..GpuOptions::default() };
    pollster::block_on(Gpu::new(&options)).unwrap()
}

#[test]
fn split_weights_matmul_and_embedding() {
    // A 64 KiB binding cap splits a [300, 100] f32 weight (117 KiB) over several bindings, as the
    // 128 MiB cap of real browsers splits SD's 152 MB token embedding.
    let g = capped_gpu(64 * 1024);
    let (m, k, n) = (37, 100, 300);
    let (x, w, b) = (random_values(1, m * k), random_values(2, n * k), random_values(3, n));
    let wt = GpuTensor::from_f32(&g, &w, &[n, k]).unwrap();
    assert!(wt.num_chunks() >= 2, "{wt:?}");
    let y = ops::matmul(
        &GpuTensor::from_f32(&g, &x, &[m, k]).unwrap(),
        &wt,
        Some(&GpuTensor::from_f32(&g, &b, &[n]).unwrap()),
        MatmulSpec { trans_b: true },
    )
    .unwrap();
    let cpu = |v: &[f32], s: &[usize]| Tensor::from_slice(v, s, &Device::Cpu).unwrap();
    let want = cpu(&x, &[m, k]).matmul(&cpu(&w, &[n, k]).t().unwrap()).unwrap().broadcast_add(&cpu(&b, &[n])).unwrap();
    let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    compare("split matmul", tolerance("matmul", DType::F32), &to_vec(&y), &want);

    let ids = [0u32, 299, 150, 163, 164, 1];
    let e = ops::embedding(&wt, &ids).unwrap();
    let want: Vec<f32> = ids.iter().flat_map(|&i| w[i as usize * k..(i as usize + 1) * k].to_vec()).collect();
    assert_eq!(to_vec(&e), want);
    // Whole-tensor readback of a split tensor returns all chunks in order.
    assert_eq!(to_vec(&wt), w);

    // Activations must fit one binding; the error says what and by how much.
    let err = ops::silu(&wt).unwrap_err();
    assert!(matches!(err, Error::BindingTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("65536"), "{err}");
}

#[test]
fn shape_and_dtype_errors_are_clear() {
    let a = GpuTensor::from_f32(gpu(), &[0.0; 6], &[2, 3]).unwrap();
    let b = GpuTensor::from_f32(gpu(), &[0.0; 8], &[4, 2]).unwrap();
    let err = ops::matmul(&a, &b, None, MatmulSpec::default()).unwrap_err().to_string();
    assert!(err.contains("inner dims differ"), "{err}");
    let err = ops::add(&a, &b).unwrap_err().to_string();
    assert!(err.contains("cannot broadcast [2, 3] with [4, 2]"), "{err}");
    let err = GpuTensor::from_f32(gpu(), &[0.0; 5], &[2, 3]).unwrap_err().to_string();
    assert!(err.contains("20 bytes for [2, 3] f32"), "{err}");
    let ids = GpuTensor::from_u32(gpu(), &[1, 2], &[2]).unwrap();
    assert!(matches!(ops::silu(&ids), Err(Error::DType { .. })));
    assert!(a.reshape(&[4, 2]).is_err());
}

/// Trimming the pool between recording and submitting: the input of a recorded (not yet
/// submitted) dispatch is freed into the pool and the pool trimmed before the result is read.
/// The recorded command must still run on its input (buffers are released, never destroyed).
#[test]
fn trimming_the_pool_keeps_buffers_of_recorded_work() {
    let g = common::gpu();
    let x = GpuTensor::from_f32(g, &[1.0, 2.0, 3.0, 4.0], &[4]).unwrap();
    let h = webdiffusion::ops::affine(&x, 2.0, 1.0).unwrap();
    let y = webdiffusion::ops::affine(&h, 1.0, 0.5).unwrap();
    drop(h); // recorded as y's input, now back in the pool
    g.trim_pool();
    assert_eq!(pollster::block_on(y.to_vec_f32()).unwrap(), [3.5, 5.5, 7.5, 9.5]);
}

#[test]
fn uploading_rows_a_few_at_a_time_equals_one_upload() {
    // 37 rows of 24 f32 written 3 rows at a time: every part lands at its row.
    let g = gpu();
    let (rows, cols) = (37, 24);
    let x = random_values(3, rows * cols);
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut calls = 0;
    let t = GpuTensor::from_rows(g, &[rows, cols], DType::F32, 3 * cols * 4, &mut |r, n| {
        calls += 1;
        Ok(bytes[r * cols * 4..(r + n) * cols * 4].to_vec())
    })
    .unwrap();
    assert!(calls >= 13, "{calls} parts");
    let whole = GpuTensor::from_bytes(g, &bytes, &[rows, cols], DType::F32).unwrap();
    assert_eq!(to_vec(&t), x);
    assert_eq!(to_vec(&whole), x);
}
