//! The denoising loop against diffusers, step by step, on the tiny fixtures: the same initial
//! latents and noise draws (recorded by `tools/reference/make_pipeline_fixtures.py`) must give
//! the same per-step latents, final latents and PNG pixels.

mod common;

use std::collections::VecDeque;
use std::path::PathBuf;

use serde_json::Value;
use webdiffusion::gpu::{DType, GemmTile, Gpu, GpuOptions, KernelChoice, KernelPolicy};
use webdiffusion::models::loader::{self, DirSource};
use webdiffusion::pipeline::generate::{InitImage, Recorded, Request, StableDiffusion};
use webdiffusion::pipeline::prompt::PromptSyntax;
use webdiffusion::pipeline::schedule::SchedulerConfig;
use webdiffusion::pipeline::schedulers::{Scheduler, SchedulerKind};

fn dir(model: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(model)
}

struct Case {
    tensors: Vec<u8>,
}

impl Case {
    fn f32(&self, name: &str) -> Option<(Vec<usize>, Vec<f32>)> {
        let st = safetensors::SafeTensors::deserialize(&self.tensors).unwrap();
        let t = st.tensor(name).ok()?;
        let v = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        Some((t.shape().to_vec(), v))
    }
    fn u8(&self, name: &str) -> Vec<u8> {
        let st = safetensors::SafeTensors::deserialize(&self.tensors).unwrap();
        st.tensor(name).unwrap().data().to_vec()
    }
}

/// Timesteps equal diffusers' exactly, except DPM++ SDE's midpoints: diffusers maps those back
/// to timesteps through numpy's float32 `log` of the sigma table, whose SIMD kernel differs from
/// a correctly rounded log in about 1 entry in 5 (by an ulp; it also depends on the CPU numpy
/// runs on), which moves a fractional timestep by up to ~1e-6 of its value.
fn assert_timesteps(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (&g, &w) in got.iter().zip(want) {
        let exact = w.fract() == 0.0 || w.fract() == 0.5 || w.fract() == 0.25 || w.fract() == 0.75;
        let ok = if exact { g == w } else { (g - w).abs() <= 2e-6 * w.abs().max(1.0) };
        assert!(ok, "{what}: {got:?} vs {want:?}");
    }
}

/// Each step's latents within 1e-4 of the reference's largest value (the bound);
/// returns the worst relative error.
fn assert_steps(seen: &[(f32, Vec<f32>)], step_latents: &[f32], what: &str) -> f32 {
    let mut worst = 0f32;
    for (i, (_, got)) in seen.iter().enumerate() {
        let want = &step_latents[i * got.len()..(i + 1) * got.len()];
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = got.iter().zip(want).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
        worst = worst.max(err / scale);
        assert!(err <= 1e-4 * scale, "{what} step {i}: max |err| {err:e}, max |ref| {scale}");
    }
    worst
}

