//! `webdiffusion fuzz`: a mutation fuzzer on stable Rust for every parser that reads input from a
//! stranger (a model's files, a manifest, an init image). Each target starts from real inputs
//! (the repository's fixtures), mutates them (bit flips, byte and number substitutions, inserted
//! and deleted runs, truncation, splices of another seed), and calls the parser; a panic is a
//! crash, saved with the input that caused it. A parser that aborts the process (an allocation
//! sized by an unchecked number) ends the run, which is a crash too. Errors are the right answer.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::ValueEnum;
use webdiffusion::gpu::Gpu;
use webdiffusion::models::config::{ClipConfig, UNetConfig, VaeConfig};
use webdiffusion::models::loader::DirSource;
use webdiffusion::models::package::Manifest;
use webdiffusion::models::tokenizer::ClipTokenizer;
use webdiffusion::models::{header, stream::PieceSink};
use webdiffusion::pipeline::conditioning;
use webdiffusion::pipeline::image::decode_png;
use webdiffusion::pipeline::prompt::PromptSyntax;
use webdiffusion::pipeline::schedule::SchedulerConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// The 8-byte length and JSON header of a safetensors file.
    Safetensors,
    /// A package's manifest.json.
    Manifest,
    UnetConfig,
    VaeConfig,
    ClipConfig,
    SchedulerConfig,
    /// vocab.json + merges.txt, then encoding a prompt.
    Tokenizer,
    /// An init image.
    Png,
    /// A LoRA file (kohya, PEFT), parsed and merged into the fixture's U-Net tensors.
    Lora,
    /// A prompt in A1111's syntax (weights, escapes, BREAK), parsed and chunked with the
    /// fixture's tokenizer.
    Prompt,
    /// A single-file checkpoint's header (original LDM names), planned by the streaming
    /// converter against the fixture's configs: name mapping, q/k/v cuts, family checks.
    SingleFile,
    /// TAESD's config.json.
    TaesdConfig,
    /// A whole model: one of its files mutated (a config, the model index, a weights file's
    /// header), then converted to a q4_0 package, that package loaded onto the GPU, and the
    /// folder itself loaded too — every check between the bytes and the GPU, not one parser.
    Load,
}

/// The files of a model the `Load` target mutates (the tokenizer has its own target).
const LOAD_FILES: &[&str] = &[
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/model.fp16.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
];

/// What a target runs against besides its input.
struct Inputs<'a> {
    gpu: &'a Gpu,
    /// The fixture model's files (the `Load` target's starting point).
    model: std::collections::HashMap<String, Vec<u8>>,
    /// The fixture's tokenizer (the `Prompt` target's).
    tokenizer: ClipTokenizer,
    /// The fixture's U-Net tensors (the `Lora` target merges into them).
    unet_tensors: webdiffusion::models::sources::SafeTensorsBytes,
}

/// A package's pieces collected in memory.
#[derive(Default)]
struct Collect(std::collections::HashMap<String, Vec<u8>>);
impl PieceSink for Collect {
    fn append(&mut self, shard: &str, _: u32, bytes: &[u8]) -> webdiffusion::Result<()> {
        self.0.entry(shard.to_string()).or_default().extend_from_slice(bytes);
        Ok(())
    }
}

/// Header bytes (8-byte length + JSON) of a safetensors file, when they parse as such.
fn header_bytes(all: &[u8]) -> Option<usize> {
    let n = u64::from_le_bytes(all.get(..8)?.try_into().ok()?);
    usize::try_from(n).ok()?.checked_add(8).filter(|&end| end <= all.len())
}

/// The fixture model with one file replaced by the `Load` input: its first byte picks the file,
/// the rest is the file (for weights: the header; the tensor data stays the fixture's, since
/// values are not what a loader checks).
fn mutated_model(ctx: &Inputs, input: &[u8]) -> Option<webdiffusion::models::loader::MemorySource> {
    let (&pick, body) = input.split_first()?;
    let path = LOAD_FILES[pick as usize % LOAD_FILES.len()];
    let mut files = ctx.model.clone();
    let file = files.get_mut(path)?;
    if path.ends_with(".safetensors") {
        let data = file.split_off(header_bytes(file)?);
        *file = body.to_vec();
        file.extend_from_slice(&data);
    } else {
        *file = body.to_vec();
    }
    Some(webdiffusion::models::loader::MemorySource { files, name: "fuzz".into() })
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Targets to fuzz (default: all).
    #[arg(long, value_enum)]
    target: Vec<Target>,
    /// Seconds per target.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Stop a target after this many executions (whichever comes first).
    #[arg(long)]
    execs: Option<u64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where crashing inputs are written.
    #[arg(long, default_value = "fuzz-crashes")]
    out: PathBuf,
    /// The fixtures the seeds come from.
    #[arg(long, default_value = "tests/fixtures/tiny-sd1")]
    fixture: PathBuf,
}

