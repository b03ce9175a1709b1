//! `webdiffusion quant-quality` (how far quantized networks drift from f32) and
//! `webdiffusion package-sizes` (what each policy weighs, per published architecture).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use webdiffusion::gpu::{DType, Gpu, GpuTensor};
use webdiffusion::models::arch::{self, ARCHS};
use webdiffusion::models::clip::ClipTextModel;
use webdiffusion::models::component::Component;
use webdiffusion::models::config::{ClipConfig, UNetConfig, VaeConfig};
use webdiffusion::models::convert::component_accesses;
use webdiffusion::models::loader::{component_tensors, with_model, FileSource, LoadOptions};
use webdiffusion::models::unet::{Added, UNet};
use webdiffusion::models::vae::Decoder;
use webdiffusion::models::weights::Weights;
use webdiffusion::pipeline::rng::NormalRng;
use webdiffusion::quant::{closeness, QuantPolicy, StoreType};

#[derive(clap::Args)]
pub struct QualityArgs {
    /// A diffusers model or package (folder or URL)...
    #[arg(long, conflicts_with = "arch")]
    model: Option<String>,
    /// ...or a published architecture with random weights: sd15, sd21-base, sd-turbo.
    #[arg(long)]
    arch: Option<String>,
    /// Formats measured with the standard policy.
    #[arg(long, value_delimiter = ',', default_value = "q8_0,q4_0")]
    quant: Vec<String>,
    /// Also measure each format on every quantizable matrix (no rules).
    #[arg(long)]
    uniform: bool,
    /// Extra policies (JSON files) to measure.
    #[arg(long)]
    policy: Vec<PathBuf>,
    /// Latent side for the U-Net and VAE inputs (8 = a 64-pixel image).
    #[arg(long, default_value_t = 8)]
    latent: usize,
    /// U-Net timesteps to compare at.
    #[arg(long, value_delimiter = ',', default_value = "999,500")]
    timesteps: Vec<u32>,
    /// Networks to measure (a real-size U-Net forward takes minutes on lavapipe).
    #[arg(long, value_delimiter = ',', default_value = "text_encoder,unet,vae")]
    only: Vec<String>,
}

/// Where weights come from: a model's files, or synthetic weights for an architecture.
enum Source {
    Model(Box<dyn FileSource>),
    Arch(&'static arch::Arch),
}

impl Source {
    fn config(&self, component: Component) -> Result<String> {
        Ok(match self {
            Source::Model(src) => {
                let path = format!("{component}/config.json");
                let bytes = with_model(&**src, |files| files.read(&path))?;
                String::from_utf8(bytes.with_context(|| format!("no {path}"))?)?
            }
            Source::Arch(a) => a.config(component).to_string(),
        })
    }