/// Runs every txt2img case whose scheduler we implement and that `pick` takes, on `gpu`;
/// returns how many runs it made.
fn run_cases(model: &str, gpu: &Gpu, pick: impl Fn(&str) -> bool) -> usize {
    let src = DirSource(dir(model));
    let mut sd = StableDiffusion::load(
        &src,
        gpu,
        &loader::LoadOptions { with_encoder: true, ..loader::LoadOptions::new(DType::F32) },
    )
    .unwrap();
    let model_config = sd.scheduler_config.clone();
    let cases: Value = serde_json::from_slice(&std::fs::read(dir(model).join("pipeline/cases.json")).unwrap()).unwrap();
    let mut ran = 0;
    for case in cases["cases"].as_array().unwrap() {
        let name = case["case"].as_str().unwrap();
        if !pick(name) {
            continue;
        }
        let karras = case["scheduler_config"]["use_karras_sigmas"].as_bool() == Some(true);
        let Some(kind) = SchedulerKind::for_class(case["scheduler_class"].as_str().unwrap(), karras) else { continue };
        // StableDiffusionImg2ImgPipeline or StableDiffusionXLImg2ImgPipeline.
        let img2img = case["pipeline"].as_str().is_some_and(|p| p.ends_with("Img2ImgPipeline"));
        let c =
            Case { tensors: std::fs::read(dir(model).join("pipeline").join(case["file"].as_str().unwrap())).unwrap() };
        // Configured from the model's own scheduler_config.json, as `from_config` would be, the
        // schedule must be the one diffusers ran (cases without overrides).
        let no_overrides = case["scheduler_overrides"].as_object().is_some_and(|o| o.is_empty());
        let own_config = case["scheduler_config_source"].as_str().is_some_and(|s| s.starts_with("tests/fixtures"));
        if no_overrides && own_config {
            let s =
                Scheduler::new(kind, &model_config, case["num_inference_steps"].as_u64().unwrap() as usize).unwrap();
            let key = if img2img { "scheduler_timesteps" } else { "timesteps" };
            let want: Vec<f32> = case[key].as_array().unwrap().iter().map(|t| t.as_f64().unwrap() as f32).collect();
            assert_timesteps(s.timesteps(), &want, &format!("{model} {name}: schedule from the model's config"));
        }
        sd.scheduler_config = SchedulerConfig::from_json(&case["scheduler_config"].to_string()).unwrap();
        let init = img2img.then(|| InitImage {
            rgb: c.u8("init_image"),
            strength: case["strength"].as_f64().unwrap() as f32,
            mask: None,
        });
        let req = Request {
            init,
            prompt: case["prompt"].as_str().unwrap().into(),
            negative_prompt: case["negative_prompt"].as_str().map(Into::into),
            steps: case["num_inference_steps"].as_u64().unwrap() as usize,
            guidance: case["guidance_scale"].as_f64().unwrap() as f32,
            width: case["width"].as_u64().unwrap() as usize,
            height: case["height"].as_u64().unwrap() as usize,
            scheduler: kind,
            prompt_syntax: PromptSyntax::A1111,
            eta: case["eta"].as_f64().unwrap_or(0.0) as f32,
        };
        let latents = c.f32("latents").map(|l| l.1);
        if let Some((shape, w)) = c.f32("w_embedding") {
            let ours = webdiffusion::pipeline::generate::guidance_embedding(req.guidance - 1.0, shape[1]);
            let err = ours.iter().zip(&w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= 1e-5, "{model} {name}: guidance embedding off by {err}");
        }
        // Two cases also run their prompt as three identical BREAK chunks: the U-Net then attends
        // over 231 context tokens (the negative prompt padded to three empty chunks) which hold
        // each key three times, which softmax attention cannot tell from once, so diffusers'
        // 77-token run is the reference for the long-context path too.
        let mut prompts = vec![req.prompt.clone()];
        // tiny-sdxl: both encoders chunk alike and the pooled embedding comes from the first chunk.
        if ["euler_2", "dpmpp2m_karras_2", "eulera_turbo_1", "dpmpp2m_g5_3"].contains(&name) {
            prompts.push(format!("{p} BREAK {p} BREAK {p}", p = req.prompt));
        }
        for prompt in prompts {
            let req = Request { prompt, ..req.clone() };
            let (nshape, noise) = c.f32("noise").unwrap();
            let per = nshape[1..].iter().product::<usize>();
            let draws: VecDeque<Vec<f32>> = noise.chunks(per.max(1)).take(nshape[0]).map(|d| d.to_vec()).collect();
            let (_, step_latents) = c.f32("step_latents").unwrap();
            let (_, want_ts) = c.f32("timesteps").unwrap();
            let mut steps_seen = Vec::new();
            let out = pollster::block_on(sd.generate(&req, latents.clone(), &mut Recorded(draws), &mut |s| {
                steps_seen.push((s.timestep, s.latents.to_vec()));
                true
            }))
            .unwrap_or_else(|e| panic!("{model} {name}: {e}"));
            let seen: Vec<f32> = steps_seen.iter().map(|s| s.0).collect();
            assert_timesteps(&seen, &want_ts, &format!("{model} {name}: timesteps"));
            // Per-step and final latents: relative error <= 1e-4 of the largest value (the bound).
            let worst = assert_steps(&steps_seen, &step_latents, &format!("{model} {name}"));
            let (_, fin) = c.f32("final_latents").unwrap();
            let ferr = out.latents.iter().zip(&fin).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
            let want_rgb = c.u8("image");
            let px_err = out.rgb.iter().zip(&want_rgb).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
            eprintln!("{model} {name} ({} prompt chars): max rel step err {worst:.2e}, final |err| {ferr:.2e}, image max diff {px_err}/255", req.prompt.len());
            assert!(px_err <= 1, "{model} {name}: image differs by {px_err}/255");
            ran += 1;
        }
    }
    ran
}

