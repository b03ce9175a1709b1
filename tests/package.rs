//! Packages: convert → load gives exactly the weights of quantize-on-load, shards stay within
//! their size, damaged shards are named, and quantized networks stay close to f32.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use webdiffusion::gpu::DType;
use webdiffusion::models::convert::convert;
use webdiffusion::models::loader::{DirSource, FileSource, LoadOptions, MemorySource};
use webdiffusion::models::package::{Manifest, MANIFEST};
use webdiffusion::models::parity;
use webdiffusion::models::stream::{PieceSink, StreamConverter};
use webdiffusion::models::weights::convert_bytes;
use webdiffusion::pipeline::generate::{Generated, Request, StableDiffusion};
use webdiffusion::pipeline::prompt::PromptSyntax;
use webdiffusion::pipeline::rng::NormalRng;
use webdiffusion::pipeline::schedulers::SchedulerKind;
use webdiffusion::quant::{closeness, QuantPolicy, StoreType};
use webdiffusion::Error;

fn dir(model: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(model)
}

/// Shard bytes by file, and the length of each piece (to drop stale pieces on a resume).
#[derive(Default)]
struct MemSink(HashMap<String, Vec<u8>>, HashMap<String, Vec<usize>>);

impl PieceSink for MemSink {
    fn append(&mut self, file: &str, index: u32, bytes: &[u8]) -> webdiffusion::Result<()> {
        let shard = self.0.entry(file.to_string()).or_default();
        let pieces = self.1.entry(file.to_string()).or_default();
        assert_eq!(index as usize, pieces.len(), "{file}: pieces out of order");
        shard.extend_from_slice(bytes);
        pieces.push(bytes.len());
        Ok(())
    }
}

/// A package of `model` in memory, and its manifest.
fn package(model: &str, quant: &str, policy: &QuantPolicy, max_shard: usize) -> (MemorySource, Manifest) {
    let mut sink = MemSink::default();
    let done = convert(&DirSource(dir(model)), common::gpu(), quant, policy, max_shard, &mut sink).unwrap();
    let mut files = sink.0;
    files.insert(MANIFEST.into(), serde_json::to_vec(&done.manifest).unwrap());
    (MemorySource { files, name: format!("{model} {quant} package") }, done.manifest)
}

fn generate(src: &dyn FileSource, opts: &LoadOptions, steps: usize) -> Generated {
    let sd = StableDiffusion::load(src, common::gpu(), opts).unwrap();
    let req = Request {
        prompt: "a red circle".into(),
        negative_prompt: None,
        steps,
        guidance: 7.5,
        width: 64,
        height: 64,
        scheduler: SchedulerKind::Euler,
        prompt_syntax: PromptSyntax::A1111,
        eta: 0.0,
        init: None,
    };
    pollster::block_on(sd.generate(&req, None, &mut NormalRng::new(7), &mut |_| true)).unwrap()
}

fn quantized(policy: &QuantPolicy) -> LoadOptions {
    LoadOptions { quant: Some(Arc::new(policy.clone())), ..LoadOptions::new(DType::F32) }
}

#[test]
fn packages_load_to_exactly_the_weights_of_quantize_on_load() {
    let max = 200_000;
    let mut sizes = Vec::new();
    for quant in ["f16", "q8_0", "q4_0"] {
        let policy = QuantPolicy::standard(StoreType::parse(quant).unwrap());
        let (pkg, manifest) = package("tiny-sd1", quant, &policy, max);
        assert_eq!(Manifest::parse(&pkg.files[MANIFEST]).unwrap().tensors, manifest.tensors);
        assert!(manifest.shards.len() > 3, "{quant}: {} shards", manifest.shards.len());
        assert!(manifest.shards.iter().all(|s| s.size as usize <= max && pkg.files[&s.file].len() == s.size as usize));
        // The 49408-token embedding is larger than a shard: it must run over several.
        let emb = manifest.tensors.iter().find(|t| t.name.ends_with("token_embedding.weight")).unwrap();
        assert!(emb.length as usize > max && emb.dtype == StoreType::F16);
        let n_quant = manifest.tensors.iter().filter(|t| t.dtype.quant().is_some()).count();
        assert_eq!(n_quant > 0, quant != "f16", "{quant}: {n_quant} quantized tensors");
        sizes.push(manifest.total_bytes());

        let from_package = generate(&pkg, &LoadOptions::new(DType::F32), 3);
        let on_load = generate(&DirSource(dir("tiny-sd1")), &quantized(&policy), 3);
        assert_eq!(from_package.latents, on_load.latents, "{quant}: package and quantize-on-load differ");
        assert_eq!(from_package.rgb, on_load.rgb);
    }
    assert!(sizes[0] > sizes[1] && sizes[1] > sizes[2], "f16 > q8_0 > q4_0 in bytes: {sizes:?}");
}

