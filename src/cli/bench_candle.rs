//! `bench --candle`: candle-transformers' Stable Diffusion U-Net on the CPU, built from the same
//! synthetic weights as ours (same names, same values), timed on the same input as our U-Net
//! step — the speed anchor of this CPU-only machine — and its output compared with ours.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType as CDType, Device, Shape, Tensor};
use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModel, UNet2DConditionModelConfig,
};
use serde::Serialize;
use webdiffusion::models::config::UNetConfig;
use webdiffusion::models::sources::synthetic_values;
use webdiffusion::models::weights::Access;

#[derive(Serialize, Debug)]
pub struct CandleReport {
    pub ours_ms: f64,
    pub candle_ms: f64,
    /// ours / candle: above 1, ours is slower.
    pub ratio: f64,
    pub threads: usize,
    /// Our U-Net output against candle's on the same input (a real-size numerical check).
    pub cosine: f64,
    pub max_abs_diff: f32,
}

/// Synthesizes each tensor candle asks for from our access log (which says whether our loader
/// treated it as a matrix, which sets its scale), so both models hold identical values.
struct Synthetic(HashMap<String, Access>);

impl candle_nn::var_builder::SimpleBackend for Synthetic {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: CDType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let a = self.0.get(name).ok_or_else(|| candle_core::Error::Msg(format!("we never loaded {name}")))?;
        if a.shape.iter().product::<usize>() != s.elem_count() {
            candle_core::bail!("{name}: candle wants {s:?}, we loaded {:?}", a.shape);
        }
        Tensor::from_vec(synthetic_values(0, a), s, dev)?.to_dtype(dtype)
    }
    fn get_unchecked(&self, name: &str, dtype: CDType, dev: &Device) -> candle_core::Result<Tensor> {
        let a = self.0.get(name).ok_or_else(|| candle_core::Error::Msg(format!("we never loaded {name}")))?;
        Tensor::from_vec(synthetic_values(0, a), a.shape.as_slice(), dev)?.to_dtype(dtype)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

fn candle_config(c: &UNetConfig) -> UNet2DConditionModelConfig {
    let blocks = c
        .block_out_channels
        .iter()
        .enumerate()
        .map(|(i, &out_channels)| BlockConfig {
            out_channels,
            use_cross_attn: c.down_block_types[i].starts_with("CrossAttn").then_some(1),
            attention_head_dim: c.heads(i),
        })
        .collect();
    UNet2DConditionModelConfig {
        center_input_sample: false,
        flip_sin_to_cos: c.flip_sin_to_cos,
        freq_shift: c.freq_shift,
        blocks,
        layers_per_block: c.layers_per_block,
        downsample_padding: c.downsample_padding,
        mid_block_scale_factor: c.mid_block_scale_factor,
        norm_num_groups: c.norm_num_groups,
        norm_eps: c.norm_eps,
        cross_attention_dim: c.cross_attention_dim,
        sliced_attention_size: None,
        use_linear_projection: c.use_linear_projection,
    }
}

/// Runs candle's U-Net once on `input` [B, C, h, w] / `context` [B, 77, D] at `timestep` and
/// returns (milliseconds, output).
pub fn candle_unet(
    c: &UNetConfig,
    accesses: &[Access],
    input: (&[f32], [usize; 4]),
    context: (&[f32], [usize; 3]),
    timestep: f64,
) -> Result<(f64, Vec<f32>)> {
    let dev = Device::Cpu;
    let backend = Synthetic(accesses.iter().map(|a| (a.name.clone(), a.clone())).collect());
    let vb = candle_nn::VarBuilder::from_backend(Box::new(backend), CDType::F32, dev.clone());
    let unet = UNet2DConditionModel::new(vb, c.in_channels, c.out_channels, false, candle_config(c))
        .context("building candle-transformers' U-Net")?;
    let x = Tensor::from_slice(input.0, &input.1, &dev)?;
    let ctx = Tensor::from_slice(context.0, &context.1, &dev)?;
    let t0 = Instant::now();
    let y = unet.forward(&x, timestep, &ctx)?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    Ok((ms, y.flatten_all()?.to_vec1::<f32>()?))
}

/// The ratio and agreement of one U-Net step, ours (`ours_ms`, `ours_out`) against candle's.
pub fn report(ours_ms: f64, ours_out: &[f32], candle_ms: f64, candle_out: &[f32]) -> CandleReport {
    let (mut dot, mut na, mut nb, mut max) = (0f64, 0f64, 0f64, 0f32);
    for (&a, &b) in ours_out.iter().zip(candle_out) {
        dot += a as f64 * b as f64;
        na += a as f64 * a as f64;
        nb += b as f64 * b as f64;
        max = max.max((a - b).abs());
    }
    CandleReport {
        ours_ms,
        candle_ms,
        ratio: ours_ms / candle_ms,
        threads: candle_core::utils::get_num_threads(),
        cosine: dot / (na.sqrt() * nb.sqrt()).max(f64::MIN_POSITIVE),
        max_abs_diff: max,
    }
}