#[test]
fn txt2img_and_img2img_match_diffusers_step_by_step() {
    let ran: usize = ["tiny-sd1", "tiny-sd2", "tiny-lcm"].iter().map(|m| run_cases(m, common::gpu(), |_| true)).sum();
    assert_eq!(ran, 84 + 4, "every fixture case runs (two of each SD model's twice)");
}

/// The tiled kernels real GPUs run, forced on the CPU adapter (which by default runs the direct
/// ones), hold the same bounds: each tile shape on one model, over a sampler of each family and
/// img2img. A device of its own, so the shared one's policy stays as the other tests expect.
/// SDXL-Turbo as it ships (EulerAncestral, trailing, 1 step, guidance 0), SDXL with guidance 5
/// and DPM++ 2M, whose missing negative prompt diffusers zeroes (`force_zeros_for_empty_prompt`),
/// and SDXL-Turbo's img2img (2 steps at strength 0.5): both text encoders, the added
/// conditioning, the f32 VAE's decode and encode.
#[test]
fn sdxl_txt2img_and_img2img_match_diffusers_step_by_step() {
    // Three cases, two of them also as three BREAK chunks.
    assert_eq!(run_cases("tiny-sdxl", common::gpu(), |_| true), 5);
}

#[test]
fn the_gpu_tiled_kernels_forced_match_diffusers_too() {
    let mut ran = 0;
    for (model, tile) in
        [("tiny-sd1", GemmTile::T64x64), ("tiny-sd2", GemmTile::T128x64), ("tiny-lcm", GemmTile::T128x128)]
    {
        let kernels = KernelPolicy {
            matmul: KernelChoice::Tile(tile),
            conv2d: KernelChoice::Tile(tile),
            ..KernelPolicy::default()
        };
        let gpu = pollster::block_on(Gpu::new(&GpuOptions { kernels, ..common::options() })).unwrap();
        ran += run_cases(model, &gpu, |name| {
            ["euler_2", "dpmpp2m_karras_2", "img2img_ddim", "lcm_4", "lcm_pipe_4"].iter().any(|c| name.starts_with(c))
        });
        let used = gpu.pipeline_labels();
        let (tm, tn) = tile.dims();
        let this_tile = format!(",TM={tm},TN={tn},");
        for op in ["matmul[", "conv2d["] {
            assert!(
                used.iter().any(|l| l.starts_with(op) && l.contains(&this_tile)),
                "{model}: no {op}{this_tile} in {used:?}"
            );
        }
        assert!(!used.iter().any(|l| l.contains("_direct[")), "{model}: a direct kernel ran: {used:?}");
    }
    assert!(ran >= 6, "only {ran} forced-tile runs");
}

#[test]
fn cancelling_stops_between_steps() {
    let sd = StableDiffusion::load(&DirSource(dir("tiny-sd2")), common::gpu(), &loader::LoadOptions::new(DType::F32))
        .unwrap();
    let req = Request { steps: 5, ..small_request() };
    let mut calls = Vec::new();
    let mut rng = webdiffusion::pipeline::rng::NormalRng::new(1);
    let err = pollster::block_on(sd.generate(&req, None, &mut rng, &mut |s| {
        calls.push((s.index, s.total, s.latents.len()));
        s.index < 1
    }))
    .err()
    .expect("cancelled");
    assert!(matches!(err, webdiffusion::Error::Cancelled), "{err}");
    assert_eq!(calls, [(0, 5, 256), (1, 5, 256)]);
    // img2img without a loaded encoder is a clear error, not a panic.
    let req = Request { init: Some(InitImage { rgb: vec![0; 64 * 64 * 3], strength: 0.5, mask: None }), ..req };
    let err = pollster::block_on(sd.generate(&req, None, &mut rng, &mut |_| true)).err().unwrap().to_string();
    assert!(err.contains("without the VAE encoder"), "{err}");
}