#[test]
fn damaged_shards_are_named() {
    let policy = QuantPolicy::standard(StoreType::Q8_0);
    let (pkg, manifest) = package("tiny-sd2", "q8_0", &policy, 200_000);
    let shard = manifest.shards.iter().find(|s| s.file.contains("unet")).unwrap().file.clone();
    let load = |files: &HashMap<String, Vec<u8>>| {
        let src = MemorySource { files: files.clone(), name: "damaged".into() };
        match StableDiffusion::load(&src, common::gpu(), &LoadOptions::new(DType::F32)) {
            Ok(_) => panic!("a damaged package loaded"),
            Err(e) => e,
        }
    };
    let mut files = pkg.files.clone();
    let len = files[&shard].len();
    files.get_mut(&shard).unwrap().truncate(len - 1000);
    let err = load(&files);
    assert!(matches!(&err, Error::Shard { file, .. } if *file == shard), "{err}");
    assert!(err.to_string().contains("truncated") && err.to_string().contains(&shard), "{err}");

    let mut files = pkg.files.clone();
    files.get_mut(&shard).unwrap()[len / 2] ^= 0x40;
    let err = load(&files).to_string();
    assert!(err.contains(&shard) && err.contains("corrupt") && err.contains("sha256"), "{err}");

    let mut files = pkg.files.clone();
    files.remove(&shard);
    let err = load(&files).to_string();
    assert!(err.contains(&shard) && err.contains("missing"), "{err}");

    let mut files = pkg.files.clone();
    let text = String::from_utf8(files[MANIFEST].clone()).unwrap().replacen("\"version\":2", "\"version\":9", 1);
    files.insert(MANIFEST.into(), text.into_bytes());
    let err = load(&files).to_string();
    assert!(err.contains("version 9 is not supported"), "{err}");
}

/// Every quantizable matrix of every network in `format` (the VAE included), to measure each.
/// Streams `model`'s weight files through a `StreamConverter` cut into pieces of the given
/// sizes (cycled), dropping the converter and resuming from its checkpoint after each push
/// numbered in `resume_after`, as a reloaded page does. With `lag > 0` quantizing slices go out
/// as jobs, as to the page's conversion workers, and up to `lag` of them stay out between pushes
/// (a resume drops the ones out, as a reload does).
fn stream_package(model: &str, quant: &str, cuts: &[usize], resume_after: &[usize], lag: usize) -> (MemSink, Manifest) {
    let src = DirSource(dir(model));
    let components = webdiffusion::models::component::Component::present(|p| src.read(p).unwrap().is_some());
    let weights: Vec<_> = components
        .into_iter()
        .map(|component| {
            let path = webdiffusion::models::convert::weights_file(&src, component).unwrap();
            let bytes = src.read(&path).unwrap().unwrap();
            (path, bytes, false)
        })
        .collect();
    stream_files(&src, &weights, quant, cuts, resume_after, lag)
}