/// xorshift64*: fast, deterministic per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Numbers that break size arithmetic, as text (JSON) and as bytes.
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "9007199254740993",
    "1e308",
    "NaN",
    "[]",
    "{}",
    "null",
    "\"\"",
];

/// Mutates `input`. For JSON (`json`), three in four mutations swap a number for another, which
/// keeps the document parseable, so the checks behind the parse are reached.
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>, json: bool) {
    for _ in 0..1 + rng.below(4) {
        let n = input.len();
        let kind = if json && rng.below(4) > 0 { 2 } else { rng.below(8) };
        match kind {
            0 if n > 0 => input[rng.below(n)] ^= 1 << rng.below(8),
            1 if n > 0 => input[rng.below(n)] = [0, 0xff, 0x7f, 0x80, b'"', b'9', b'-', b'{'][rng.below(8)],
            2 => {
                // A number where a number was: the digits at a random place replaced.
                let at = rng.below(n + 1);
                let start = (0..at).rev().take_while(|&i| input[i].is_ascii_digit()).last().unwrap_or(at);
                let end = (at..n).take_while(|&i| input[i].is_ascii_digit()).last().map_or(at, |i| i + 1);
                let num = NUMBERS[rng.below(NUMBERS.len())].as_bytes();
                input.splice(start..end, num.iter().copied());
            }
            3 if n > 0 => {
                let at = rng.below(n);
                let len = 1 + rng.below((n - at).min(64));
                input.drain(at..at + len);
            }
            4 => {
                let at = rng.below(n + 1);
                let bytes: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
            5 if n > 0 => input.truncate(rng.below(n)),
            6 => {
                // A piece of another seed.
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let len = 1 + rng.below((other.len() - from).min(256));
                    let at = rng.below(n + 1);
                    input.splice(at..at, other[from..from + len].iter().copied());
                }
            }
            7 if n >= 8 => {
                // A little-endian u64 (safetensors' header length) or u32 (PNG sizes) set.
                let at = rng.below(n - 7);
                let v = [0u64, u64::MAX, 1 << 32, 1 << 62, rng.next()][rng.below(5)];
                input[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }
}

struct Nothing;
impl PieceSink for Nothing {
    fn append(&mut self, _: &str, _: u32, _: &[u8]) -> webdiffusion::Result<()> {
        Ok(())
    }
}

fn read(dir: &Path, path: &str) -> Result<Vec<u8>> {
    std::fs::read(dir.join(path)).with_context(|| format!("reading the seed {}", dir.join(path).display()))
}

/// The real inputs a target starts from.
fn seeds(t: Target, dir: &Path, ctx: &Inputs) -> Result<Vec<Vec<u8>>> {
    let gpu = ctx.gpu;
    let weights = ["vae/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors"];
    Ok(match t {
        Target::Safetensors => weights
            .iter()
            .map(|w| {
                let all = read(dir, w)?;
                let n = 8 + u64::from_le_bytes(all[..8].try_into()?) as usize;
                Ok(all[..n.min(all.len())].to_vec())
            })
            .collect::<Result<_>>()?,
        Target::Manifest => {
            // The package of the fixture, cut to its first tensors (the structure is the same; a
            // 500-tensor manifest would parse too slowly for enough runs).
            let src = DirSource(dir.to_path_buf());
            let policy = webdiffusion::quant::QuantPolicy::standard(webdiffusion::quant::StoreType::Q4_0);
            let done = webdiffusion::models::convert::convert(&src, gpu, "q4_0", &policy, 20_000, &mut Nothing)?;
            let mut m = done.manifest;
            m.tensors.truncate(12);
            let shards = m.tensors.iter().map(|t| t.shard).max().unwrap_or(0) + 1;
            m.shards.truncate(shards);
            m.files.clear();
            vec![serde_json::to_vec(&m)?]
        }
        Target::UnetConfig => vec![read(dir, "unet/config.json")?],
        Target::VaeConfig => vec![read(dir, "vae/config.json")?],
        Target::ClipConfig => vec![read(dir, "text_encoder/config.json")?],
        Target::SchedulerConfig => vec![read(dir, "scheduler/scheduler_config.json")?],
        Target::Tokenizer => {
            // The first 600 vocab entries and merges: parsing the whole 1 MB vocab per run would
            // leave too few runs; the structure is the same.
            let vocab: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&read(dir, "tokenizer/vocab.json")?)?;
            let small: serde_json::Map<_, _> = vocab.into_iter().take(600).collect();
            let merges = String::from_utf8(read(dir, "tokenizer/merges.txt")?)?;
            let merges: String = merges.lines().take(600).map(|l| format!("{l}\n")).collect();
            let mut seed = serde_json::to_vec(&small)?;
            seed.extend(b"\n\x00\n");
            seed.extend(merges.as_bytes());
            vec![seed]
        }
        Target::Lora => vec![read(dir, "lora/kohya.safetensors")?, read(dir, "lora/peft.safetensors")?],
        Target::SingleFile => {
            // The headers of the tiny SD 1 and SD 2 single files beside the fixture.
            let parent = dir.parent().unwrap_or(dir);
            ["tiny-sd1-single", "tiny-sd2-single"]
                .iter()
                .filter_map(|m| std::fs::read(parent.join(m).join("model.safetensors")).ok())
                .map(|all| {
                    let n = 8 + u64::from_le_bytes(all[..8].try_into()?) as usize;
                    Ok(all[..n.min(all.len())].to_vec())
                })
                .collect::<Result<_>>()?
        }
        Target::TaesdConfig => {
            let parent = dir.parent().unwrap_or(dir);
            vec![read(&parent.join("tiny-taesd"), "config.json")?]
        }
        Target::Prompt => [
            "(masterpiece:1.2), best quality, [blurry], ((a cat)) BREAK \\(literal\\) (unclosed [x",
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))). 東京の(夜景:1.4) 🦊",
            "(a:-1e9) (b:1.2.3) :) ]] [[ BREAK BREAK <|endoftext|> x, y, z",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        Target::Png => {
            let rgb: Vec<u8> = (0..16 * 8 * 3).map(|i| (i * 37) as u8).collect();
            vec![
                webdiffusion::pipeline::image::encode_png(&rgb, 16, 8, Some("a prompt’s text"))?,
                webdiffusion::pipeline::image::encode_png(&rgb[..4 * 4 * 3], 4, 4, None)?,
            ]
        }
        Target::Load => LOAD_FILES
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let file = &ctx.model[*path];
                let body = if path.ends_with(".safetensors") {
                    &file[..header_bytes(file).context("a fixture's safetensors header")?]
                } else {
                    &file[..]
                };
                Ok([&[i as u8][..], body].concat())
            })
            .collect::<Result<_>>()?,
    })
}