/// A batch of prompts gives each image what a lone generation with its noise gives: batching
/// only changes how many rows the U-Net runs at once (Euler ancestral also draws per-step noise,
/// which must stay with its own image).
#[test]
fn a_batch_equals_its_generations_one_by_one() {
    use webdiffusion::pipeline::generate::NoiseSource;
    use webdiffusion::pipeline::rng::NormalRng;
    let sd = StableDiffusion::load(&DirSource(dir("tiny-sd1")), common::gpu(), &loader::LoadOptions::new(DType::F32))
        .unwrap();
    let req = |prompt: &str, negative: &str| Request {
        prompt: prompt.into(),
        negative_prompt: Some(negative.into()),
        steps: 3,
        guidance: 7.5,
        width: 64,
        height: 64,
        scheduler: SchedulerKind::EulerAncestral,
        prompt_syntax: PromptSyntax::A1111,
        eta: 0.0,
        init: None,
    };
    let reqs = [req("a red circle", ""), req("a blue square", "blurry"), req("a green star", "")];
    let seeds = [11u64, 22, 33];
    let mut rngs: Vec<NormalRng> = seeds.iter().map(|&s| NormalRng::new(s)).collect();
    let mut noises: Vec<&mut dyn NoiseSource> = rngs.iter_mut().map(|r| r as &mut dyn NoiseSource).collect();
    let mut steps = 0;
    let batch = pollster::block_on(sd.generate_batch(&reqs, &mut noises, &mut |_, _| {
        steps += 1;
        true
    }))
    .unwrap();
    assert_eq!(steps, 3);
    assert_eq!(batch.len(), 3);
    for ((r, seed), b) in reqs.iter().zip(seeds).zip(&batch) {
        let one = pollster::block_on(sd.generate(r, None, &mut NormalRng::new(seed), &mut |_| true)).unwrap();
        let worst = one.latents.iter().zip(&b.latents).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        // Same kernels on other rows of the same buffers: equal up to f32 reassociation.
        assert!(worst < 1e-4, "{}: batch vs alone differ by {worst}", r.prompt);
        let px = one.rgb.iter().zip(&b.rgb).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap_or(0);
        assert!(px <= 1, "{}: pixels differ by {px}", r.prompt);
    }
    // Mixed settings are refused, not silently run with the first request's.
    let mixed = [req("a", ""), Request { steps: 4, ..req("b", "") }];
    let mut r1 = NormalRng::new(1);
    let mut r2 = NormalRng::new(2);
    let mut noises: Vec<&mut dyn NoiseSource> = vec![&mut r1, &mut r2];
    let err = pollster::block_on(sd.generate_batch(&mixed, &mut noises, &mut |_, _| true)).err().unwrap().to_string();
    assert!(err.contains("one size, step count"), "{err}");
}

/// TAESD in the loop: with previews on, every step hands over TAESD's picture of its latents at
/// the image's size, and the VAE's final image is what it is without TAESD; with the fast final
/// decode the image is TAESD's decode of the final latents, which is the last preview.
#[test]
fn taesd_previews_every_step_and_decodes_fast_on_request() {
    use webdiffusion::pipeline::generate::TaesdUse;
    let opts = loader::LoadOptions::new(DType::F32);
    let mut sd = StableDiffusion::load(&DirSource(dir("tiny-sd1")), common::gpu(), &opts).unwrap();
    let req = Request {
        prompt: "a red circle".into(),
        negative_prompt: None,
        steps: 3,
        guidance: 7.5,
        width: 64,
        height: 64,
        scheduler: SchedulerKind::Euler,
        prompt_syntax: PromptSyntax::A1111,
        eta: 0.0,
        init: None,
    };
    let run = |sd: &StableDiffusion| {
        let mut previews: Vec<Option<Vec<u8>>> = Vec::new();
        let mut rng = webdiffusion::pipeline::rng::NormalRng::new(4);
        let out = pollster::block_on(sd.generate(&req, None, &mut rng, &mut |s| {
            previews.push(s.image.map(<[u8]>::to_vec));
            true
        }))
        .unwrap();
        (out, previews)
    };
    let (plain, none) = run(&sd);
    assert!(none.iter().all(Option::is_none), "no TAESD, no step images");
    let taesd = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-taesd");
    sd.taesd = Some(loader::taesd(&DirSource(taesd), common::gpu(), &opts).unwrap().0);
    sd.taesd_use = TaesdUse { previews: true, final_decode: false, encode: false };
    let (vae, previews) = run(&sd);
    assert_eq!(vae.rgb, plain.rgb, "previews leave the VAE's image as it was");
    assert_eq!(previews.len(), 3);
    assert!(previews.iter().all(|p| p.as_ref().is_some_and(|p| p.len() == 64 * 64 * 3)), "a 64x64 RGB image per step");
    assert_ne!(previews[0], previews[2], "the previews follow the latents");
    sd.taesd_use = TaesdUse { previews: true, final_decode: true, encode: false };
    let (fast, previews) = run(&sd);
    assert_eq!(fast.latents, vae.latents);
    assert_eq!(Some(&fast.rgb), previews[2].as_ref(), "the fast decode is TAESD's picture of the final latents");
    assert_ne!(fast.rgb, vae.rgb, "and not the VAE's");
}

