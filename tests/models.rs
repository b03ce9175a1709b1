//! Parity with diffusers/transformers on the tiny SD-1- and SD-2-style fixtures made by
//! `tools/reference/make_fixtures.py`: tokenizer ids, text-encoder hidden states, U-Net outputs
//! at three timesteps, VAE decode and encode, in f32 and (where the device has it) f16.

mod common;

use std::path::PathBuf;

use common::gpu;
use webdiffusion::gpu::DType;
use webdiffusion::models::component::Component;
use webdiffusion::models::loader::{self, DirSource, FileSource};
use webdiffusion::models::parity;
use webdiffusion::models::weights::Weights;
use webdiffusion::pipeline::conditioning;
use webdiffusion::pipeline::prompt::{parse_attention, PromptSyntax};

const MODELS: [&str; 2] = ["tiny-sd1", "tiny-sd2"];

/// The VAE cases a test runs for a fixture: (source, model dtype, the VAE's compute dtype). In
/// f16 both the model's own config (f32 VAE under force_upcast) and an f16 VAE.
fn vae_cases(name: &str) -> Vec<(Box<dyn FileSource>, DType, DType)> {
    let mut v: Vec<(Box<dyn FileSource>, DType, DType)> = Vec::new();
    for dtype in common::dtypes() {
        let src = fixture(name);
        let vdt = loader::vae_config(&src).unwrap().compute_dtype(dtype);
        v.push((Box::new(src), dtype, vdt));
        if vdt != dtype {
            // As the fp16-fix VAEs say: the f16 VAE path, checked against diffusers too.
            let f16_vae =
                common::Overlay::new(fixture(name)).edit_json("vae/config.json", |c| c["force_upcast"] = false.into());
            v.push((Box::new(f16_vae), dtype, dtype));
        }
    }
    v
}

fn fixture(name: &str) -> DirSource {
    DirSource(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name))
}

