//! The CLI painting with an image: inpainting and outpainting, several images per prompt, TAESD.

use std::path::Path;

use super::package::{generate, run, PROMPT};
use super::{fixture, tmp};

/// `--count 3`: seeds 5, 6, 7 as one batch, written as OUT-SEED.png with their own seeds in
/// the parameters; each is the image its seed gives alone; bad counts are refused.
#[test]
fn several_images_per_prompt_take_consecutive_seeds() {
    let model = fixture("tiny-sd1");
    let model = model.to_str().unwrap();
    let out = tmp("count.png");
    let mut args =
        vec!["generate", "--model", model, "--prompt", PROMPT, "--steps", "2", "--seed", "5", "--count", "3"];
    args.extend(["--width", "64", "--height", "64", "--precision", "f32", "--scheduler", "euler"]);
    args.extend(["--out", out.to_str().unwrap()]);
    let o = run(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("seeds [5, 6, 7] as one batch"), "{err}");
    let alone = generate(model, &[], &tmp("count-alone.png"));
    for seed in [5, 6, 7] {
        let png = std::fs::read(tmp(&format!("count-{seed}.png"))).unwrap();
        assert!(String::from_utf8_lossy(&png).contains(&format!("Seed: {seed},")), "seed {seed} in its parameters");
        let px = webdiffusion::pipeline::image::decode_png(&png).unwrap().0;
        if seed == 5 {
            let worst = px.iter().zip(&alone).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
            assert!(worst <= 1, "seed 5 in the batch vs alone: {worst}/255");
        } else {
            assert!(px != alone, "seed {seed} is another image");
        }
    }
    let o = run(&["generate", "--model", model, "--prompt", "x", "--count", "0", "--out", "/tmp/never.png"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--count must be 1 to 16 (got 0)"), "{err}");
}

/// TAESD from the command line: a preview PNG per step, and with `--decoder taesd` the final
/// image is TAESD's (the last preview), not the VAE's; a missing --taesd is refused in one line.
#[test]
fn taesd_previews_and_fast_decode() {
    let model = fixture("tiny-sd1");
    let model = model.to_str().unwrap();
    let taesd = fixture("tiny-taesd");
    let previews = tmp("taesd-previews");
    std::fs::create_dir_all(&previews).unwrap();
    let extra = ["--taesd", taesd.to_str().unwrap(), "--decoder", "taesd", "--preview-decoder", "taesd"];
    let extra = [&extra[..], &["--previews", previews.to_str().unwrap()]].concat();
    let fast = generate(model, &extra, &tmp("taesd-fast.png"));
    let steps: Vec<Vec<u8>> = (1..=2)
        .map(|i| {
            let png = std::fs::read(previews.join(format!("step-{i}.png"))).unwrap();
            webdiffusion::pipeline::image::decode_png(&png).unwrap().0
        })
        .collect();
    assert_eq!(steps[1], fast, "the final TAESD image is the last step's preview");
    assert_ne!(steps[0], steps[1]);
    let vae = generate(model, &[], &tmp("taesd-vae.png"));
    assert_ne!(fast, vae, "--decoder taesd is not the VAE's image");
    let o = run(&["generate", "--model", model, "--prompt", "x", "--decoder", "taesd", "--out", "/tmp/never.png"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("need --taesd DIR"), "{err}");
}

/// Inpainting from the command line: with diffusers' recorded draws (`--noise`) and no overlay
/// it is the fixture's StableDiffusionInpaintPipeline image; with the overlay, pixels far from
/// the mask are the original's exactly; `--outpaint` grows the image and keeps the original.
#[test]
fn inpainting_and_outpainting_from_the_command_line() {
    let model = fixture("tiny-sd1-inpaint");
    let case = model.join("inpaint/inpaint9_euler_4.safetensors");
    let bytes = std::fs::read(&case).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let init = st.tensor("init_image").unwrap().data().to_vec();
    let mask = st.tensor("mask").unwrap().data().to_vec();
    let want = st.tensor("image").unwrap().data().to_vec();
    let enc = webdiffusion::pipeline::image::encode_png;
    let (init_png, mask_png) = (tmp("inpaint-init.png"), tmp("inpaint-mask.png"));
    std::fs::write(&init_png, enc(&init, 64, 64, None).unwrap()).unwrap();
    let grey: Vec<u8> = mask.iter().flat_map(|&m| [m, m, m]).collect();
    std::fs::write(&mask_png, enc(&grey, 64, 64, None).unwrap()).unwrap();
    let paint = |extra: &[&str], out: &Path| {
        let mut args =
            vec!["generate", "--model", model.to_str().unwrap(), "--prompt", "a red circle on a blue background"];
        args.extend(["--negative-prompt", "", "--steps", "4", "--guidance", "7.5", "--scheduler", "euler"]);
        args.extend(["--precision", "f32", "--init-image", init_png.to_str().unwrap()]);
        args.extend(extra);
        args.extend(["--out", out.to_str().unwrap()]);
        let o = run(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        webdiffusion::pipeline::image::decode_png(&std::fs::read(out).unwrap()).unwrap()
    };
    let noise = ["--noise", case.to_str().unwrap(), "--mask", mask_png.to_str().unwrap()];
    let (raw, ..) = paint(&[&noise[..], &["--no-overlay"]].concat(), &tmp("inpaint-raw.png"));
    let worst = raw.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(worst <= 1, "the CLI's raw inpainting vs diffusers: {worst}/255");
    let (over, ..) = paint(&noise, &tmp("inpaint-over.png"));
    let weights = webdiffusion::pipeline::image::blur_mask(&mask, 64, 64, 4.0);
    let (mut kept, mut redrawn) = (0, 0);
    for (i, &w) in weights.iter().enumerate() {
        let px = |v: &[u8]| v[i * 3..i * 3 + 3].to_vec();
        if w == 0.0 {
            assert_eq!(px(&over), px(&init), "pixel {i} far from the mask is the original's");
            kept += 1;
        } else if w >= 0.999 {
            let d = px(&over).iter().zip(px(&raw)).map(|(a, b)| a.abs_diff(b)).max().unwrap();
            assert!(d <= 1, "pixel {i} deep in the mask is the generated one ({d})");
            redrawn += 1;
        }
    }
    assert!(kept > 500 && redrawn > 50, "{kept} kept, {redrawn} redrawn");
    // Outpainting 32 px left and down (the tiny model's size step): 96x96, the original where
    // the seam (3 sigma = 12 px) does not reach.
    let (out, w, h) = paint(&["--outpaint", "32,0,0,32", "--seed", "3"], &tmp("outpaint.png"));
    assert_eq!((w, h), (96, 96));
    for y in 0..52 {
        for x in 12..64 {
            let (o, i) = ((y * 96 + x + 32) * 3, (y * 64 + x) * 3);
            assert_eq!(out[o..o + 3], init[i..i + 3], "outpainted ({x}, {y}) keeps the original");
        }
    }
    let o = run(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "x",
        "--mask",
        "m.png",
        "--out",
        "/tmp/n.png",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("need --init-image"), "{err}");
}