/// diffusers' StableDiffusionInpaintPipeline replayed draw for draw (`make_inpaint_fixtures.py`):
/// on tiny-sd1's ordinary U-Net (the kept region re-noised to each next timestep and pasted back)
/// and on a 9-channel inpainting U-Net (latents + mask + masked-image latents), at strength 1 and
/// 0.6, within the txt2img cases' bounds.
#[test]
fn inpainting_matches_diffusers_step_by_step() {
    let mut ran = 0;
    for model in ["tiny-sd1", "tiny-sd1-inpaint"] {
        let src = DirSource(dir(model));
        let opts = loader::LoadOptions { with_encoder: true, ..loader::LoadOptions::new(DType::F32) };
        let mut sd = StableDiffusion::load(&src, common::gpu(), &opts).unwrap();
        let cases: Value =
            serde_json::from_slice(&std::fs::read(dir(model).join("inpaint/cases.json")).unwrap()).unwrap();
        for case in cases["cases"].as_array().unwrap() {
            let name = case["case"].as_str().unwrap();
            let kind = SchedulerKind::for_class(case["scheduler_class"].as_str().unwrap(), false).unwrap();
            let c = Case {
                tensors: std::fs::read(dir(model).join("inpaint").join(case["file"].as_str().unwrap())).unwrap(),
            };
            sd.scheduler_config = SchedulerConfig::from_json(&case["scheduler_config"].to_string()).unwrap();
            let init = InitImage {
                rgb: c.u8("init_image"),
                strength: case["strength"].as_f64().unwrap() as f32,
                mask: Some(c.u8("mask")),
            };
            let req = Request {
                init: Some(init),
                prompt: case["prompt"].as_str().unwrap().into(),
                negative_prompt: case["negative_prompt"].as_str().map(Into::into),
                steps: case["num_inference_steps"].as_u64().unwrap() as usize,
                guidance: case["guidance_scale"].as_f64().unwrap() as f32,
                width: 64,
                height: 64,
                scheduler: kind,
                prompt_syntax: PromptSyntax::A1111,
                eta: 0.0,
            };
            let (nshape, noise) = c.f32("noise").unwrap();
            let per = nshape[1..].iter().product::<usize>();
            let draws: VecDeque<Vec<f32>> = noise.chunks(per).map(|d| d.to_vec()).collect();
            let (_, step_latents) = c.f32("step_latents").unwrap();
            let (_, want_ts) = c.f32("timesteps").unwrap();
            let mut seen = Vec::new();
            let out = pollster::block_on(sd.generate(&req, None, &mut Recorded(draws), &mut |s| {
                seen.push((s.timestep, s.latents.to_vec()));
                true
            }))
            .unwrap_or_else(|e| panic!("{model} {name}: {e}"));
            let ts: Vec<f32> = seen.iter().map(|s| s.0).collect();
            assert_timesteps(&ts, &want_ts, &format!("{model} {name}: timesteps"));
            let worst = assert_steps(&seen, &step_latents, &format!("{model} {name}"));
            let px = out.rgb.iter().zip(&c.u8("image")).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
            eprintln!("{model} {name}: max rel step err {worst:.2e}, image max diff {px}/255");
            assert!(px <= 1, "{model} {name}: image differs by {px}/255");
            ran += 1;
        }
    }
    assert_eq!(ran, 4, "every inpainting case runs");
    // A 9-channel U-Net without a mask is refused in one line.
    let sd = StableDiffusion::load(
        &DirSource(dir("tiny-sd1-inpaint")),
        common::gpu(),
        &loader::LoadOptions::new(DType::F32),
    )
    .unwrap();
    let req = Request { prompt: "x".into(), ..small_request() };
    let mut rng = webdiffusion::pipeline::rng::NormalRng::new(1);
    let err = pollster::block_on(sd.generate(&req, None, &mut rng, &mut |_| true)).err().unwrap().to_string();
    assert!(err.contains("inpainting model") && err.contains("a mask"), "{err}");
}

