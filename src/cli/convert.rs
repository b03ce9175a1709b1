//! `webdiffusion convert`: a diffusers model (folder or URL) into a CDN package.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use webdiffusion::gpu::Gpu;
use webdiffusion::models::convert::convert;
use webdiffusion::models::package::{MANIFEST, MAX_SHARD};
use webdiffusion::models::stream::PieceSink;
use webdiffusion::quant::{QuantPolicy, StoreType};

#[derive(clap::Args)]
pub struct Args {
    /// A diffusers model folder or URL (or a package, to re-quantize), or a single-file
    /// checkpoint in the original layout (`FILE.safetensors`, with --config).
    #[arg(long)]
    model: String,
    /// For a single-file checkpoint: the diffusers folder whose configs, tokenizer and
    /// scheduler go with it (its weights are not read).
    #[arg(long)]
    config: Option<PathBuf>,
    /// For a single-file checkpoint: epsilon or v_prediction, over its ModelSpec metadata and
    /// the --config scheduler (shapes cannot tell SD 2's 768-v models from its 512 ones).
    #[arg(long)]
    prediction_type: Option<String>,
    /// Another VAE (a folder or URL holding its config.json and weights), in place of the
    /// model's: madebyollin/sdxl-vae-fp16-fix decodes SDXL in f16 (its force_upcast is false).
    #[arg(long)]
    vae: Option<String>,
    /// Output folder (created).
    #[arg(long)]
    out: PathBuf,
    /// Storage of matrices: q8_0, q4_0, f16 or f32 (with the standard policy; see --policy).
    #[arg(long)]
    quant: String,
    /// A JSON policy file replacing the standard one (see src/quant/policy.rs).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Largest shard in MiB.
    #[arg(long, default_value_t = (MAX_SHARD >> 20) as u64)]
    shard_mib: u64,
}

struct DirSink(PathBuf);

impl PieceSink for DirSink {
    fn append(&mut self, file: &str, index: u32, bytes: &[u8]) -> webdiffusion::Result<()> {
        use std::io::Write;
        let path = self.0.join(file);
        let io = |e: std::io::Error| webdiffusion::Error::Weights(format!("writing {}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // Piece 0 starts the shard afresh; later pieces append.
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(index > 0)
            .truncate(index == 0)
            .open(&path)
            .map_err(io)?;
        f.write_all(bytes).map_err(io)
    }
}

/// The policy `--quant` and `--policy` ask for (shared with `generate`).
pub fn policy(quant: &str, file: Option<&Path>) -> Result<QuantPolicy> {
    match file {
        Some(p) => {
            let text = webdiffusion::models::loader::read_file(p, 16 << 20)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .with_context(|| format!("reading {}", p.display()))?;
            Ok(QuantPolicy::from_json(&text)?)
        }
        None => Ok(QuantPolicy::standard(StoreType::parse(quant)?)),
    }
}

pub fn run(gpu: &Gpu, a: &Args) -> Result<()> {
    let t0 = Instant::now();
    let policy = policy(&a.quant, a.policy.as_deref())?;
    // Checked before anything is written: a shard size of 0 (or one that wraps) cannot hold a
    // block, and converting into the model's own folder would overwrite what is being read.
    const MAX_SHARD_MIB: u64 = 2048;
    if !(1..=MAX_SHARD_MIB).contains(&a.shard_mib) {
        bail!("--shard-mib {}: a shard is 1 to {MAX_SHARD_MIB} MiB", a.shard_mib);
    }
    // The deepest part of --out that exists decides: `M/unet/pkg` is inside `M` before it exists.
    let existing = a.out.ancestors().find(|p| p.exists()).and_then(|p| p.canonicalize().ok());
    if let (Some(out), Ok(model)) = (existing, Path::new(&a.model).canonicalize()) {
        if out.starts_with(&model) {
            bail!(
                "--out {} is inside the model's folder {}: write the package somewhere else (nothing was changed)",
                a.out.display(),
                a.model
            );
        }
    }
    let src = super::http::open_model_with(&a.model, a.config.as_deref(), a.prediction_type.as_deref())?;
    let src = super::http::with_vae(src, a.vae.as_deref())?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    // A stale manifest must not describe the new shards while they are written.
    let manifest_path = a.out.join(MANIFEST);
    if manifest_path.exists() {
        std::fs::remove_file(&manifest_path)?;
    }
    let mut sink = DirSink(a.out.clone());
    let max = usize::try_from(a.shard_mib << 20)?; // at most 2^31: no wrap
    let done =
        convert(&*src, gpu, &a.quant, &policy, max, &mut sink).with_context(|| format!("converting {}", a.model))?;
    let m = &done.manifest;
    let tmp = a.out.join("manifest.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(m)?)?;
    std::fs::rename(&tmp, &manifest_path)?;

    let mut by: BTreeMap<(String, &str), (usize, u64)> = BTreeMap::new();
    for t in &m.tensors {
        let e = by.entry((t.component.clone(), t.dtype.name())).or_default();
        e.0 += 1;
        e.1 += t.length;
    }
    for ((component, dtype), (n, bytes)) in &by {
        println!("{component:<13} {dtype:<5} {n:>5} tensors {:>10.1} MB", *bytes as f64 / 1e6);
    }
    println!(
        "{}: {} shards, {:.1} MB in {:.1} s",
        a.out.display(),
        m.shards.len(),
        m.total_bytes() as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    if !done.dropped.is_empty() {
        println!("left out (no model uses them): {}", done.dropped.join(", "));
    }
    Ok(())
}