/// int32 tensors of a fixture's reference.safetensors (the float ones are read by `parity`).
fn reference_i32(model: &str, name: &str) -> (Vec<usize>, Vec<i32>) {
    let bytes = fixture(model).read("reference.safetensors").unwrap().expect("reference.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    (t.shape().to_vec(), t.data().chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// (atol, rtol-of-max) per precision. f32 is held to 2e-5 (observed ~1e-6; swapping gelu for
/// quick_gelu alone moves the text encoder by ~1e-2). f16 stores every activation in half
/// precision (kernels accumulate in f32), so rounding compounds through the layers (observed
/// ~2e-3 of the output range).
fn tol(dtype: DType) -> (f32, f32) {
    match dtype {
        DType::F16 => (0.0, 5e-3),
        _ => (2e-5, 0.0),
    }
}

#[test]
fn tokenizer_matches_reference_ids() {
    for model in MODELS {
        let src = fixture(model);
        let tok = loader::tokenizer(&src).unwrap();
        let meta: serde_json::Value = serde_json::from_slice(&src.read("reference.json").unwrap().unwrap()).unwrap();
        let prompts: Vec<String> = serde_json::from_value(meta["prompts"].clone()).unwrap();
        let (shape, ids) = reference_i32(model, "tokenizer.ids");
        let (_, totals) = reference_i32(model, "tokenizer.num_tokens");
        assert_eq!(shape, [prompts.len(), 77]);
        for (i, prompt) in prompts.iter().enumerate() {
            let t = tok.encode(prompt).unwrap();
            let want: Vec<u32> = ids[i * 77..(i + 1) * 77].iter().map(|&x| x as u32).collect();
            assert_eq!(t.ids, want, "{model} prompt {i} {prompt:?}");
            assert_eq!(t.total, totals[i] as usize, "{model} prompt {i} token count");
            assert_eq!(t.dropped, (totals[i] as usize).saturating_sub(77));
        }
    }
}

/// Special tokens typed in a prompt are tokenized as transformers' CLIPTokenizer does (as the
/// special token, case-sensitively), with text around them, near misses and SD 2's `!` pad:
/// ids from `make_tokenizer_cases.py`.
#[test]
fn typed_special_tokens_match_transformers() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_cases.json");
    let cases: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut checked = 0;
    for model in MODELS {
        let tok = loader::tokenizer(&fixture(model)).unwrap();
        for case in cases["models"][model].as_array().unwrap() {
            let prompt = case["prompt"].as_str().unwrap();
            let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            assert_eq!(tok.encode(prompt).unwrap().ids, want, "{model} {prompt:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 18);
}

#[test]
fn text_encoder_unet_and_vae_match_diffusers() {
    let expected = [
        "text_encoder.last_hidden_state",
        "text_encoder.clip_skip1",
        "unet.out_t1",
        "unet.out_t500",
        "unet.out_t999",
        "vae.decoded",
        "vae.posterior_mean",
        "vae.posterior_logvar",
    ];
    for model in MODELS {
        // In f16 also with force_upcast false: the VAE outputs then come from the f16 VAE.
        for (src, dtype, _) in vae_cases(model) {
            let outputs = pollster::block_on(parity::run(&*src, gpu(), &loader::LoadOptions::new(dtype))).unwrap();
            let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
            assert_eq!(names, expected);
            let (atol, rtol) = tol(dtype);
            for o in outputs {
                let bound = atol + rtol * o.max_abs_ref;
                eprintln!(
                    "{model} {} {dtype}: max |err| {:.3e} (max |ref| {:.3}, bound {bound:.1e})",
                    o.name, o.max_abs_err, o.max_abs_ref
                );
                assert!(o.max_abs_err <= bound, "{model} {} {dtype}: {} > {bound}", o.name, o.max_abs_err);
                assert!(o.max_abs_ref > 0.5, "{model} {}: a degenerate reference tests nothing", o.name);
            }
        }
    }
}

/// tiny-sd1's text encoder saved with transformers 5 (`make_tf5_text_encoders.py`): by
/// `save_pretrained` as `CLIPTextModelWithProjection` (`text_model.*` + `text_projection`, no
/// `position_ids`, a 5.x config), and as `CLIPTextModel`'s state dict (flat names, no
/// `text_model.` level). Same weights, so tiny-sd1's reference holds for both, and every tensor
/// is read (the first's config says CLIPTextModelWithProjection: its `text_projection` loads).
fn config_has_projection(json: &str) -> bool {
    webdiffusion::models::config::ClipConfig::from_json(json).unwrap().with_projection()
}

#[test]
fn text_encoders_saved_by_transformers_5_load() {
    for (folder, flat) in [("tiny-sd1-tf5", false), ("tiny-sd1-tf5-flat", true)] {
        let src = fixture(folder);
        let file = loader::component_tensors(&src, Component::TextEncoder).unwrap();
        let names = file.names();
        assert_eq!(names.iter().all(|n| !n.starts_with("text_model.")), flat, "{folder}: {:?}", &names[..2]);
        assert!(names.iter().all(|n| !n.ends_with("position_ids")), "{folder}");
        for dtype in common::dtypes() {
            let opts = loader::LoadOptions::new(dtype);
            let outputs = pollster::block_on(parity::text_encoder(&src, &fixture("tiny-sd1"), gpu(), &opts)).unwrap();
            assert_eq!(outputs.len(), 2);
            let (atol, rtol) = tol(dtype);
            for o in outputs {
                let bound = atol + rtol * o.max_abs_ref;
                assert!(o.max_abs_err <= bound, "{folder} {} {dtype}: {} > {bound}", o.name, o.max_abs_err);
                assert!(o.max_abs_ref > 0.5, "{folder} {}: a degenerate reference tests nothing", o.name);
            }
        }
        let w = Weights::new(&*file, gpu(), DType::F32);
        let text = String::from_utf8(src.read("text_encoder/config.json").unwrap().unwrap()).unwrap();
        let config = webdiffusion::models::config::ClipConfig::from_json(&text).unwrap();
        drop(webdiffusion::models::clip::ClipTextModel::load(config, &w).unwrap());
        assert_eq!(w.unused(), Vec::<String>::new(), "{folder}: every tensor is read");
        assert_eq!(config_has_projection(&text), !flat, "{folder}");
    }
}

#[test]
fn loaders_read_every_published_tensor() {
    for model in MODELS.into_iter().chain(["tiny-sdxl"]) {
        let src = fixture(model);
        for component in Component::present(|p| src.read(p).unwrap().is_some()) {
            let file = loader::component_tensors(&src, component).unwrap();
            let w = Weights::new(&*file, gpu(), DType::F32);
            let text = |p: &str| String::from_utf8(src.read(p).unwrap().unwrap()).unwrap();
            use webdiffusion::models::{clip, config, unet, vae};
            match component {
                Component::TextEncoder | Component::TextEncoder2 => drop(
                    clip::ClipTextModel::load(
                        config::ClipConfig::from_json(&text(&component.config_file())).unwrap(),
                        &w,
                    )
                    .unwrap(),
                ),
                Component::Unet => drop(
                    unet::UNet::load(config::UNetConfig::from_json(&text("unet/config.json")).unwrap(), &w).unwrap(),
                ),
                Component::Vae => {
                    let c = config::VaeConfig::from_json(&text("vae/config.json")).unwrap();
                    drop(vae::Decoder::load(&c, &w).unwrap());
                    drop(vae::Encoder::load(&c, &w).unwrap());
                }
            }
            let unused: Vec<String> = w.unused().into_iter().filter(|n| !n.ends_with("position_ids")).collect();
            assert!(unused.is_empty(), "{model} {component}: never loaded {unused:?}");
        }
    }
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    let src = fixture("tiny-sd2");
    let file = loader::component_tensors(&src, Component::Unet).unwrap();
    let w = Weights::new(&*file, gpu(), DType::F32);
    let err = w.pp("conv_in").get("weight", &[16, 4, 5, 5]).unwrap_err().to_string();
    assert!(err.contains("conv_in.weight") && err.contains("[16, 4, 3, 3]"), "{err}");
    let err = w.get("down_blocks.9.resnets.0.conv1.weight", &[1]).unwrap_err().to_string();
    assert!(err.contains("down_blocks.9.resnets.0.conv1.weight") && err.contains("missing"), "{err}");
    let err = match webdiffusion::models::sources::SafeTensorsBytes::new(vec![1, 2, 3], "broken.safetensors") {
        Ok(_) => panic!("garbage parsed"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("broken.safetensors"), "{err}");
}

/// Our tiled VAE decode against diffusers' `AutoencoderKL.tiled_decode` on the tiny-sd1 VAE
/// (`tools/reference/make_tiled_vae_fixture.py`): a 20x28 latent in 8- and 12-pixel tiles, so
/// the last row and column of tiles are partial. Same tolerances as the untiled decode.
#[test]
fn tiled_vae_decode_matches_diffusers() {
    use webdiffusion::pipeline::vae_tiling::{self, VaeTiling};
    let src = fixture("tiny-sd1");
    let bytes = src.read("vae_tiled.safetensors").unwrap().expect("vae_tiled.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| -> Vec<f32> {
        st.tensor(name).unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    };
    let latents = f32s("latents");
    let full = f32s("decoded_full");
    for (vae_src, model_dtype, dtype) in vae_cases("tiny-sd1") {
        let opts = loader::LoadOptions::new(model_dtype);
        let (decoder, _) = loader::vae(&*vae_src, gpu(), &opts).unwrap();
        let (atol, rtol) = tol(dtype);
        for tile in [8usize, 12] {
            let want = f32s(&format!("decoded_t{tile}"));
            let got = pollster::block_on(vae_tiling::decode(
                &decoder,
                gpu(),
                dtype,
                &latents,
                [4, 20, 28],
                Some(VaeTiling::new(tile)),
            ))
            .unwrap();
            assert_eq!((got.channels, got.height, got.width), (3, 160, 224));
            let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = got.data.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let bound = atol + rtol * max_ref;
            eprintln!("tiled decode, tile {tile} {dtype}: max |err| {err:.3e} (bound {bound:.1e})");
            assert!(err <= bound, "tile {tile} {dtype}: {err} > {bound}");
            // Tiling really changes the image (per-tile group norm), so a decode that ignored
            // the tiles would fail above.
            let moved = got.data.iter().zip(&full).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(moved > 10.0 * bound, "tile {tile}: tiled equals untiled ({moved})");
        }
        // No tiling asked, or a tile bigger than the latent: the plain decode.
        let whole = pollster::block_on(vae_tiling::decode(
            &decoder,
            gpu(),
            dtype,
            &latents,
            [4, 20, 28],
            Some(VaeTiling::new(32)),
        ))
        .unwrap();
        let err = whole.data.iter().zip(&full).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= atol + rtol * 4.0, "untiled {dtype}: {err}");
    }
}

/// A1111's prompt syntax, prompt by prompt, against what A1111's own `parse_prompt_attention`
/// returned (`make_prompt_fixtures.py`): nesting, weights, escapes, unbalanced brackets, BREAK.
#[test]
fn prompt_syntax_parses_as_a1111_does() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prompt_syntax.json");
    let cases: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let cases = cases["parse"].as_array().unwrap();
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let want: Vec<(String, f64)> = serde_json::from_value(case["fragments"].clone()).unwrap();
        let got: Vec<(String, f64)> = parse_attention(prompt).into_iter().map(|f| (f.text, f.weight)).collect();
        assert_eq!(got, want, "{prompt:?}");
    }
    assert!(cases.len() >= 30, "{} prompts", cases.len());
}

/// Long and weighted prompts: chunks, multipliers and token counts as A1111's tokenize_line
/// makes them, and the conditioning (chunks encoded, emphasis applied, concatenated, a
/// 3-chunk prompt among them) against the fixture script's torch reference. A batch pads a
/// shorter row with empty chunks: the empty prompt beside the 3-chunk one is its own
/// conditioning three times.
#[test]
fn long_weighted_prompts_match_a1111_conditioning() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prompt_syntax.json");
    let fixture_json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let a1111 = PromptSyntax::A1111;
    for model in MODELS {
        let src = fixture(model);
        let tok = loader::tokenizer(&src).unwrap();
        let bytes = src.read("prompt_chunks.safetensors").unwrap().unwrap();
        let reference = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let cases = fixture_json["chunks"][model].as_array().unwrap();
        let want_of = |case: &serde_json::Value| -> Vec<f32> {
            let t = reference.tensor(case["tensor"].as_str().unwrap()).unwrap();
            t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        };
        for case in cases {
            let prompt = case["prompt"].as_str().unwrap();
            let t = conditioning::tokenize(&tok, prompt, a1111).unwrap();
            let ids: Vec<Vec<u32>> = serde_json::from_value(case["ids"].clone()).unwrap();
            let mults: Vec<Vec<f64>> = serde_json::from_value(case["multipliers"].clone()).unwrap();
            assert_eq!(t.chunks.iter().map(|c| c.ids.clone()).collect::<Vec<_>>(), ids, "{model} {prompt:?} ids");
            let mults: Vec<Vec<f32>> = mults.iter().map(|m| m.iter().map(|&w| w as f32).collect()).collect();
            assert_eq!(t.chunks.iter().map(|c| c.weights.clone()).collect::<Vec<_>>(), mults, "{model} {prompt:?}");
            assert_eq!(t.count as u64, case["token_count"].as_u64().unwrap(), "{model} {prompt:?} count");
            assert_eq!(t.target() as u64, case["target"].as_u64().unwrap(), "{model} {prompt:?} target");
        }
        assert_eq!(cases[2]["ids"].as_array().unwrap().len(), 3, "the long prompt spans 3 chunks");

        for dtype in common::dtypes() {
            let te = loader::text_encoder(&src, gpu(), &loader::LoadOptions::new(dtype)).unwrap();
            let (atol, rtol) = tol(dtype);
            for case in cases {
                let prompt = case["prompt"].as_str().unwrap();
                let want = want_of(case);
                let got =
                    common::to_vec(&pollster::block_on(conditioning::context(&tok, &te, &[(prompt, a1111)])).unwrap());
                assert_eq!(got.len(), want.len(), "{model} {prompt:?}");
                let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                let err = got.iter().zip(&want).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
                let bound = 2.0 * atol + rtol * max_ref;
                eprintln!(
                    "{model} {dtype} {:.40?}: max |err| {err:.2e} (max |ref| {max_ref:.3}, bound {bound:.1e})",
                    prompt
                );
                assert!(err <= bound, "{model} {dtype} {prompt:?}: {err} > {bound}");
            }
            // [negative "", the 3-chunk prompt] as one batch.
            let (empty, long) = (want_of(&cases[1]), want_of(&cases[2]));
            let batch = [("", a1111), (cases[2]["prompt"].as_str().unwrap(), a1111)];
            let got = common::to_vec(&pollster::block_on(conditioning::context(&tok, &te, &batch)).unwrap());
            let want: Vec<f32> = empty.iter().cycle().take(long.len()).chain(&long).copied().collect();
            let err = got.iter().zip(&want).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
            assert_eq!(got.len(), want.len());
            let bound = 2.0 * atol + rtol * want.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(err <= bound, "{model} {dtype} padded batch: {err} > {bound}");
        }
    }
}

/// f32 values of a tensor stored as f32 or f16.
fn values_f32(src: &dyn webdiffusion::models::weights::TensorSource, name: &str) -> Vec<f32> {
    use webdiffusion::models::weights::FileDType;
    let info = src.info(name).unwrap_or_else(|| panic!("{name}: no info"));
    let bytes = src.bytes(name).unwrap();
    match info.dtype {
        FileDType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        FileDType::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        other => panic!("{name}: {other:?}"),
    }
}

/// Single-file checkpoints in the original layout (made from the tiny folders by
/// `make_single_file_fixtures.py`, which checked diffusers' `from_single_file` reads them back
/// as the folder's tensors): every tensor a model of ours reads comes out under its diffusers
/// name with the folder's shape and values (fused OpenCLIP q/k/v split, 1x1 convs squeezed),
/// and a generation from the file equals the folder's to the bit.
#[test]
fn single_file_checkpoints_load_as_their_folder() {
    use webdiffusion::models::single_file::SingleFile;
    use webdiffusion::models::weights::TensorSource;
    use webdiffusion::pipeline::generate::{Request, StableDiffusion};
    use webdiffusion::pipeline::schedulers::SchedulerKind;
    for model in MODELS {
        let folder = fixture(model);
        let dir = fixture(&format!("{model}-single"));
        let single = SingleFile::open(Box::new(dir), "model.safetensors", Box::new(fixture(model))).unwrap();
        for component in [Component::Unet, Component::Vae, Component::TextEncoder] {
            let ours = single.tensors(component).unwrap();
            let theirs = loader::component_tensors(&folder, component).unwrap();
            // `position_ids` is a buffer transformers 4 saved and no model reads.
            let names: Vec<String> = theirs.names().into_iter().filter(|n| !n.ends_with("position_ids")).collect();
            assert!(!names.is_empty());
            for name in &names {
                // The folder's VAE uses the attention names of older diffusers, which the VAE
                // loader reads too; the single file maps to the current ones.
                let current =
                    [(".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."), (".proj_attn.", ".to_out.0.")]
                        .iter()
                        .fold(name.clone(), |n, (old, new)| n.replace(old, new));
                let (a, b) = (ours.info(&current), theirs.info(name).unwrap());
                let a = a.unwrap_or_else(|| panic!("{model} {component}: {current} is not in the single file"));
                assert_eq!(a.shape, b.shape, "{model} {component} {name}");
                assert_eq!(values_f32(&ours, &current), values_f32(&*theirs, name), "{model} {component} {name}");
            }
            assert_eq!(ours.names().len(), names.len(), "{model} {component}: the file holds what the folder holds");
        }
        let req = Request {
            prompt: "a red circle on a blue background".into(),
            negative_prompt: Some(String::new()),
            steps: 2,
            guidance: 7.5,
            width: 64,
            height: 64,
            scheduler: SchedulerKind::Euler,
            prompt_syntax: PromptSyntax::A1111,
            eta: 0.0,
            init: None,
        };
        let run = |src: &dyn loader::FileSource| {
            let sd = StableDiffusion::load(src, gpu(), &loader::LoadOptions::new(DType::F32)).unwrap();
            let mut noise = webdiffusion::pipeline::rng::NormalRng::new(7);
            pollster::block_on(sd.generate(&req, None, &mut noise, &mut |_| true)).unwrap().rgb
        };
        assert_eq!(run(&single), run(&folder), "{model}: the single file generates the folder's image");
    }
}

/// LoRAs in every format we read (kohya in the diffusers and the LDM module layout with LoCon
/// convs, PEFT with its metadata alphas, diffusers' older spelling), merged on load, against
/// diffusers' `load_lora_weights` + `fuse_lora(lora_scale)` (`make_lora_fixtures.py`): every
/// touched tensor at two strengths and with two LoRAs at once, and every other tensor unchanged.
#[test]
fn loras_merge_as_diffusers_fuses_them() {
    use webdiffusion::models::lora::{Lora, LoraUse, Merged};
    let unet_vae = |src: &DirSource| {
        let u = webdiffusion::models::config::UNetConfig::from_json(&loader::text(src, "unet/config.json").unwrap());
        (u.unwrap(), loader::vae_config(src).unwrap())
    };
    let mut checked = 0;
    for model in MODELS {
        let src = fixture(model);
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(model).join("lora");
        let cases: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("cases.json")).unwrap()).unwrap();
        let (unet_cfg, vae_cfg) = unet_vae(&src);
        for r in cases["references"].as_array().unwrap() {
            let names: Vec<&str> = r["loras"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
            let weights: Vec<f32> = match r["adapter_weights"].as_array() {
                Some(w) => w.iter().map(|v| v.as_f64().unwrap() as f32).collect(),
                None => vec![r["lora_scale"].as_f64().unwrap() as f32; names.len()],
            };
            let uses: Vec<LoraUse> = names
                .iter()
                .zip(&weights)
                .map(|(n, &strength)| {
                    let bytes = std::fs::read(dir.join(format!("{n}.safetensors"))).unwrap();
                    LoraUse { lora: std::sync::Arc::new(Lora::from_bytes(n, &bytes).unwrap()), strength }
                })
                .collect();
            let reference = std::fs::read(dir.join(r["file"].as_str().unwrap())).unwrap();
            let reference = safetensors::SafeTensors::deserialize(&reference).unwrap();
            for component in [Component::Unet, Component::TextEncoder] {
                let base = loader::component_tensors(&src, component).unwrap();
                let merged = Merged::new(&*base, component, &uses, Some((&unet_cfg, &vae_cfg))).unwrap();
                let prefix = format!("{}.", component.name());
                let mut touched = 0;
                for name in base.names().into_iter().filter(|n| !n.ends_with("position_ids")) {
                    let got = values_f32(&merged, &name);
                    match reference.tensor(&format!("{prefix}{name}")) {
                        Ok(t) => {
                            let want: Vec<f32> = t
                                .data()
                                .chunks_exact(4)
                                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                                .collect();
                            let err = got.iter().zip(&want).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
                            let base_vals = values_f32(&*base, &name);
                            let moved = base_vals.iter().zip(&want).fold(0f32, |m, (b, w)| m.max((b - w).abs()));
                            assert!(err <= 1e-5, "{model} {names:?} {:?} {name}: max |err| {err}", r["file"]);
                            assert!(moved > 1e-3, "{model} {name}: the LoRA must move the weight ({moved})");
                            touched += 1;
                        }
                        Err(_) => assert_eq!(got, values_f32(&*base, &name), "{model} {names:?}: {name} must stay"),
                    }
                }
                let listed = reference.names().iter().filter(|n| n.starts_with(&prefix)).count();
                assert_eq!(touched, listed, "{model} {names:?} {component}: every reference tensor is one we merged");
                checked += touched;
            }
        }
    }
    assert!(checked > 200, "{checked} merged tensors checked");
}