/// TAESD as img2img's encoder: deterministic latents, so the run draws one normal fewer than
/// the VAE's posterior sample needs (the start noise only, for Euler), and starts elsewhere.
#[test]
fn taesd_encodes_img2img_without_a_posterior_draw() {
    use webdiffusion::pipeline::generate::TaesdUse;
    let opts = loader::LoadOptions { with_encoder: true, ..loader::LoadOptions::new(DType::F32) };
    let mut sd = StableDiffusion::load(&DirSource(dir("tiny-sd1")), common::gpu(), &opts).unwrap();
    let rgb: Vec<u8> = (0..64 * 64 * 3).map(|i| (i * 7 % 251) as u8).collect();
    let req = Request {
        prompt: "a red circle".into(),
        negative_prompt: None,
        steps: 4,
        guidance: 7.5,
        width: 64,
        height: 64,
        scheduler: SchedulerKind::Euler,
        prompt_syntax: PromptSyntax::A1111,
        eta: 0.0,
        init: Some(InitImage { rgb, strength: 0.5, mask: None }),
    };
    let draw = |k: usize| -> VecDeque<Vec<f32>> {
        let mut rng = webdiffusion::pipeline::rng::NormalRng::new(3);
        (0..k).map(|_| webdiffusion::pipeline::generate::NoiseSource::draw(&mut rng, 256).unwrap()).collect()
    };
    let vae = pollster::block_on(sd.generate(&req, None, &mut Recorded(draw(2)), &mut |_| true)).unwrap();
    let short = pollster::block_on(sd.generate(&req, None, &mut Recorded(draw(1)), &mut |_| true));
    assert!(short.err().unwrap().to_string().contains("ran out"), "the VAE's encode draws its posterior sample");
    let taesd = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-taesd");
    let (d, e) = loader::taesd(&DirSource(taesd), common::gpu(), &opts).unwrap();
    (sd.taesd, sd.taesd_encoder) = (Some(d), e);
    sd.taesd_use = TaesdUse { previews: false, final_decode: false, encode: true };
    let fast = pollster::block_on(sd.generate(&req, None, &mut Recorded(draw(1)), &mut |_| true)).unwrap();
    assert_ne!(fast.latents, vae.latents, "TAESD's latents are another start");
}