/// `stream_package` over `weights` (path, bytes, whether a single-file checkpoint), the small
/// files from `src`.
fn stream_files(
    src: &dyn FileSource,
    weights: &[(String, Vec<u8>, bool)],
    quant: &str,
    cuts: &[usize],
    resume_after: &[usize],
    lag: usize,
) -> (MemSink, Manifest) {
    let policy = QuantPolicy::standard(StoreType::parse(quant).unwrap());
    let mut files = std::collections::BTreeMap::new();
    for path in webdiffusion::models::component::SMALL_FILES.map(|f| f.path) {
        if let Some(b) = src.read(path).unwrap() {
            files.insert(path.to_string(), String::from_utf8(b).unwrap());
        }
    }
    let gpu = common::gpu();
    let mut sink = MemSink::default();
    let mut conv = StreamConverter::new(gpu, quant, &policy, 200_000, files).unwrap();
    conv.set_offload(lag > 0);
    let mut out = std::collections::VecDeque::new();
    let mut pushes = 0;
    for (path, bytes, single) in weights {
        if *single {
            conv.begin_single_file(path, bytes.len() as u64, None, None).unwrap();
        } else {
            conv.begin_file(path, bytes.len() as u64, None).unwrap();
        }
        let mut cut = cuts.iter().cycle();
        while (conv.position() as usize) < bytes.len() {
            let at = conv.position() as usize;
            let end = (at + cut.next().unwrap()).min(bytes.len());
            conv.push(&bytes[at..end], &mut sink).unwrap();
            for j in conv.take_jobs() {
                out.push_back(convert_bytes(&j.bytes, j.from, j.to, &j.name).unwrap());
            }
            while out.len() > lag {
                conv.complete(&out.pop_front().unwrap(), &mut sink).unwrap();
            }
            assert_eq!(conv.jobs_out(), out.len());
            pushes += 1;
            if resume_after.contains(&pushes) {
                let saved = conv.checkpoint().unwrap();
                drop(conv);
                out.clear();
                conv = StreamConverter::resume(gpu, &saved).unwrap();
                conv.set_offload(lag > 0);
                // Pieces written after the checkpoint are stale, as the page discards them.
                let keep: HashMap<String, u32> = conv.shard_pieces().into_iter().collect();
                sink.0.retain(|f, _| keep.contains_key(f));
                for (f, pieces) in &sink.1 {
                    if let (Some(&k), Some(bytes)) = (keep.get(f), sink.0.get_mut(f)) {
                        let len: usize = pieces.iter().take(k as usize).sum();
                        bytes.truncate(len);
                    }
                }
                let lens = sink.1.clone();
                sink.1 = lens
                    .into_iter()
                    .filter_map(|(f, p)| keep.get(&f).map(|&k| (f, p.into_iter().take(k as usize).collect())))
                    .collect();
            }
        }
        if let Some(first) = out.front() {
            let err = conv.end_file().unwrap_err().to_string();
            assert!(err.contains("not completed"), "{err}");
            let bad = conv.complete(&first[1..], &mut sink).unwrap_err().to_string();
            assert!(bad.contains("expected"), "{bad}");
        }
        for r in out.drain(..) {
            conv.complete(&r, &mut sink).unwrap();
        }
        assert!(conv.complete(&[0; 18], &mut sink).is_err(), "a result with no job out is refused");
        conv.end_file().unwrap();
    }
    let done = conv.finish().unwrap();
    (sink, done.manifest)
}

#[test]
fn conversion_while_streaming_equals_convert_byte_for_byte() {
    let policy = QuantPolicy::standard(StoreType::Q4_0);
    let (whole, manifest) = package("tiny-sd1", "q4_0", &policy, 200_000);
    assert!(manifest.tensors.iter().all(|t| t.sha256.is_some()));
    // Cuts, resumes, and how many jobs stay out (0: quantized by the converter itself).
    let cases: [(&[usize], &[usize], usize); 6] = [
        (&[1, 7, 4093, 65536, 3], &[], 0),
        (&[100_003, 17], &[1, 2, 3, 9, 10, 30, 31, 32, 50, 77], 0),
        (&[250_000], &[3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20], 0),
        (&[1, 7, 4093, 65536, 3], &[], 1),
        (&[100_003, 17], &[1, 2, 3, 9, 10, 30, 31, 32, 50, 77], 5),
        (&[250_000], &[3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20], 1000),
    ];
    for (cuts, resume, lag) in cases {
        let (streamed, m) = stream_package("tiny-sd1", "q4_0", cuts, resume, lag);
        assert_eq!(serde_json::to_string(&m).unwrap(), serde_json::to_string(&manifest).unwrap(), "cuts {cuts:?}");
        let mut names: Vec<_> = streamed.0.keys().collect();
        names.sort();
        assert_eq!(names.len(), manifest.shards.len());
        for s in &manifest.shards {
            assert!(
                streamed.0[&s.file] == whole.files[&s.file],
                "{} differs (cuts {cuts:?}, resume {resume:?}, lag {lag})",
                s.file
            );
        }
    }
}