/// The prediction type of a single file: the companion's scheduler by default, Stability's
/// ModelSpec metadata when the file has it, the user's choice over both (shapes cannot tell an
/// SD 2 768-v checkpoint from a 512 epsilon one).
#[test]
fn single_file_prediction_type_from_metadata_or_choice() {
    use webdiffusion::models::loader::MemorySource;
    use webdiffusion::models::single_file::SingleFile;
    use webdiffusion::pipeline::schedule::{Prediction, SchedulerConfig};
    let predicted = |sf: &SingleFile| {
        let text = loader::text(sf, "scheduler/scheduler_config.json").unwrap();
        SchedulerConfig::from_json(&text).unwrap().for_class("leading").prediction().unwrap()
    };
    let dir = || Box::new(fixture("tiny-sd1-single"));
    let plain = SingleFile::open(dir(), "model.safetensors", Box::new(fixture("tiny-sd1"))).unwrap();
    assert_eq!((plain.prediction(), predicted(&plain)), (None, Prediction::Epsilon));

    // The same file with `modelspec.prediction_type: v` in its header metadata.
    let bytes = std::fs::read(fixture("tiny-sd1-single").0.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["__metadata__"] = serde_json::json!({"modelspec.prediction_type": "v"});
    let json = serde_json::to_vec(&header).unwrap();
    let file = [&(json.len() as u64).to_le_bytes()[..], &json, &bytes[8 + n..]].concat();
    let mem = MemorySource { files: [("model.safetensors".to_string(), file)].into(), name: "v file".into() };
    let mut v = SingleFile::open(Box::new(mem), "model.safetensors", Box::new(fixture("tiny-sd1"))).unwrap();
    assert_eq!((v.prediction(), predicted(&v)), (Some("v_prediction"), Prediction::V));
    v.set_prediction("epsilon").unwrap();
    assert_eq!(predicted(&v), Prediction::Epsilon);
    assert!(v.set_prediction("x").is_err());
}

/// TAESD (`AutoencoderTiny`, the published layer layout at 16 channels, random weights) against
/// diffusers' encode and decode (`make_taesd_fixture.py`), within the models' bounds.
#[test]
fn taesd_encodes_and_decodes_as_diffusers_does() {
    use webdiffusion::gpu::GpuTensor;
    let src = fixture("tiny-taesd");
    let bytes = src.read("reference.safetensors").unwrap().expect("reference.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| -> Vec<f32> {
        st.tensor(name).unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    };
    for dtype in common::dtypes() {
        let opts = loader::LoadOptions { with_encoder: true, ..loader::LoadOptions::new(dtype) };
        let (decoder, encoder) = loader::taesd(&src, gpu(), &opts).unwrap();
        let (atol, rtol) = tol(dtype);
        let cases = [
            ("encode", f32s("image"), [1, 3, 64, 64], f32s("latents")),
            ("decode", f32s("latents_in"), [1, 4, 8, 8], f32s("decoded")),
        ];
        for (what, input, shape, want) in cases {
            let x = GpuTensor::from_f32_as(gpu(), &input, &shape, dtype).unwrap();
            let y = match what {
                "encode" => encoder.as_ref().unwrap().forward(&x),
                _ => decoder.forward(&x),
            };
            let got = pollster::block_on(y.unwrap().to_vec_f32()).unwrap();
            assert_eq!(got.len(), want.len(), "{what}");
            let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let bound = atol + rtol * max_ref;
            eprintln!("taesd {what} {dtype}: max |err| {err:.3e} (bound {bound:.1e}, max |ref| {max_ref:.2})");
            assert!(err <= bound, "taesd {what} {dtype}: {err} > {bound}");
        }
    }
    // The published config loads; another activation is refused in one line.
    let published =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/published-components/madebyollin__taesd");
    let c = webdiffusion::models::taesd::TinyConfig::from_json(
        &std::fs::read_to_string(published.join("config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(c.downscale(), 8);
    // The tiny fixture has the published tensor names (its layer indices are the published ones).
    let list: serde_json::Value =
        serde_json::from_slice(&std::fs::read(published.join("tensors.json")).unwrap()).unwrap();
    let mut want: Vec<String> = list["components"]["vae"]["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    let file = src.read("diffusion_pytorch_model.safetensors").unwrap().unwrap();
    let mut got: Vec<String> =
        safetensors::SafeTensors::deserialize(&file).unwrap().names().into_iter().map(str::to_string).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "the tiny TAESD's tensors are the published ones");
    let silu = loader::text(&src, "config.json").unwrap().replace("\"relu\"", "\"silu\"");
    let err = webdiffusion::models::taesd::TinyConfig::from_json(&silu).unwrap_err().to_string();
    assert!(err.contains("taesd") && err.contains("act_fn silu"), "{err}");
}

/// Tiled VAE encode against diffusers' `_tiled_encode` (tiny-sd1's VAE, a 160x224 image, tiles
/// of 8 and 12 latent pixels): the blended moments within the models' bounds, and really tiled
/// (they differ from the whole-image encode by far more).
#[test]
fn tiled_encode_matches_diffusers() {
    use webdiffusion::pipeline::vae_tiling::{self, VaeTiling};
    let src = fixture("tiny-sd1");
    let bytes = src.read("vae_tiled.safetensors").unwrap().expect("vae_tiled.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| -> Vec<f32> {
        st.tensor(name).unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    };
    let image = f32s("image");
    let full = f32s("moments_full");
    for (vae_src, model_dtype, dtype) in vae_cases("tiny-sd1") {
        let opts = loader::LoadOptions { with_encoder: true, ..loader::LoadOptions::new(model_dtype) };
        let (_, encoder) = loader::vae(&*vae_src, gpu(), &opts).unwrap();
        let encoder = encoder.unwrap();
        let (atol, rtol) = tol(dtype);
        for tile in [None, Some(8usize), Some(12)] {
            let want = match tile {
                Some(t) => f32s(&format!("moments_t{t}")),
                None => full.clone(),
            };
            let (mean, logvar) = pollster::block_on(vae_tiling::encode(
                &encoder,
                gpu(),
                dtype,
                8,
                &image,
                [3, 160, 224],
                tile.map(VaeTiling::new),
            ))
            .unwrap();
            assert_eq!(mean.len() + logvar.len(), want.len());
            let n = mean.len();
            let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err_mean = mean.iter().zip(&want[..n]).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let err_lv = logvar.iter().zip(&want[n..]).fold(0f32, |m, (a, b)| m.max((a - b.clamp(-30.0, 20.0)).abs()));
            let bound = atol + rtol * max_ref;
            eprintln!(
                "encode tile {tile:?} {dtype}: max |err| mean {err_mean:.3e} logvar {err_lv:.3e} (bound {bound:.1e})"
            );
            assert!(err_mean <= bound && err_lv <= bound, "tile {tile:?} {dtype}: {err_mean} {err_lv} > {bound}");
            if tile.is_some() {
                let moved = mean.iter().zip(&full).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(moved > 0.1 && moved > 5.0 * bound, "tiling changed the encode by only {moved}");
            }
        }
    }
}

fn reference_f32(model: &str, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = fixture(model).read("reference.safetensors").unwrap().expect("reference.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    (t.shape().to_vec(), t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// The tiny SDXL fixture (`tools/reference/make_sdxl_fixture.py`) against transformers and
/// diffusers: both tokenizers' ids, both encoders' penultimate hidden states and the second's
/// pooled projection, the U-Net with text_time conditioning and transformer depth 2 and 3 at
/// three timesteps (and with the added inputs zeroed), the VAE decode.
#[test]
fn sdxl_text_encoders_unet_and_vae_match_diffusers() {
    use webdiffusion::gpu::GpuTensor;
    use webdiffusion::models::clip::Hidden;
    use webdiffusion::models::unet::Added;
    let m = "tiny-sdxl";
    let src = fixture(m);
    let prompts = ["a photo of an astronaut riding a horse on mars", ""];
    for (tok, name) in
        [(loader::tokenizer(&src).unwrap(), "te.input_ids"), (loader::tokenizer_2(&src).unwrap(), "te2.input_ids")]
    {
        let (_, want) = reference_i32(m, name);
        let got: Vec<i32> = prompts
            .iter()
            .flat_map(|p| conditioning::tokenize(&tok, p, PromptSyntax::Diffusers).unwrap().chunks[0].ids.clone())
            .map(|t| t as i32)
            .collect();
        assert_eq!(got, want, "{name}");
    }
    let ids = |name| reference_i32(m, name).1.into_iter().map(|t| t as u32).collect::<Vec<u32>>();
    let check = |what: &str, dtype: DType, got: &GpuTensor, want: &str| {
        let (shape, want) = reference_f32(m, want);
        assert_eq!(got.shape(), &shape[..], "{what}");
        let got = common::to_vec(got);
        let max_ref = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        let err = got.iter().zip(&want).fold(0f32, |a, (g, w)| a.max((g - w).abs()));
        let (atol, rtol) = tol(dtype);
        eprintln!("{m} {what} {dtype}: max |err| {err:.2e} of max |ref| {max_ref:.2}");
        assert!(err <= atol + rtol * max_ref, "{m} {what} {dtype}: {err} > {}", atol + rtol * max_ref);
        assert!(max_ref > 0.1, "{what}: a degenerate reference");
    };
    for dtype in common::dtypes() {
        let opts = loader::LoadOptions::new(dtype);
        let te = loader::text_encoder(&src, gpu(), &opts).unwrap();
        let te2 = loader::text_encoder_2(&src, gpu(), &opts).unwrap();
        let a = te.encode(&ids("te.input_ids"), 2, Hidden::Penultimate { skip: 0 }, None).unwrap();
        check("text_encoder hidden_states[-2]", dtype, &a.hidden, "te.penultimate");
        assert!(a.pooled.is_none(), "CLIPTextModel has no projection");
        let b = te2.encode(&ids("te2.input_ids"), 2, Hidden::Penultimate { skip: 0 }, Some(49407)).unwrap();
        check("text_encoder_2 hidden_states[-2]", dtype, &b.hidden, "te2.penultimate");
        check("text_encoder_2 text_embeds", dtype, b.pooled.as_ref().unwrap(), "te2.text_embeds");

        let unet = loader::unet(&src, gpu(), &opts).unwrap();
        let up = |name| {
            let (shape, v) = reference_f32(m, name);
            GpuTensor::from_f32_as(gpu(), &v, &shape, dtype).unwrap()
        };
        let (sample, ehs) = (up("unet.sample"), up("unet.encoder_hidden_states"));
        let time_ids = reference_f32(m, "unet.time_ids").1;
        let added = Added { text_embeds: up("unet.text_embeds"), time_ids: time_ids.clone() };
        for t in [1, 500, 999] {
            let out = unet.forward_with(&sample, t as f32, &ehs, None, Some(&added)).unwrap();
            check(&format!("unet t={t}"), dtype, &out, &format!("unet.out_t{t}"));
        }
        let zeros = Added {
            text_embeds: GpuTensor::from_f32_as(gpu(), &[0.0; 40], &[2, 20], dtype).unwrap(),
            time_ids: vec![0.0; time_ids.len()],
        };
        let out = unet.forward_with(&sample, 500.0, &ehs, None, Some(&zeros)).unwrap();
        check("unet t=500, added zero", dtype, &out, "unet.out_t500_zero_added");
        let err = unet.forward(&sample, 500.0, &ehs, None).unwrap_err().to_string();
        assert!(err.contains("text_time"), "{err}");

        let (decoder, _) = loader::vae(&src, gpu(), &opts).unwrap();
        let vdt = loader::vae_config(&src).unwrap().compute_dtype(dtype);
        assert_eq!(vdt, DType::F32, "SDXL's VAE says force_upcast");
        let (shape, z) = reference_f32(m, "vae.latents");
        let img = decoder.forward(&GpuTensor::from_f32_as(gpu(), &z, &shape, vdt).unwrap()).unwrap();
        check("vae decode", vdt, &img, "vae.decoded");
    }
}