/// tiny-sd1 with `vae_config` applied to its VAE's config and every float of the VAE tensor
/// `poison` set to NaN, where given.
fn tiny_sd1_with(vae_config: impl FnOnce(&mut Value), poison: Option<&str>) -> common::Overlay<DirSource> {
    let mut src = common::Overlay::new(DirSource(dir("tiny-sd1"))).edit_json("vae/config.json", vae_config);
    if let Some(name) = poison {
        let file = "vae/diffusion_pytorch_model.safetensors";
        let bytes = std::fs::read(dir("tiny-sd1").join(file)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let nan: Vec<u8> = f32::NAN.to_le_bytes().repeat(st.tensor(name).unwrap().data().len() / 4);
        let mut views: Vec<(String, safetensors::tensor::TensorView)> = Vec::new();
        for (n, t) in st.tensors() {
            assert_eq!(t.dtype(), safetensors::Dtype::F32, "the fixture's VAE is f32");
            let data: &[u8] = if n == name { &nan } else { t.data() };
            views.push((n.clone(), safetensors::tensor::TensorView::new(t.dtype(), t.shape().to_vec(), data).unwrap()));
        }
        src.files.insert(file.into(), safetensors::serialize(views, None).unwrap());
    }
    src
}

fn small_request() -> Request {
    Request {
        prompt: "a cat".into(),
        negative_prompt: None,
        steps: 2,
        guidance: 7.5,
        width: 64,
        height: 64,
        scheduler: SchedulerKind::Euler,
        prompt_syntax: PromptSyntax::A1111,
        eta: 0.0,
        init: None,
    }
}

/// A stage that yields NaN ends the generation with a line naming the stage and the dtype; it
/// never becomes an image. And a VAE runs in f32 under f16 where its config says force_upcast
/// (diffusers' default), in f16 where it says false (the fp16-fix VAEs).
#[test]
fn non_finite_stages_are_named_and_force_upcast_keeps_the_vae_in_f32() {
    let src = tiny_sd1_with(|_| {}, Some("decoder.conv_out.bias"));
    let sd = StableDiffusion::load(&src, common::gpu(), &loader::LoadOptions::new(DType::F32)).unwrap();
    let mut rng = webdiffusion::pipeline::rng::NormalRng::new(3);
    let err = pollster::block_on(sd.generate(&small_request(), None, &mut rng, &mut |_| true)).err().expect("no image");
    assert!(matches!(err, webdiffusion::Error::NonFinite { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with("the VAE decoder produced non-finite values (NaN or infinity) computing in f32"),
        "{text}"
    );

    if !common::gpu().caps().shader_f16 {
        return;
    }
    // No force_upcast in tiny-sd1's config: diffusers' default (true) applies.
    let f16 = loader::LoadOptions::new(DType::F16);
    let sd = StableDiffusion::load(&tiny_sd1_with(|_| {}, None), common::gpu(), &f16).unwrap();
    assert_eq!((sd.dtype, sd.vae_dtype()), (DType::F16, DType::F32));
    let fix = tiny_sd1_with(|c| c["force_upcast"] = false.into(), None);
    let sd16 = StableDiffusion::load(&fix, common::gpu(), &f16).unwrap();
    assert_eq!(sd16.vae_dtype(), DType::F16);
    // Both decode the same latents to nearly the same image (f16 rounding apart).
    let latents = webdiffusion::pipeline::rng::NormalRng::new(5).normals(4 * 8 * 8);
    let (a, ..) = pollster::block_on(sd.decode(&latents, [1, 4, 8, 8])).unwrap();
    let (b, ..) = pollster::block_on(sd16.decode(&latents, [1, 4, 8, 8])).unwrap();
    let worst = a.iter().zip(&b).map(|(&x, &y)| (x as i32 - y as i32).abs()).max().unwrap();
    eprintln!("VAE decode f32 (force_upcast) vs f16: max pixel difference {worst}/255");
    assert!(worst <= 8, "f32 and f16 VAE decodes differ by {worst}/255");
}

/// `prepare` builds every pipeline a generation of that size uses: the generation after it
/// builds none (a device of its own, so other tests' kernels do not count).
#[test]
fn prepare_builds_every_pipeline_a_generation_needs() {
    for model in ["tiny-sd1", "tiny-sdxl"] {
        let gpu = pollster::block_on(webdiffusion::gpu::Gpu::new(&common::options())).unwrap();
        let sd = StableDiffusion::load(&DirSource(dir(model)), &gpu, &loader::LoadOptions::new(DType::F32)).unwrap();
        let built = sd.prepare(64, 64, true).unwrap();
        assert!(built >= 20, "{model}: prepare built {built} pipelines");
        let before = gpu.stats().pipelines;
        let mut rng = webdiffusion::pipeline::rng::NormalRng::new(3);
        pollster::block_on(sd.generate(&small_request(), None, &mut rng, &mut |_| true)).unwrap();
        assert_eq!(gpu.stats().pipelines - before, 0, "{model}: pipelines built during the generation");
        assert!(sd.prepare(60, 64, true).unwrap_err().to_string().contains("not a multiple of 8"));
        assert!(sd.prepare(8192, 64, true).unwrap_err().to_string().contains("over 4096 pixels"));
    }
}

/// A standalone VAE repo (config.json and weights at its root, as madebyollin/sdxl-vae-fp16-fix
/// ships) in place of the model's own: its `force_upcast: false` makes the SDXL decode f16 where
/// the device has it, and the image stays the f32 VAE's within a few levels.
#[test]
fn a_standalone_vae_replaces_the_models_own() {
    use webdiffusion::models::component::Component;
    use webdiffusion::models::loader::{FileSource, MemorySource, Swapped};
    let fixture = dir("tiny-sdxl");
    let mut config: Value = serde_json::from_slice(&std::fs::read(fixture.join("vae/config.json")).unwrap()).unwrap();
    config["force_upcast"] = false.into();
    let weights = "diffusion_pytorch_model.fp16.safetensors";
    let mut fix = MemorySource { name: "fp16-fix".into(), ..Default::default() };
    fix.files.insert("config.json".into(), serde_json::to_vec(&config).unwrap());
    fix.files.insert(weights.into(), std::fs::read(fixture.join("vae").join(weights)).unwrap());
    let src = Swapped::new(Box::new(DirSource(fixture.clone())), Component::Vae, Box::new(fix)).unwrap();
    assert!(!loader::vae_config(&src).unwrap().force_upcast);
    assert!(src.read("unet/config.json").unwrap().is_some(), "the rest is the model's own");
    let dtype = if common::gpu().caps().shader_f16 { DType::F16 } else { DType::F32 };
    let own =
        StableDiffusion::load(&DirSource(fixture.clone()), common::gpu(), &loader::LoadOptions::new(dtype)).unwrap();
    let swapped = StableDiffusion::load(&src, common::gpu(), &loader::LoadOptions::new(dtype)).unwrap();
    assert_eq!((own.vae_dtype(), swapped.vae_dtype()), (DType::F32, dtype));
    let req = Request { guidance: 0.0, steps: 1, scheduler: SchedulerKind::EulerAncestral, ..small_request() };
    let run = |sd: &StableDiffusion| {
        pollster::block_on(sd.generate(&req, None, &mut webdiffusion::pipeline::rng::NormalRng::new(5), &mut |_| true))
            .unwrap()
    };
    let (a, b) = (run(&own), run(&swapped));
    let diff = a.rgb.iter().zip(&b.rgb).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
    eprintln!("tiny-sdxl: the {dtype} VAE's image vs the f32 VAE's: max {diff}/255");
    assert!(diff <= 3, "{diff}/255");
    let err = Swapped::new(Box::new(DirSource(fixture)), Component::Vae, Box::new(DirSource(dir("tiny-sd1"))));
    assert!(err.err().unwrap().to_string().contains("no config.json for the vae"));
}

/// `generate_in_turns` (`--low-memory`): the image `generate` makes, with the text encoders and
/// the U-Net never on the GPU together (a lower peak than the whole model loaded); a repeated
/// prompt reloads nothing, a new one reloads the encoders and then the U-Net.
#[test]
fn the_text_encoders_and_the_unet_take_turns() {
    use webdiffusion::pipeline::rng::NormalRng;
    use webdiffusion::pipeline::sequential::Turns;
    let gpu = pollster::block_on(Gpu::new(&common::options())).unwrap();
    let src = DirSource(dir("tiny-sdxl"));
    let opts = loader::LoadOptions::new(DType::F32);
    let req = small_request();
    gpu.reset_stats();
    let whole = StableDiffusion::load(&src, &gpu, &opts).unwrap();
    let want = pollster::block_on(whole.generate(&req, None, &mut NormalRng::new(9), &mut |_| true)).unwrap();
    let peak_whole = gpu.stats().peak_bytes;
    drop(whole);
    gpu.trim_pool();
    gpu.reset_stats();
    let mut sd = StableDiffusion::load_in_turns(&src, &gpu, &opts).unwrap();
    assert!(sd.unet.is_none() && sd.text_encoder_2.is_some());
    let mut turns = Turns::default();
    let run = |sd: &mut StableDiffusion, turns: &mut Turns, req: &Request, seed| {
        pollster::block_on(
            sd.generate_in_turns(&src, &opts, turns, req, None, &mut NormalRng::new(seed), &mut |_| true),
        )
        .unwrap()
    };
    let got = run(&mut sd, &mut turns, &req, 9);
    assert_eq!(got.rgb, want.rgb, "the same image as generate");
    assert!(sd.text_encoder.is_none() && sd.text_encoder_2.is_none() && sd.unet.is_some());
    assert_eq!(turns.loads, 1, "the encoders were loaded with the model; the U-Net after encoding");
    let peak_turns = gpu.stats().peak_bytes;
    eprintln!("tiny-sdxl peak GPU bytes: whole {peak_whole}, in turns {peak_turns}");
    assert!(peak_turns < peak_whole, "{peak_turns} >= {peak_whole}");
    run(&mut sd, &mut turns, &req, 10);
    assert_eq!(turns.loads, 1, "the same prompt reuses its conditioning and the loaded U-Net");
    let other = Request { prompt: "a dog".into(), ..req.clone() };
    run(&mut sd, &mut turns, &other, 9);
    assert_eq!(turns.loads, 3, "a new prompt: the encoders, then the U-Net again");
    let bad = Request { width: 60, ..req };
    let before = turns.loads;
    assert!(pollster::block_on(sd.generate_in_turns(
        &src,
        &opts,
        &mut turns,
        &bad,
        None,
        &mut NormalRng::new(1),
        &mut |_| true
    ))
    .is_err());
    assert_eq!(turns.loads, before, "a bad request costs no reload");
}