/// A single-file checkpoint streams as the page streams it (cut anywhere, resumed from its
/// checkpoints, quantized by jobs): its names mapped and SD 2's fused q/k/v cut while the bytes
/// pass, into exactly the package `convert` writes for it; each shard holds one component.
#[test]
fn a_single_file_checkpoint_streams_into_the_package_convert_writes() {
    use webdiffusion::models::single_file::SingleFile;
    let policy = QuantPolicy::standard(StoreType::Q4_0);
    for model in ["tiny-sd1", "tiny-sd2"] {
        let file = DirSource(dir(&format!("{model}-single")));
        let (checkpoint, base) =
            (Box::new(DirSource(dir(&format!("{model}-single")))), Box::new(DirSource(dir(model))));
        let single = SingleFile::open(checkpoint, "model.safetensors", base).unwrap();
        let mut sink = MemSink::default();
        let native = convert(&single, common::gpu(), "q4_0", &policy, 200_000, &mut sink).unwrap().manifest;
        let bytes = file.read("model.safetensors").unwrap().unwrap();
        let weights = [("model.safetensors".to_string(), bytes, true)];
        for (cuts, resume, lag) in
            [(&[1usize, 7, 4093, 65536, 3][..], &[][..], 0), (&[100_003, 17], &[1, 2, 3, 9, 30, 31], 5)]
        {
            let (streamed, m) = stream_files(&single, &weights, "q4_0", cuts, resume, lag);
            assert_eq!(serde_json::to_string(&m).unwrap(), serde_json::to_string(&native).unwrap(), "{model} {cuts:?}");
            for s in &native.shards {
                assert!(streamed.0[&s.file] == sink.0[&s.file], "{model}: {} differs", s.file);
            }
        }
        for t in &native.tensors {
            let shard = &native.shards[t.shard].file;
            assert!(shard.starts_with(&format!("shards/{}-", t.component)), "{}.{} in {shard}", t.component, t.name);
        }
        let qkv = native.tensors.iter().filter(|t| t.name.ends_with("self_attn.q_proj.weight")).count();
        assert!(qkv > 0, "{model}: the text encoder's q_proj came through");
    }
}