impl Target {
    fn is_json(self) -> bool {
        !matches!(
            self,
            Target::Safetensors
                | Target::Tokenizer
                | Target::Png
                | Target::Load
                | Target::Prompt
                | Target::Lora
                | Target::SingleFile
        )
    }
}

/// The fixture's files, for the `Load` target.
fn model_files(dir: &Path) -> Result<std::collections::HashMap<String, Vec<u8>>> {
    let mut files = std::collections::HashMap::new();
    for path in LOAD_FILES.iter().chain(&[
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
    ]) {
        files.insert(path.to_string(), read(dir, path)?);
    }
    Ok(files)
}

/// A `Load` input mutated: the file it names stays the same, its JSON (a config, or a weights
/// file's header) mostly gets number swaps, so the document still parses and the checks behind
/// it are reached; a weights header's length is set to match (`fix_len`) unless that length is
/// what this run lies about.
fn mutate_load(rng: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>, fix_len: bool) {
    let Some((&pick, body)) = input.split_first() else { return };
    let weights = LOAD_FILES[pick as usize % LOAD_FILES.len()].ends_with(".safetensors");
    let mut body = body.to_vec();
    if weights && body.len() >= 8 {
        let mut json = body.split_off(8);
        mutate(rng, seeds, &mut json, true);
        if fix_len {
            body.copy_from_slice(&(json.len() as u64).to_le_bytes());
        } else {
            mutate(rng, seeds, &mut body, false);
            body.truncate(8);
        }
        body.extend(json);
    } else {
        mutate(rng, seeds, &mut body, true);
    }
    *input = [&[pick][..], &body].concat();
}

