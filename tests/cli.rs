//! The CLI as a user meets it: `info` on a working device, and a clear message (no panic) where
//! there is no usable GPU.

use std::process::Command;

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_webdiffusion"))
}

#[test]
fn info_prints_adapter_and_limits() {
    let out = cli().arg("info").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for field in ["adapter:", "backend:", "shader-f16:", "max storage binding:", "max buffer size:"] {
        assert!(stdout.contains(field), "missing {field} in\n{stdout}");
    }
}

#[test]
fn no_adapter_is_a_clear_error() {
    // Metal does not exist on Linux: the same situation as a machine without any GPU driver.
    let out = cli().arg("info").env("WGPU_BACKEND", "metal").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no GPU adapter found"), "{stderr}");
    assert!(stderr.contains("mesa-vulkan-drivers"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn selftest_passes() {
    let out = cli().arg("selftest").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches(" ok").count(), stdout.lines().count(), "{stdout}");
}

#[test]
fn tokenize_prints_77_ids_and_reports_truncation() {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-sd2");
    let out = cli().args(["tokenize", "--model", model, "wow!"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ids: Vec<u32> = serde_json::from_slice(&out.stdout).unwrap();
    // SD 2 pads with `!` (id 0) but keeps a typed `!` as text (256), as OpenCLIP does.
    assert_eq!(&ids[..5], &[49406, 2781, 256, 49407, 0]);
    assert_eq!(ids.len(), 77);

    let long = "a photo of a cat ".repeat(20);
    let out = cli().args(["tokenize", "--model", model, &long]).output().unwrap();
    let ids: Vec<u32> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((ids.len(), ids[76]), (77, 49407));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("102 tokens; 25 were dropped"), "{stderr}");

    let out = cli().args(["tokenize", "--model", "/nonexistent", "x"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no tokenizer/vocab.json"));
}

mod generate {
    use super::cli;
    use std::path::{Path, PathBuf};

    fn fixture(model: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(model)
    }

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("webdiffusion-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// Copies tensor `from` of a case file into its own safetensors file as `to`.
    fn extract(case: &Path, from: &str, to: &str, out: &Path) {
        let bytes = std::fs::read(case).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor(from).unwrap();
        let view = safetensors::tensor::TensorView::new(t.dtype(), t.shape().to_vec(), t.data()).unwrap();
        std::fs::write(out, safetensors::serialize([(to, view)], None).unwrap()).unwrap();
    }

    fn tensor(path: &Path, name: &str) -> Vec<u8> {
        let bytes = std::fs::read(path).unwrap();
        safetensors::SafeTensors::deserialize(&bytes).unwrap().tensor(name).unwrap().data().to_vec()
    }

    fn f32s(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }

    fn decode(png: &Path) -> Vec<u8> {
        webdiffusion::pipeline::image::decode_png(&std::fs::read(png).unwrap()).unwrap().0
    }

    #[test]
    fn generate_replays_diffusers_from_latents_and_noise_files() {
        let case = fixture("tiny-sd2").join("pipeline/euler_a_2.safetensors");
        let (latents, noise, out, out_latents) =
            (tmp("l.safetensors"), tmp("n.safetensors"), tmp("out.png"), tmp("out-l.safetensors"));
        extract(&case, "latents", "latents", &latents);
        extract(&case, "noise", "noise", &noise);
        let model = fixture("tiny-sd2");
        let args = [
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "a red circle on a blue background",
            "--negative-prompt",
            "",
            "--steps",
            "2",
            "--guidance",
            "7.5",
            "--scheduler",
            "euler-a",
            "--width",
            "64",
            "--height",
            "64",
            "--precision",
            "f32",
        ];
        let status = cli()
            .args(args)
            .args(["--latents", latents.to_str().unwrap(), "--noise", noise.to_str().unwrap()])
            .args(["--out", out.to_str().unwrap(), "--out-latents", out_latents.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        let want = tensor(&case, "image");
        let got = decode(&out);
        assert_eq!(got.len(), want.len());
        assert!(
            got.iter().zip(&want).all(|(a, b)| a.abs_diff(*b) <= 1),
            "PNG differs from diffusers by more than 1/255"
        );
        let (got, want) = (f32s(&tensor(&out_latents, "latents")), f32s(&tensor(&case, "final_latents")));
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() <= 1e-4 * scale));
        let png = std::fs::read(&out).unwrap();
        assert!(String::from_utf8_lossy(&png).contains("Steps: 2, Sampler: Euler a, CFG scale: 7.5"));
    }

    #[test]
    fn generate_img2img_from_a_png() {
        let case = fixture("tiny-sd1").join("pipeline/img2img_ddim_4.safetensors");
        let (init, noise, out) = (tmp("init.png"), tmp("n2.safetensors"), tmp("out2.png"));
        let rgb = tensor(&case, "init_image");
        std::fs::write(&init, webdiffusion::pipeline::image::encode_png(&rgb, 64, 64, None).unwrap()).unwrap();
        extract(&case, "noise", "noise", &noise);
        let model = fixture("tiny-sd1");
        let out_status = cli()
            .args(["generate", "--model", model.to_str().unwrap(), "--prompt", "a red circle on a blue background"])
            .args([
                "--negative-prompt",
                "",
                "--steps",
                "4",
                "--guidance",
                "7.5",
                "--scheduler",
                "ddim",
                "--precision",
                "f32",
            ])
            .args(["--init-image", init.to_str().unwrap(), "--strength", "0.6", "--noise", noise.to_str().unwrap()])
            .args(["--out", out.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out_status.status.success(), "{}", String::from_utf8_lossy(&out_status.stderr));
        let want = tensor(&case, "image");
        assert!(decode(&out).iter().zip(&want).all(|(a, b)| a.abs_diff(*b) <= 1));
    }

    #[test]
    fn generate_rejects_bad_arguments_clearly() {
        let model = fixture("tiny-sd2");
        let run = |extra: &[&str]| {
            let o = cli()
                .args(["generate", "--model", model.to_str().unwrap(), "--prompt", "x", "--out", "/tmp/never.png"])
                .args(extra)
                .output()
                .unwrap();
            assert!(!o.status.success());
            String::from_utf8_lossy(&o.stderr).into_owned()
        };
        assert!(run(&["--width", "60"]).contains("multiples of 32"));
        assert!(run(&["--scheduler", "pndm"]).contains("unknown scheduler pndm"));
        assert!(run(&["--steps", "0"]).contains("steps must be at least 1"));
        assert!(run(&["--noise", "/nonexistent.safetensors"]).contains("/nonexistent.safetensors"));
    }

    #[test]
    fn the_same_seed_gives_the_same_image() {
        let model = fixture("tiny-sd1");
        let gen = |out: &Path, seed: &str| {
            let o = cli()
                .args([
                    "generate",
                    "--model",
                    model.to_str().unwrap(),
                    "--prompt",
                    "a cat",
                    "--steps",
                    "2",
                    "--scheduler",
                    "euler-a",
                ])
                .args([
                    "--width",
                    "64",
                    "--height",
                    "64",
                    "--seed",
                    seed,
                    "--precision",
                    "f32",
                    "--out",
                    out.to_str().unwrap(),
                ])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            decode(out)
        };
        let (a, b, c) = (gen(&tmp("s1.png"), "7"), gen(&tmp("s2.png"), "7"), gen(&tmp("s3.png"), "8"));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
