//! Runs a fixture's networks and compares them with the `reference.safetensors` that
//! `tools/reference/make_fixtures.py` wrote with diffusers. One implementation for the native
//! tests, the CLI (`webdiffusion parity`) and the browser, so all three check the same thing.

use serde::Serialize;

use super::loader::{self, FileSource, LoadOptions};
use super::sources::SafeTensorsBytes;
use super::weights::{FileDType, TensorSource};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, GpuTensor};

/// One compared output, with its values so two runs (native, browser) can be compared.
#[derive(Clone, Debug, Serialize)]
pub struct ParityOutput {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
    pub max_abs_err: f32,
    pub max_abs_ref: f32,
}

struct Reference(SafeTensorsBytes);

impl Reference {
    fn f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info = self
            .0
            .info(name)
            .ok_or_else(|| Error::Tensor { name: name.into(), msg: "missing from the reference".into() })?;
        if info.dtype != FileDType::F32 {
            return Err(Error::Tensor { name: name.into(), msg: "reference is not f32".into() });
        }
        let b = self.0.bytes(name)?;
        Ok((info.shape, b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
    }
    /// int32 ids as u32.
    fn ids(&self, name: &str) -> Result<(Vec<usize>, Vec<u32>)> {
        let info = self
            .0
            .info(name)
            .ok_or_else(|| Error::Tensor { name: name.into(), msg: "missing from the reference".into() })?;
        let b = self.0.bytes(name)?;
        Ok((info.shape, b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u32).collect()))
    }
    fn upload(&self, gpu: &Gpu, name: &str, dtype: DType) -> Result<GpuTensor> {
        let (shape, v) = self.f32(name)?;
        GpuTensor::from_f32_as(gpu, &v, &shape, dtype)
    }
    async fn compare(&self, name: &str, got: &GpuTensor) -> Result<ParityOutput> {
        let (shape, want) = self.f32(name)?;
        if got.shape() != shape.as_slice() {
            return Err(Error::shape("parity", format!("{name}: got {:?}, reference {shape:?}", got.shape())));
        }
        let values = got.to_vec_f32().await?;
        let max_abs_err = values.iter().zip(&want).fold(0f32, |m, (g, w)| {
            let d = (g - w).abs();
            if d.is_nan() {
                f32::INFINITY
            } else {
                m.max(d)
            }
        });
        let max_abs_ref = want.iter().fold(0f32, |m, w| m.max(w.abs()));
        Ok(ParityOutput { name: name.into(), shape, values, max_abs_err, max_abs_ref })
    }
}

/// The text encoder of `model` (its hidden states and its clip_skip=1 output) against the
/// reference of `reference` (a fixture with `reference.safetensors`): the same network saved
/// another way must give the same outputs.
pub async fn text_encoder(
    model: &dyn FileSource,
    reference: &dyn FileSource,
    gpu: &Gpu,
    opts: &LoadOptions,
) -> Result<Vec<ParityOutput>> {
    text_encoder_against(model, &reference_of(reference)?, gpu, opts).await
}

fn reference_of(src: &dyn FileSource) -> Result<Reference> {
    let bytes = src
        .read("reference.safetensors")?
        .ok_or_else(|| Error::Weights(format!("{} has no reference.safetensors", src.describe())))?;
    Ok(Reference(SafeTensorsBytes::new(bytes, "reference.safetensors")?))
}

async fn text_encoder_against(
    src: &dyn FileSource,
    r: &Reference,
    gpu: &Gpu,
    opts: &LoadOptions,
) -> Result<Vec<ParityOutput>> {
    let te = loader::text_encoder(src, gpu, opts)?;
    let (shape, ids) = r.ids("text_encoder.input_ids")?;
    let mut out = Vec::new();
    for (skip, name) in [(0, "text_encoder.last_hidden_state"), (1, "text_encoder.clip_skip1")] {
        out.push(r.compare(name, &te.forward(&ids, shape[0], skip)?).await?);
    }
    Ok(out)
}

/// Text encoder (and its clip_skip=1 output), U-Net at every reference timestep, VAE decode and
/// encode, computed in `dtype` (the VAE in its compute dtype: f32 under `force_upcast`) and
/// compared with the reference.
pub async fn run(src: &dyn FileSource, gpu: &Gpu, opts: &LoadOptions) -> Result<Vec<ParityOutput>> {
    let dtype = opts.dtype;
    let r = reference_of(src)?;
    let mut out = Vec::new();

    out.extend(text_encoder_against(src, &r, gpu, opts).await?);

    let unet = loader::unet(src, gpu, opts)?;
    let sample = r.upload(gpu, "unet.sample", dtype)?;
    let context = r.upload(gpu, "unet.encoder_hidden_states", dtype)?;
    for t in r.f32("unet.timesteps")?.1 {
        let got = unet.forward(&sample, t, &context, None)?;
        out.push(r.compare(&format!("unet.out_t{t}"), &got).await?);
    }
    drop(unet);

    let (decoder, encoder) = loader::vae(src, gpu, &LoadOptions { with_encoder: true, ..opts.clone() })?;
    let vae_dtype = loader::vae_config(src)?.compute_dtype(dtype);
    out.push(r.compare("vae.decoded", &decoder.forward(&r.upload(gpu, "vae.latents", vae_dtype)?)?).await?);
    if let Some(encoder) = encoder {
        let (mean, logvar) = encoder.forward(&r.upload(gpu, "vae.image", vae_dtype)?)?;
        out.push(r.compare("vae.posterior_mean", &mean).await?);
        out.push(r.compare("vae.posterior_logvar", &logvar).await?);
    }
    Ok(out)
}