/// A checkpoint streamed against the other family's configs, or with a fused in_proj that does
/// not cut into three, is refused in one line naming the file, before any byte is stored.
#[test]
fn a_single_file_of_the_wrong_base_or_shape_is_refused_while_streaming() {
    let policy = QuantPolicy::standard(StoreType::Q4_0);
    let small = |model: &str| {
        let src = DirSource(dir(model));
        let mut files = std::collections::BTreeMap::new();
        for path in webdiffusion::models::component::SMALL_FILES.map(|f| f.path) {
            if let Some(b) = src.read(path).unwrap() {
                files.insert(path.to_string(), String::from_utf8(b).unwrap());
            }
        }
        files
    };
    let run = |model: &str, bytes: &[u8]| {
        let mut conv = StreamConverter::new(common::gpu(), "q4_0", &policy, 200_000, small(model)).unwrap();
        let mut sink = MemSink::default();
        conv.begin_single_file("model.safetensors", bytes.len() as u64, None, None).unwrap();
        let r = conv.push(bytes, &mut sink).map(|_| ());
        (r, sink.0.len())
    };
    let sd2 = std::fs::read(dir("tiny-sd2-single").join("model.safetensors")).unwrap();
    let (err, stored) = run("tiny-sd1", &sd2);
    let err = err.unwrap_err().to_string();
    assert!(err.contains("model.safetensors is SD 2.x") && err.contains("SD 1.x model's"), "{err}");
    assert_eq!(stored, 0);
    // The first in_proj bias re-declared as 2 rows (the same bytes, so the header is consistent):
    // 2 rows do not cut into q, k and v.
    let n = u64::from_le_bytes(sd2[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&sd2[8..8 + n]).unwrap();
    let key = header.as_object().unwrap().keys().find(|k| k.ends_with("in_proj_bias")).unwrap().clone();
    let rows = header[&key]["shape"][0].as_u64().unwrap();
    header[&key]["shape"] = serde_json::json!([2, rows / 2]);
    // Data offsets count from the header's end, so a header of another length keeps them.
    let text = serde_json::to_vec(&header).unwrap();
    let mut bad = (text.len() as u64).to_le_bytes().to_vec();
    bad.extend_from_slice(&text);
    bad.extend_from_slice(&sd2[8 + n..]);
    let (err, _) = run("tiny-sd2", &bad);
    let err = err.unwrap_err().to_string();
    assert!(err.contains(&key) && err.contains("model.safetensors") && err.contains("do not split into 3"), "{err}");
}

#[test]
fn a_corrupt_byte_in_a_weight_file_is_caught_by_its_sha256() {
    let src = DirSource(dir("tiny-sd1"));
    let path = "vae/diffusion_pytorch_model.safetensors";
    let mut bytes = src.read(path).unwrap().unwrap();
    let sha = webdiffusion::models::package::sha256_hex(&bytes);
    let vae = String::from_utf8(src.read("vae/config.json").unwrap().unwrap()).unwrap();
    let files: std::collections::BTreeMap<_, _> = [("vae/config.json".to_string(), vae)].into();
    let policy = QuantPolicy::standard(StoreType::Q4_0);
    let run = |bytes: &[u8]| {
        let mut conv = StreamConverter::new(common::gpu(), "q4_0", &policy, 200_000, files.clone()).unwrap();
        let mut sink = MemSink::default();
        conv.begin_file(path, bytes.len() as u64, Some(sha.clone())).unwrap();
        conv.push(bytes, &mut sink).and_then(|_| conv.end_file())
    };
    assert_eq!(run(&bytes).unwrap(), sha);
    let n = bytes.len();
    bytes[n - 100] ^= 1;
    let err = run(&bytes).unwrap_err().to_string();
    assert!(err.contains(path) && err.contains("corrupt") && err.contains(&sha), "{err}");
}

fn everything(format: StoreType) -> QuantPolicy {
    QuantPolicy { matrices: format, other: StoreType::F16, min_elements: 0, rules: vec![] }
}

/// The targets on the U-Net output: cosine >= 0.999 for q8_0 and >= 0.99 for q4_0 with
/// the standard policy. Quantizing everything to q4_0 misses (about 0.97 here), which is why the
/// standard policy keeps the residual-path tensors in q8_0; the floor below keeps that naive
/// figure honest too. Printed figures go to BENCHMARKS.md.
#[test]
fn quantized_networks_stay_close_to_f32() {
    for model in ["tiny-sd1", "tiny-sd2"] {
        let src = DirSource(dir(model));
        let base = pollster::block_on(parity::run(&src, common::gpu(), &LoadOptions::new(DType::F32))).unwrap();
        let f32_image = generate(&src, &LoadOptions::new(DType::F32), 10);
        let variants = [
            ("q8_0 uniform", everything(StoreType::Q8_0), 0.999),
            ("q4_0 uniform", everything(StoreType::Q4_0), 0.95),
            ("q8_0 standard", QuantPolicy::standard(StoreType::Q8_0), 0.999),
            ("q4_0 standard", QuantPolicy::standard(StoreType::Q4_0), 0.99),
        ];
        for (label, policy, min_cos) in variants {
            let got = pollster::block_on(parity::run(&src, common::gpu(), &quantized(&policy))).unwrap();
            for (g, b) in got.iter().zip(&base) {
                let c = closeness(&g.values, &b.values, 1.0);
                eprintln!("{model} {label} {:<28} cos {:.6} max|err| {:.2e}", g.name, c.cosine, c.max_abs_err);
                assert!(c.cosine >= min_cos, "{model} {label} {}: cosine {}", g.name, c.cosine);
            }
            let img = generate(&src, &quantized(&policy), 10);
            let to_f = |v: &[u8]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
            let c = closeness(&to_f(&img.rgb), &to_f(&f32_image.rgb), 255.0);
            eprintln!("{model} {label} 10-step image PSNR {:.1} dB", c.psnr_db);
            let min_psnr = if policy.matrices == StoreType::Q8_0 { 35.0 } else { 20.0 };
            assert!(c.psnr_db > min_psnr, "{model} {label}: {c:?}");
        }
    }
}

/// A range a lying manifest or header asks for is checked against the file's real length before
/// it sizes a buffer (a claimed 2^62-byte tensor used to abort the process allocating it).
#[test]
fn a_range_past_the_file_is_refused_before_allocating() {
    let dir = std::env::temp_dir().join(format!("webdiffusion-range-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("shard.bin"), [7u8; 100]).unwrap();
    let src = DirSource(dir.clone());
    assert_eq!(src.read_range("shard.bin", 90, 10).unwrap().unwrap(), vec![7u8; 10]);
    for (start, len) in [(0, 1u64 << 62), (95, 10), (u64::MAX, 2), (101, 0)] {
        let err = src.read_range("shard.bin", start, len).unwrap_err().to_string();
        assert!(err.contains("shard.bin is truncated") && err.contains("the file has 100"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A LoRA on a q4_0 package (touched matrices dequantized, merged, stored as q8_0: what the page,
/// which never stores float weights, does) against the same LoRA merged into the float weights
/// before quantizing (the CLI on a diffusers folder): within 1.5 dB of image PSNR against f32
/// (measured 0.7; refitting to q4_0 instead lost 4.4). Figures printed for BENCHMARKS.md.
#[test]
fn a_lora_merged_into_a_q4_package_stays_as_close_as_q4_itself() {
    use webdiffusion::models::lora::{Lora, LoraUse};
    let policy = QuantPolicy::standard(StoreType::Q4_0);
    let (pkg, _) = package("tiny-sd1", "q4_0", &policy, 1 << 20);
    let src = DirSource(dir("tiny-sd1"));
    let bytes = std::fs::read(dir("tiny-sd1").join("lora/kohya.safetensors")).unwrap();
    let lora = Arc::new(Lora::from_bytes("kohya.safetensors", &bytes).unwrap());
    let with = |opts: LoadOptions| LoadOptions { loras: vec![LoraUse { lora: lora.clone(), strength: 1.0 }], ..opts };
    let to_f = |v: &[u8]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    let f32_lora = generate(&src, &with(LoadOptions::new(DType::F32)), 10);
    let merged_first = generate(&src, &with(quantized(&policy)), 10);
    let merged_into_package = generate(&pkg, &with(LoadOptions::new(DType::F32)), 10);
    let q4 = closeness(&to_f(&merged_first.rgb), &to_f(&f32_lora.rgb), 255.0);
    let pkg_vs_first = closeness(&to_f(&merged_into_package.rgb), &to_f(&merged_first.rgb), 255.0);
    let pkg_vs_f32 = closeness(&to_f(&merged_into_package.rgb), &to_f(&f32_lora.rgb), 255.0);
    eprintln!(
        "LoRA (kohya, strength 1), 10-step image PSNR: q4_0 merged first vs f32 {:.1} dB; merged into the q4_0 package vs merged first {:.1} dB, vs f32 {:.1} dB",
        q4.psnr_db, pkg_vs_first.psnr_db, pkg_vs_f32.psnr_db
    );
    assert!(merged_into_package.rgb != generate(&pkg, &LoadOptions::new(DType::F32), 10).rgb, "the LoRA took effect");
    assert!(pkg_vs_f32.psnr_db > q4.psnr_db - 1.5, "{pkg_vs_f32:?} against q4_0's own {q4:?}");
}