/// Convert, load the package, load the folder: each may fail, none may panic. Returns how many
/// of the three succeeded (a run whose inputs all fail at the first check tests little).
fn load_whole(ctx: &Inputs, input: &[u8]) -> usize {
    use webdiffusion::models::loader::{LoadOptions, MemorySource};
    use webdiffusion::pipeline::generate::StableDiffusion;
    let Some(src) = mutated_model(ctx, input) else { return 0 };
    let mut passed = 0;
    let policy = webdiffusion::quant::QuantPolicy::standard(webdiffusion::quant::StoreType::Q4_0);
    let opts = LoadOptions::new(webdiffusion::gpu::DType::F32);
    let mut pieces = Collect::default();
    if let Ok(done) = webdiffusion::models::convert::convert(&src, ctx.gpu, "q4_0", &policy, 1 << 20, &mut pieces) {
        passed += 1;
        if let Ok(manifest) = serde_json::to_vec(&done.manifest) {
            pieces.0.insert("manifest.json".into(), manifest);
            let package = MemorySource { files: pieces.0, name: "fuzz package".into() };
            passed += usize::from(StableDiffusion::load(&package, ctx.gpu, &opts).is_ok());
        }
    }
    passed + usize::from(StableDiffusion::load(&src, ctx.gpu, &opts).is_ok())
}

/// Recomputes the CRC of every whole chunk: a hostile PNG has valid CRCs (anyone can compute
/// them), so the decoder's checks behind the CRC are what needs reaching.
fn fix_png_crcs(png: &mut [u8]) {
    let mut at = 8;
    while at + 12 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().expect("4 bytes")) as usize;
        let Some(end) = (at + 8).checked_add(len).filter(|&e| e + 4 <= png.len()) else { return };
        let crc = webdiffusion::pipeline::image::chunk_crc(&png[at + 4..end]);
        png[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        at = end + 4;
    }
}

/// One execution of target `t` on `input`; errors are fine, panics are not. Returns how many
/// whole loads succeeded (`Load` only).
fn run_one(t: Target, ctx: &Inputs, input: &[u8]) -> usize {
    let text = std::str::from_utf8(input).unwrap_or("");
    match t {
        Target::Safetensors => {
            let size = input.len() as u64 + 4096;
            if let Ok(n) = header::header_len("fuzz.safetensors", &input[..input.len().min(8)], Some(size)) {
                let end = (8 + n as usize).min(input.len());
                let _ = header::parse("fuzz.safetensors", &input[8.min(input.len())..end], Some(size));
            }
        }
        Target::Manifest => {
            let _ = Manifest::parse(input);
        }
        Target::UnetConfig => {
            let _ = UNetConfig::from_json(text);
        }
        Target::VaeConfig => {
            let _ = VaeConfig::from_json(text);
        }
        Target::ClipConfig => {
            let _ = ClipConfig::from_json(text);
        }
        Target::SchedulerConfig => {
            let _ = SchedulerConfig::from_json(text);
        }
        Target::Tokenizer => {
            let cut = input.windows(3).position(|w| w == b"\n\x00\n");
            let (vocab, merges) = cut.map_or((input, &[][..]), |i| (&input[..i], &input[i + 3..]));
            if let Ok(tok) = ClipTokenizer::from_files(vocab, merges, None, None) {
                let _ = tok.encode("a photo of a cat’s 富士山 🦊, (masterpiece:1.2)");
            }
        }
        Target::Png => {
            let _ = decode_png(input);
        }
        Target::Lora => {
            use webdiffusion::models::lora::{Lora, LoraUse, Merged};
            if let Ok(lora) = Lora::from_bytes("fuzz", input) {
                let uses = [LoraUse { lora: std::sync::Arc::new(lora), strength: 0.5 }];
                let unet = &ctx.unet_tensors;
                let _ = Merged::new(unet, webdiffusion::models::component::Component::Unet, &uses, None);
            }
        }
        Target::Prompt => {
            let prompt = String::from_utf8_lossy(input);
            let _ = webdiffusion::pipeline::prompt::parse_attention(&prompt);
            let _ = conditioning::tokenize(&ctx.tokenizer, &prompt, PromptSyntax::A1111);
        }
        Target::SingleFile => {
            // The header alone: the plan (mapping, cuts, checks) runs when it is complete.
            let files: std::collections::BTreeMap<String, String> = ctx
                .model
                .iter()
                .filter(|(p, _)| !p.ends_with(".safetensors"))
                .map(|(p, b)| (p.clone(), String::from_utf8_lossy(b).into_owned()))
                .collect();
            let n = header::header_len("fuzz.safetensors", &input[..input.len().min(8)], None).ok();
            let size = n
                .and_then(|n| {
                    header::parse(
                        "fuzz.safetensors",
                        &input[8.min(input.len())..(8 + n as usize).min(input.len())],
                        None,
                    )
                    .ok()
                })
                .and_then(|t| t.iter().map(|t| t.start + t.len).max())
                .unwrap_or(input.len() as u64)
                .max(input.len() as u64);
            let policy = webdiffusion::quant::QuantPolicy::standard(webdiffusion::quant::StoreType::Q4_0);
            if let Ok(mut conv) =
                webdiffusion::models::stream::StreamConverter::new(ctx.gpu, "q4_0", &policy, 1 << 20, files)
            {
                if conv.begin_single_file("fuzz.safetensors", size, None, None).is_ok() {
                    let _ = conv.push(input, &mut Nothing);
                }
            }
        }
        Target::TaesdConfig => {
            let _ = webdiffusion::models::taesd::TinyConfig::from_json(text);
        }
        Target::Load => return load_whole(ctx, input),
    }
    0
}

