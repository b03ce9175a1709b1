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

    // diffusers' reading cuts a long prompt at 77 tokens, and says so.
    let long = "a photo of a cat ".repeat(20);
    let out = cli().args(["tokenize", "--model", model, "--prompt-syntax", "diffusers", &long]).output().unwrap();
    let ids: Vec<u32> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((ids.len(), ids[76]), (77, 49407));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("102 tokens; 25 were dropped"), "{stderr}");
    // A1111's (the default) takes all 100 tokens as two chunks, each BOS … EOS, SD 2's pad after.
    let out = cli().args(["tokenize", "--model", model, &long]).output().unwrap();
    let ids: Vec<u32> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids.len(), 154);
    assert_eq!((ids[0], ids[76], ids[77], ids[77 + 26], ids[77 + 27]), (49406, 49407, 49406, 49407, 0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("100/150 tokens in 2 chunk(s)"), "{stderr}");

    let out = cli().args(["tokenize", "--model", "/nonexistent", "x"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no tokenizer/vocab.json"));
}

fn fixture(model: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(model)
}

/// A path in this test process's scratch folder.
fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("webdiffusion-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

mod generate {
    use super::{cli, fixture, tmp};
    use std::path::Path;

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

    /// The CLI reproduces a diffusers run given its latents and every noise draw: Euler
    /// Ancestral (a draw per step) and DDIM with `--eta 1` (also a draw per step).
    #[test]
    fn generate_replays_diffusers_from_latents_and_noise_files() {
        for (name, scheduler, steps, eta, sampler) in [
            ("euler_a_2", "euler-a", "2", "0", "Steps: 2, Sampler: Euler a, CFG scale: 7.5"),
            ("ddim_eta1_3", "ddim", "3", "1", "Steps: 3, Sampler: DDIM, CFG scale: 7.5"),
        ] {
            let case = fixture("tiny-sd2").join(format!("pipeline/{name}.safetensors"));
            let (latents, noise, out, out_latents) = (
                tmp(&format!("{name}-l.safetensors")),
                tmp(&format!("{name}-n.safetensors")),
                tmp(&format!("{name}-out.png")),
                tmp(&format!("{name}-out-l.safetensors")),
            );
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
                steps,
                "--guidance",
                "7.5",
                "--scheduler",
                scheduler,
                "--eta",
                eta,
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
            assert!(status.status.success(), "{name}: {}", String::from_utf8_lossy(&status.stderr));
            let want = tensor(&case, "image");
            let got = decode(&out);
            assert_eq!(got.len(), want.len());
            assert!(
                got.iter().zip(&want).all(|(a, b)| a.abs_diff(*b) <= 1),
                "{name}: PNG differs from diffusers by more than 1/255"
            );
            let (got, want) = (f32s(&tensor(&out_latents, "latents")), f32s(&tensor(&case, "final_latents")));
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() <= 1e-4 * scale), "{name}: final latents");
            let png = std::fs::read(&out).unwrap();
            assert!(String::from_utf8_lossy(&png).contains(sampler), "{name}: parameters text");
        }
    }

    /// SDXL from the command line, the text encoders and the U-Net in turns (`--low-memory`):
    /// diffusers' StableDiffusionXLPipeline at guidance 5 with DPM++ 2M (its missing negative
    /// prompt zeroed), given its latents.
    #[test]
    fn generate_sdxl_in_turns_replays_diffusers() {
        let case = fixture("tiny-sdxl").join("pipeline/dpmpp2m_g5_3.safetensors");
        let (latents, out) = (tmp("xl-l.safetensors"), tmp("xl-out.png"));
        extract(&case, "latents", "latents", &latents);
        let model = fixture("tiny-sdxl");
        let status = cli()
            .args(["generate", "--model", model.to_str().unwrap(), "--prompt", "a red circle on a blue background"])
            .args(["--steps", "3", "--guidance", "5", "--scheduler", "dpm++2m", "--width", "64", "--height", "64"])
            .args(["--precision", "f32", "--low-memory", "--latents", latents.to_str().unwrap()])
            .args(["--out", out.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        let (got, want) = (decode(&out), tensor(&case, "image"));
        assert_eq!(got.len(), want.len());
        assert!(got.iter().zip(&want).all(|(a, b)| a.abs_diff(*b) <= 1), "the PNG differs from diffusers by > 1/255");
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
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            // The error is one last line (no cause chain), and no other line says "error" (no
            // display-probe noise before it).
            let last = err.trim_end().lines().last().unwrap_or_default();
            assert!(last.starts_with("error: ") && err.matches("error: ").count() == 1, "{err:?}");
            err
        };
        assert!(run(&["--width", "60"]).contains("multiples of 32"));
        assert!(run(&["--scheduler", "nope"]).contains("unknown scheduler nope"));
        assert!(run(&["--eta", "2"]).contains("eta must be 0 to 1 (got 2)"));
        assert!(run(&["--steps", "0"]).contains("steps must be 1 to 1000 (got 0)"));
        assert!(run(&["--steps", "100000"]).contains("steps must be 1 to 1000"));
        assert!(run(&["--width", "8192"]).contains("at most 4096 (got 8192x"));
        assert!(run(&["--noise", "/nonexistent.safetensors"]).contains("/nonexistent.safetensors"));
    }

    /// Bad `convert` arguments stop before anything is written; the model folder is never an
    /// output (it used to lose its manifest, and a shard size of 0 looped forever).
    #[test]
    fn convert_rejects_bad_arguments_before_writing() {
        let model = fixture("tiny-sd1");
        let listing = |dir: &Path| {
            let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap())
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
                .collect();
            v.sort();
            v
        };
        let before = listing(&model);
        let run = |out: &Path, extra: &[&str]| {
            let o = cli()
                .args([
                    "convert",
                    "--model",
                    model.to_str().unwrap(),
                    "--out",
                    out.to_str().unwrap(),
                    "--quant",
                    "q4_0",
                ])
                .args(extra)
                .output()
                .unwrap();
            assert!(!o.status.success());
            String::from_utf8_lossy(&o.stderr).into_owned()
        };
        let out = tmp("never-written");
        for bad in ["0", "4096", "17592186044416"] {
            let err = run(&out, &["--shard-mib", bad]);
            assert!(err.contains(&format!("--shard-mib {bad}")) && err.contains("1 to 2048 MiB"), "{err}");
        }
        assert!(!out.exists(), "nothing was written");
        let err = run(&model, &[]);
        assert!(err.contains("inside the model's folder") && err.contains("nothing was changed"), "{err}");
        assert_eq!(listing(&model), before, "the model folder is untouched");
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

/// `convert`, then `generate` from the package folder and over HTTP, equal to quantize-on-load.
mod package {
    use super::{cli, fixture, tmp};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// A static file server on 127.0.0.1 with HTTP Range, counting requests and body bytes.
    struct Server {
        base: String,
        requests: Arc<AtomicU64>,
        ranged: Arc<AtomicU64>,
        bytes: Arc<AtomicU64>,
    }

    fn serve(root: PathBuf) -> Server {
        serve_with(root, Fault::None)
    }

    /// How the server misbehaves.
    #[derive(Clone, Copy)]
    enum Fault {
        None,
        /// Answers a Range request with 200 and the whole file.
        IgnoresRange,
        /// Answers with the range one byte later than asked (and says so in Content-Range).
        ShiftedRange,
    }

    fn serve_with(root: PathBuf, fault: Fault) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/", listener.local_addr().unwrap());
        let (requests, ranged, bytes) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let counters = (requests.clone(), ranged.clone(), bytes.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (root, (requests, ranged, bytes)) = (root.clone(), counters.clone());
                std::thread::spawn(move || loop {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
                    let mut range = None;
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some(r) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                            let (a, b) = r.trim().split_once('-').unwrap();
                            range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()));
                        }
                    }
                    requests.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut file) = std::fs::File::open(root.join(&path)) else {
                        write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").unwrap();
                        continue;
                    };
                    let mut all = Vec::new();
                    file.read_to_end(&mut all).unwrap();
                    let range = match (fault, range) {
                        (Fault::IgnoresRange, _) => None,
                        (Fault::ShiftedRange, Some((a, b))) => Some((a + 1, b + 1)),
                        (_, r) => r,
                    };
                    let (status, body, extra) = match range {
                        Some((a, b)) => {
                            ranged.fetch_add(1, Ordering::SeqCst);
                            let b = b.min(all.len() - 1);
                            (
                                "206 Partial Content",
                                &all[a..=b],
                                format!("Content-Range: bytes {a}-{b}/{}\r\n", all.len()),
                            )
                        }
                        None => ("200 OK", &all[..], String::new()),
                    };
                    bytes.fetch_add(body.len() as u64, Ordering::SeqCst);
                    write!(stream, "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}\r\n", body.len()).unwrap();
                    stream.write_all(body).unwrap();
                });
            }
        });
        Server { base, requests, ranged, bytes }
    }

    pub(crate) fn run(args: &[&str]) -> std::process::Output {
        cli().args(args).output().unwrap()
    }

    /// A prompt as a phone keyboard types it (’) with CJK: it must survive into the PNG.
    pub(crate) const PROMPT: &str = "a red circle’s 富士山";

    pub(crate) fn generate(model: &str, extra: &[&str], out: &Path) -> Vec<u8> {
        generate_prompt(model, PROMPT, extra, out)
    }

    /// `generate` with another prompt (it must contain `PROMPT`, which the PNG keeps).
    pub(crate) fn generate_prompt(model: &str, prompt: &str, extra: &[&str], out: &Path) -> Vec<u8> {
        let mut args = vec!["generate", "--model", model, "--prompt", prompt, "--steps", "2", "--seed", "5"];
        args.extend(["--width", "64", "--height", "64", "--precision", "f32", "--scheduler", "euler"]);
        args.extend(extra);
        args.extend(["--out", out.to_str().unwrap()]);
        let o = run(&args);
        assert!(o.status.success(), "{model}: {}", String::from_utf8_lossy(&o.stderr));
        let png = std::fs::read(out).unwrap();
        assert!(String::from_utf8_lossy(&png).contains(PROMPT), "the PNG's parameters keep the prompt as typed");
        webdiffusion::pipeline::image::decode_png(&png).unwrap().0
    }

    #[test]
    fn convert_then_generate_from_folder_and_url() {
        let model = fixture("tiny-sd1");
        let pkg = tmp("q4");
        let o = run(&[
            "convert",
            "--model",
            model.to_str().unwrap(),
            "--out",
            pkg.to_str().unwrap(),
            "--quant",
            "q4_0",
            "--shard-mib",
            "1",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let report = String::from_utf8_lossy(&o.stdout);
        assert!(report.contains("unet") && report.contains("q4_0"), "{report}");
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(pkg.join("manifest.json")).unwrap()).unwrap();
        let shards = manifest["shards"].as_array().unwrap();
        assert!(shards.len() >= 3 && shards.iter().all(|s| s["size"].as_u64().unwrap() <= 1 << 20));

        let from_pkg = generate(pkg.to_str().unwrap(), &[], &tmp("pkg.png"));
        let on_load = generate(model.to_str().unwrap(), &["--quant", "q4_0"], &tmp("onload.png"));
        assert_eq!(from_pkg, on_load, "package and quantize-on-load images differ");
        let dense = generate(model.to_str().unwrap(), &[], &tmp("dense.png"));
        assert_ne!(from_pkg, dense, "q4_0 must change some pixel");

        let server = serve(pkg.clone());
        assert_eq!(generate(&server.base, &[], &tmp("url.png")), from_pkg);
        let shard_bytes: u64 = shards.iter().map(|s| s["size"].as_u64().unwrap()).sum();
        let got = server.bytes.load(Ordering::SeqCst);
        assert!(got >= shard_bytes && got < shard_bytes + 3_000_000, "{got} bytes served for {shard_bytes} of shards");

        // A diffusers folder over HTTP: headers, then one range per tensor.
        let server = serve(model.clone());
        assert_eq!(generate(&server.base, &["--quant", "q4_0"], &tmp("url2.png")), from_pkg);
        let (requests, ranged) = (server.requests.load(Ordering::SeqCst), server.ranged.load(Ordering::SeqCst));
        assert!(ranged > 100 && ranged + 20 > requests, "{requests} requests, {ranged} with Range");
    }

    /// A server that ignores Range (every tensor would fetch the whole file again) or answers
    /// another range than asked is refused with one line naming the URL, not used.
    #[test]
    fn a_server_that_ignores_or_shifts_ranges_is_refused() {
        let model = fixture("tiny-sd1");
        for (fault, want) in
            [(Fault::IgnoresRange, "ignores HTTP Range requests"), (Fault::ShiftedRange, "the server sent \"bytes 1-")]
        {
            let server = serve_with(model.clone(), fault);
            let out = tmp("refused.png");
            let o = run(&[
                "generate",
                "--model",
                &server.base,
                "--prompt",
                "x",
                "--steps",
                "1",
                "--out",
                out.to_str().unwrap(),
            ]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success() && err.contains(&server.base) && err.contains(want), "{err}");
        }
    }

    #[test]
    fn a_damaged_shard_is_named() {
        let pkg = tmp("q8");
        let model = fixture("tiny-sd2");
        let o =
            run(&["convert", "--model", model.to_str().unwrap(), "--out", pkg.to_str().unwrap(), "--quant", "q8_0"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let shard = pkg.join("shards/unet-000.bin");
        let mut bytes = std::fs::read(&shard).unwrap();
        bytes[1234] ^= 1;
        std::fs::write(&shard, &bytes).unwrap();
        let o = run(&[
            "generate",
            "--model",
            pkg.to_str().unwrap(),
            "--prompt",
            "x",
            "--steps",
            "1",
            "--out",
            tmp("x.png").to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("shards/unet-000.bin") && err.contains("corrupt"), "{err}");
        std::fs::write(&shard, &bytes[..1000]).unwrap();
        let o = run(&[
            "generate",
            "--model",
            pkg.to_str().unwrap(),
            "--prompt",
            "x",
            "--steps",
            "1",
            "--out",
            tmp("x.png").to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("shards/unet-000.bin") && err.contains("truncated"), "{err}");
    }
}

/// `webdiffusion bench --json` on `tests/fixtures/mid-arch` (SD 1.5's layout at 30% of its
/// width: 100 M parameters, synthetic q4_0 weights) under WebGPU's default limits: a real run —
/// text encoder, one guided U-Net step (batch 2), VAE decode — with a 72 MB budget for the
/// whole run. The planner must tile the VAE decode to fit what the weights leave (the VAE in
/// f32 under force_upcast: its weights alone take 12 MB of it); an untiled decode (an
/// accounting run without a budget) would not fit.
#[test]
fn bench_mid_size_arch_under_default_limits_keeps_the_planned_budget() {
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["--limits", "default", "bench", "--arch", "tests/fixtures/mid-arch", "--size", "128"];
        args.extend(extra);
        args.push("--json");
        let out = cli().args(&args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    };
    let budget = 72e6;
    let r = run(&["--budget-mb", "72"]);
    eprintln!("{}", serde_json::to_string(&r).unwrap());
    assert_eq!(r["max_storage_binding"], 128u64 << 20);
    assert_eq!(r["max_buffer_size"], 256u64 << 20);
    assert_eq!(r["dry_run"], false);
    // mid-arch's VAE config does not say force_upcast=false: f32 whatever the rest computes in.
    assert_eq!(r["vae_compute"], "f32");
    assert!(r["vae_tiling"]["tile"].as_u64().is_some(), "the decode was not tiled");
    let stages = r["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert_eq!(names, ["text_encoder", "unet_step", "vae_decode"]);
    for s in stages {
        assert!(s["ms"].as_f64().unwrap() > 0.0 && s["gflop"].as_f64().unwrap() > 1.0, "{s}");
        assert!(s["largest_binding"].as_u64().unwrap() <= 128 << 20, "{s}");
    }
    // 565 kernels per U-Net step for this layout (the same as SD 1.5's; 609 before the ResNet
    // blocks' skip add moved into conv2's epilogue, 587 before their time embedding became
    // conv1's per-image bias).
    assert_eq!(stages[1]["dispatches"], 565);
    let vae_peak = stages[2]["peak_bytes"].as_f64().unwrap();
    assert!(vae_peak <= budget, "VAE decode peaked at {vae_peak} bytes, over the {budget} budget");
    let untiled = run(&["--dry", "--budget-mb", "0"]);
    assert!(untiled["vae_tiling"].is_null());
    let untiled_peak = untiled["stages"][2]["peak_bytes"].as_f64().unwrap();
    assert!(untiled_peak > budget, "an untiled decode fits too ({untiled_peak}): the test proves nothing");
    // --no-decode stops after the U-Net with the same U-Net work.
    let head = run(&["--dry", "--no-decode"]);
    assert_eq!(head["decoded"], false);
    let names: Vec<&str> = head["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert_eq!(names, ["text_encoder", "unet_step"]);
    assert_eq!(head["stages"][1]["gflop"], stages[1]["gflop"]);
    assert_eq!(untiled["decoded"], true);
}

/// The fuzzer's short run (the long one's figures are in BENCHMARKS.md): every parser of untrusted
/// input, mutated from the fixtures, with no crash.
#[test]
fn fuzzing_every_parser_briefly_finds_no_crash() {
    let out = tmp("fuzz-crashes");
    let o = cli()
        .args(["fuzz", "--seconds", "0.5", "--out", out.to_str().unwrap(), "--fixture"])
        .arg(fixture("tiny-sd1"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{report}\n{}", String::from_utf8_lossy(&o.stderr));
    for target in [
        "Safetensors",
        "Manifest",
        "UnetConfig",
        "VaeConfig",
        "ClipConfig",
        "SchedulerConfig",
        "Tokenizer",
        "Png",
        "Lora",
        "Prompt",
        "Load",
    ] {
        let line =
            report.lines().find(|l| l.starts_with(target)).unwrap_or_else(|| panic!("{target} missing:\n{report}"));
        assert!(line.ends_with(" 0 crashes"), "{line}");
        let execs: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        // A whole load (convert, package, GPU upload twice) takes 0.1-0.3 s in the debug build.
        assert!(execs >= if target == "Load" { 1 } else { 100 }, "{line}");
    }
    assert!(report.contains("loads succeeded"), "{report}");
}

/// A file that never ends (`/dev/zero`) given as a policy, or linked in as a model's config, is
/// refused at once with one line: whole-file reads take regular files of a bounded size only.
#[test]
fn endless_files_are_refused_not_read() {
    let model = tmp("endless-model");
    for dir in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] {
        std::fs::create_dir_all(model.join(dir)).unwrap();
    }
    for f in [
        "model_index.json",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "scheduler/scheduler_config.json",
    ] {
        std::fs::copy(fixture("tiny-sd1").join(f), model.join(f)).unwrap();
    }
    std::os::unix::fs::symlink("/dev/zero", model.join("unet/config.json")).unwrap();
    let runs = [
        cli()
            .args(["convert", "--quant", "q4_0", "--policy", "/dev/zero", "--model"])
            .arg(fixture("tiny-sd1"))
            .arg("--out")
            .arg(tmp("endless-pkg"))
            .output()
            .unwrap(),
        cli()
            .args(["generate", "--prompt", "x", "--steps", "1", "--width", "64", "--height", "64", "--model"])
            .arg(&model)
            .arg("--out")
            .arg(tmp("endless.png"))
            .output()
            .unwrap(),
    ];
    for o in runs {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        let last = err.lines().last().unwrap_or("");
        assert!(last.starts_with("error: ") && last.contains("not a regular file"), "{err}");
    }
}

/// Found by a corpus of hostile inputs: `--out` inside the model's folder wrote the package into
/// the input; an infinite guidance ran the whole generation to a NaN image; a missing output
/// folder was found only after the image was made. Each is now refused up front, in one line.
#[test]
fn output_and_guidance_are_checked_before_any_work() {
    let model = tmp("inside-model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["model_index.json", "unet/config.json"] {
        std::fs::create_dir_all(model.join(f).parent().unwrap()).unwrap();
        std::fs::copy(fixture("tiny-sd1").join(f), model.join(f)).unwrap();
    }
    let before: Vec<_> = walk(&model);
    let o = cli()
        .args(["convert", "--quant", "q4_0", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(model.join("unet/pkg"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("inside the model's folder"), "{err}");
    assert_eq!(walk(&model), before, "nothing was written into the model");

    let gen = |extra: &[&str], out: &std::path::Path| {
        let o = cli()
            .args(["generate", "--prompt", "x", "--steps", "1", "--width", "64", "--height", "64", "--model"])
            .arg(fixture("tiny-sd1"))
            .args(extra)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (code, err) = gen(&[], &tmp("no-such-folder/x.png"));
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no-such-folder") && err.contains("does not exist"), "{err}");
    for g in ["inf", "NaN", "1e30"] {
        let (code, err) = gen(&["--guidance", g], &tmp("g.png"));
        assert_eq!(code, Some(1), "{g}: {err}");
        assert!(err.lines().last().unwrap_or("").contains("guidance must be 0 to 100"), "{g}: {err}");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out.sort();
    out
}

// Users' own files (single-file checkpoints, LoRAs) and painting with an image (inpainting,
// outpainting, several images, TAESD), with the package module's helpers.
#[path = "cli/gpu_bench.rs"]
mod gpu_bench;
#[path = "cli/painting.rs"]
mod painting;
#[path = "cli/user_files.rs"]
mod user_files;