    /// Runs `f` with weights of `component` under `policy`.
    fn with<T>(
        &self,
        gpu: &Gpu,
        component: Component,
        policy: &Option<Arc<QuantPolicy>>,
        f: impl FnOnce(&Weights) -> webdiffusion::Result<T>,
    ) -> Result<T> {
        let opts = LoadOptions { quant: policy.clone(), ..LoadOptions::new(DType::F32) };
        let t0 = std::time::Instant::now();
        let f = |w: &Weights| {
            let r = f(w);
            log::info!("{component}: loaded and ran in {:.1} s", t0.elapsed().as_secs_f64());
            r
        };
        Ok(match self {
            Source::Model(src) => with_model(&**src, |files| {
                let t = component_tensors(files, component)?;
                let w = opts.weights(&*t, gpu, component);
                f(&w)
            })?,
            Source::Arch(_) => f(&opts.apply(Weights::synthetic(gpu, DType::F32, 0), component.name()))?,
        })
    }
}

/// Outputs of the three networks on fixed inputs.
fn outputs(
    src: &Source,
    gpu: &Gpu,
    policy: &Option<Arc<QuantPolicy>>,
    a: &QualityArgs,
) -> Result<Vec<(String, Vec<f32>)>> {
    let latent = a.latent;
    let want = |c: &str| a.only.iter().any(|o| o == c);
    let te = ClipConfig::from_json(&src.config(Component::TextEncoder)?)?;
    let un = UNetConfig::from_json(&src.config(Component::Unet)?)?;
    let vae = VaeConfig::from_json(&src.config(Component::Vae)?)?;
    let mut rng = NormalRng::new(42);
    let mut out = Vec::new();
    let read = |t: &GpuTensor| pollster::block_on(t.to_vec_f32());

    // Token ids spread over the vocabulary, with BOS/EOS where CLIP has them.
    let ids: Vec<u32> = (0..te.max_position_embeddings)
        .map(|i| if i == 0 { 49406 } else { ((i * 7919) % (te.vocab_size - 2)) as u32 })
        .map(|id| id.min(te.vocab_size as u32 - 1))
        .collect();
    if want("text_encoder") {
        let h =
            src.with(gpu, Component::TextEncoder, policy, |w| ClipTextModel::load(te.clone(), w)?.forward(&ids, 1, 0))?;
        out.push(("text_encoder.last_hidden_state".into(), read(&h)?));
        // SDXL's second encoder, where the model has one: its penultimate layer is the context.
        if let Ok(json) = src.config(Component::TextEncoder2) {
            let te2 = ClipConfig::from_json(&json)?;
            let h = src.with(gpu, Component::TextEncoder2, policy, |w| {
                ClipTextModel::load(te2.clone(), w)?.forward(&ids, 1, 0)
            })?;
            out.push(("text_encoder_2.last_hidden_state".into(), read(&h)?));
        }
    }

    let sample =
        GpuTensor::from_f32(gpu, &rng.normals(un.in_channels * latent * latent), &[1, un.in_channels, latent, latent])?;
    let context =
        GpuTensor::from_f32(gpu, &rng.normals(77 * un.cross_attention_dim), &[1, 77, un.cross_attention_dim])?;
    let cond = un.time_cond_proj_dim.map(|d| GpuTensor::from_f32(gpu, &rng.normals(d), &[1, d])).transpose()?;
    // SDXL's added conditioning: a random pooled embedding and the micro-conditioning of a
    // square image of this size, uncropped.
    let added = match (un.addition_time_embed_dim, un.projection_class_embeddings_input_dim) {
        (Some(t), Some(p)) if un.addition_embed_type.as_deref() == Some("text_time") => {
            let n = p.saturating_sub(6 * t);
            let side = (8 * latent) as f32;
            Some(Added {
                text_embeds: GpuTensor::from_f32(gpu, &rng.normals(n), &[1, n])?,
                time_ids: vec![side, side, 0.0, 0.0, side, side],
            })
        }
        _ => None,
    };
    if want("unet") {
        let eps = src.with(gpu, Component::Unet, policy, |w| {
            let unet = UNet::load(un.clone(), w)?;
            a.timesteps
                .iter()
                .map(|&t| unet.forward_with(&sample, t as f32, &context, cond.as_ref(), added.as_ref()))
                .collect::<webdiffusion::Result<Vec<_>>>()
        })?;
        for (t, e) in a.timesteps.iter().zip(eps) {
            out.push((format!("unet.out_t{t}"), read(&e)?));
        }
    }

    let z = GpuTensor::from_f32(
        gpu,
        &rng.normals(vae.latent_channels * latent * latent),
        &[1, vae.latent_channels, latent, latent],
    )?;
    if want("vae") {
        let img = src.with(gpu, Component::Vae, policy, |w| Decoder::load(&vae, w)?.forward(&z))?;
        out.push(("vae.decoded".into(), read(&img)?));
    }
    Ok(out)
}

fn uniform(format: StoreType) -> QuantPolicy {
    QuantPolicy { matrices: format, other: StoreType::F16, min_elements: 0, rules: vec![] }
}

pub fn quality(gpu: &Gpu, a: &QualityArgs) -> Result<()> {
    let src = match (&a.model, &a.arch) {
        (Some(m), None) => Source::Model(super::http::open_model(m)),
        (None, Some(name)) => Source::Arch(arch::by_name(name)?),
        _ => anyhow::bail!("give --model or --arch"),
    };
    let mut variants = Vec::new();
    for q in &a.quant {
        let format = StoreType::parse(q)?;
        variants.push((format!("{q} standard"), QuantPolicy::standard(format)));
        if a.uniform {
            variants.push((format!("{q} uniform"), uniform(format)));
        }
    }
    for p in &a.policy {
        variants.push((p.display().to_string(), super::convert::policy("", Some(p))?));
    }
    let t0 = std::time::Instant::now();
    let base = outputs(&src, gpu, &None, a)?;
    eprintln!("f32 reference in {:.1} s", t0.elapsed().as_secs_f64());
    let t0 = std::time::Instant::now();
    println!("| policy | output | cosine | max abs err | max abs f32 |");
    println!("|---|---|---|---|---|");
    for (label, policy) in variants {
        let got = outputs(&src, gpu, &Some(Arc::new(policy)), a)?;
        for ((name, g), (_, b)) in got.iter().zip(&base) {
            let c = closeness(g, b, 1.0);
            let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            println!("| {label} | {name} | {:.6} | {:.3e} | {amax:.3} |", c.cosine, c.max_abs_err);
        }
        eprintln!("{label} in {:.1} s", t0.elapsed().as_secs_f64());
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct SizesArgs {
    /// Extra policies (JSON files) to size.
    #[arg(long)]
    policy: Vec<PathBuf>,
}

/// Package bytes per architecture and policy, from the tensors our models load (shapes only).
pub fn sizes(gpu: &Gpu, a: &SizesArgs) -> Result<()> {
    let mut columns: Vec<(String, QuantPolicy)> = vec![
        ("f32".into(), QuantPolicy::standard(StoreType::F32)),
        ("f16".into(), QuantPolicy::standard(StoreType::F16)),
        ("q8_0 uniform".into(), uniform(StoreType::Q8_0)),
        ("q8_0".into(), QuantPolicy::standard(StoreType::Q8_0)),
        ("q4_0 uniform".into(), uniform(StoreType::Q4_0)),
        ("q4_0 (default)".into(), QuantPolicy::standard(StoreType::Q4_0)),
        ("q3_0".into(), QuantPolicy::standard(StoreType::Q3_0)),
    ];
    for p in &a.policy {
        columns.push((p.display().to_string(), super::convert::policy("", Some(p))?));
    }
    let header: Vec<_> = columns.iter().map(|(n, _)| n.as_str()).collect();
    println!("| architecture | component | params (M) | {} |", header.join(" | "));
    println!("|---|---|---|{}", "---|".repeat(columns.len()));
    for arch in &ARCHS {
        let mut totals = vec![0u64; columns.len()];
        let mut params_total = 0;
        for component in arch.components() {
            let w = Weights::synthetic(gpu, DType::F32, 0).shapes_only();
            let accesses = component_accesses(component, arch.config(component), &w)?;
            let params: usize = accesses.iter().map(|x| x.shape.iter().product::<usize>()).sum();
            params_total += params;
            let mut cells = Vec::new();
            for (i, (_, p)) in columns.iter().enumerate() {
                let bytes: usize = accesses
                    .iter()
                    .map(|x| p.decide(&format!("{component}.{}", x.name), x.matrix).bytes(x.shape.iter().product()))
                    .sum();
                totals[i] += bytes as u64;
                cells.push(format!("{:.0}", bytes as f64 / 1e6));
            }
            println!("| {} | {component} | {:.1} | {} |", arch.name, params as f64 / 1e6, cells.join(" | "));
        }
        let cells: Vec<_> = totals.iter().map(|b| format!("**{:.0}**", *b as f64 / 1e6)).collect();
        println!("| {} | **total** | {:.1} | {} |", arch.name, params_total as f64 / 1e6, cells.join(" | "));
    }
    println!("\nMB = 10^6 bytes of weights; the manifest (configs + tokenizer) adds about 2 MB.");
    Ok(())
}