pub fn run(gpu: &Gpu, a: &Args) -> Result<()> {
    let targets = if a.target.is_empty() { Target::value_variants().to_vec() } else { a.target.clone() };
    // Panics are counted, not printed one by one.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut total_crashes = 0;
    let tokenizer = webdiffusion::models::loader::tokenizer(&DirSource(a.fixture.clone()))
        .with_context(|| format!("the tokenizer of {}", a.fixture.display()))?;
    let model = model_files(&a.fixture)?;
    let unet_tensors = webdiffusion::models::sources::SafeTensorsBytes::new(
        model["unet/diffusion_pytorch_model.safetensors"].clone(),
        "the fixture's U-Net",
    )?;
    let ctx = Inputs { gpu, model, tokenizer, unet_tensors };
    for t in targets {
        let seeds = seeds(t, &a.fixture, &ctx)?;
        let mut rng = Rng(a.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let (t0, limit) = (Instant::now(), Duration::from_secs_f64(a.seconds));
        let (mut execs, mut crashes, mut loads) = (0u64, 0u64, 0u64);
        let mut input = Vec::new();
        while t0.elapsed() < limit && a.execs.is_none_or(|n| execs < n) {
            // Mostly mutate the last input further; often start again from a seed.
            if execs % 8 == 0 || input.len() > 1 << 20 {
                input = seeds[rng.below(seeds.len())].clone();
            }
            if t == Target::Load {
                mutate_load(&mut rng, &seeds, &mut input, execs % 8 != 7);
            } else {
                mutate(&mut rng, &seeds, &mut input, t.is_json());
            }
            if t == Target::Png {
                fix_png_crcs(&mut input);
            }
            execs += 1;
            let outcome = catch_unwind(AssertUnwindSafe(|| run_one(t, &ctx, &input)));
            loads += outcome.as_ref().map_or(0, |&n| n as u64);
            if outcome.is_err() {
                crashes += 1;
                std::fs::create_dir_all(&a.out)?;
                let name = a.out.join(format!("{t:?}-{execs}.bin").to_lowercase());
                std::fs::write(&name, &input)?;
                if crashes == 1 {
                    eprintln!("{t:?}: a crash, input saved as {}", name.display());
                }
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "{:<17} {execs:>10} executions in {secs:>6.1} s ({:>8.0}/s), {crashes} crashes",
            format!("{t:?}"),
            execs as f64 / secs
        );
        if t == Target::Load {
            println!("{:<17} {loads} loads succeeded (of 3 per execution: convert, package, folder)", "");
        }
        total_crashes += crashes;
    }
    std::panic::set_hook(default_hook);
    anyhow::ensure!(total_crashes == 0, "{total_crashes} crashing inputs, saved in {}", a.out.display());
    Ok(())
}
