//! UNet2DConditionModel: timestep embedding, conv_in, down blocks, mid block, up blocks with skip
//! connections, norm + SiLU + conv_out. Serves SD 1.x, SD 2.x, SD-Turbo, LCM and SDXL configs
//! (SDXL: `text_time` added conditioning and several transformer blocks per attention).

use super::config::{UNetConfig, TIME_IDS};
use super::nn::{Conv2d, GroupNorm, Linear};
use super::unet_blocks::{BlockCfg, DownBlock, MidBlock, UpBlock, UpWidths};
use super::weights::Weights;
use crate::error::{Error, Result};
use crate::gpu::GpuTensor;
use crate::ops;

pub struct UNet {
    pub config: UNetConfig,
    linear_1: Linear,
    linear_2: Linear,
    cond_proj: Option<Linear>,
    /// SDXL's `add_embedding` (linear_1, linear_2) over [pooled text, time-id embeddings].
    add_embedding: Option<(Linear, Linear)>,
    conv_in: Conv2d,
    down: Vec<DownBlock>,
    mid: MidBlock,
    up: Vec<UpBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet {
    /// Loads from `w` positioned at the U-Net's root (names as in
    /// `unet/diffusion_pytorch_model.safetensors`).
    pub fn load(config: UNetConfig, w: &Weights) -> Result<UNet> {
        let ch = &config.block_out_channels;
        let n = ch.len();
        let temb = 4 * ch[0];
        let c = BlockCfg {
            temb,
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            context_dim: config.cross_attention_dim,
            linear_projection: config.use_linear_projection,
            depth: 1,
        };
        let at = |level: usize| BlockCfg { depth: config.transformer_depth(level), ..c };
        let te = w.pp("time_embedding");
        let mut down = Vec::new();
        for (i, kind) in config.down_block_types.iter().enumerate() {
            let cin = if i == 0 { ch[0] } else { ch[i - 1] };
            let pad = (i + 1 < n).then_some(config.downsample_padding);
            let cross = kind == "CrossAttnDownBlock2D";
            down.push(DownBlock::load(
                &w.pp(format!("down_blocks.{i}")),
                cross,
                config.layers_per_block,
                cin,
                ch[i],
                config.heads(i),
                pad,
                at(i),
            )?);
        }
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up = Vec::new();
        for (i, kind) in config.up_block_types.iter().enumerate() {
            let widths = UpWidths {
                prev: if i == 0 { rev[0] } else { rev[i - 1] },
                cout: rev[i],
                skip_last: rev[(i + 1).min(n - 1)],
            };
            let cross = kind == "CrossAttnUpBlock2D";
            let heads = config.heads(n - 1 - i);
            up.push(UpBlock::load(
                &w.pp(format!("up_blocks.{i}")),
                cross,
                config.layers_per_block + 1,
                widths,
                heads,
                i + 1 < n,
                at(n - 1 - i),
            )?);
        }
        let add_embedding = match config.text_time() {
            Some((t, text)) => {
                let ae = w.pp("add_embedding");
                let input = text + config_time_ids(t);
                Some((
                    Linear::load(&ae.pp("linear_1"), input, temb, true)?,
                    Linear::load(&ae.pp("linear_2"), temb, temb, true)?,
                ))
            }
            None => None,
        };
        Ok(UNet {
            add_embedding,
            linear_1: Linear::load(&te.pp("linear_1"), ch[0], temb, true)?,
            linear_2: Linear::load(&te.pp("linear_2"), temb, temb, true)?,
            cond_proj: config
                .time_cond_proj_dim
                .map(|d| Linear::load(&te.pp("cond_proj"), d, ch[0], false))
                .transpose()?,
            conv_in: Conv2d::load3(&w.pp("conv_in"), config.in_channels, ch[0])?,
            down,
            mid: MidBlock::load(&w.pp("mid_block"), ch[n - 1], config.heads(n - 1), at(n - 1))?,
            up,
            norm_out: GroupNorm::load(&w.pp("conv_norm_out"), ch[0], config.norm_num_groups, config.norm_eps)?,
            conv_out: Conv2d::load3(&w.pp("conv_out"), ch[0], config.out_channels)?,
            config,
        })
    }

    /// Predicts noise (or v) for `sample` [B, C, H, W] at `timestep` given the text
    /// `context` [B, T, D]. `timestep_cond` [B, time_cond_proj_dim] is LCM's guidance embedding.
    pub fn forward(
        &self,
        sample: &GpuTensor,
        timestep: f32,
        context: &GpuTensor,
        timestep_cond: Option<&GpuTensor>,
    ) -> Result<GpuTensor> {
        self.forward_with(sample, timestep, context, timestep_cond, None)
    }

    /// `forward` with SDXL's added conditioning, which a `text_time` U-Net requires.
    pub fn forward_with(
        &self,
        sample: &GpuTensor,
        timestep: f32,
        context: &GpuTensor,
        timestep_cond: Option<&GpuTensor>,
        added: Option<&Added>,
    ) -> Result<GpuTensor> {
        let [b, _, h, w] = ops::nchw(sample, "unet")?;
        let levels = self.config.block_out_channels.len();
        let factor = 1 << (levels - 1);
        if h % factor != 0 || w % factor != 0 {
            return Err(Error::shape("unet", format!("latent {h}x{w} must be a multiple of {factor}")));
        }
        let ch0 = self.config.block_out_channels[0];
        let t = ops::timestep_embedding(
            sample.gpu(),
            &vec![timestep; b],
            ch0,
            self.config.flip_sin_to_cos,
            self.config.freq_shift as f32,
            sample.dtype(),
        )?;
        let t = match (&self.cond_proj, timestep_cond) {
            (Some(proj), Some(cond)) => ops::add(&t, &proj.forward(cond)?)?,
            _ => t,
        };
        let mut temb = self.linear_2.forward(&ops::silu(&self.linear_1.forward(&t)?)?)?;
        match (&self.add_embedding, added) {
            (Some((l1, l2)), Some(a)) => {
                let aug = l2.forward(&ops::silu(&l1.forward(&self.added_input(a, b, sample)?)?)?)?;
                temb = ops::add(&temb, &aug)?;
            }
            (Some(_), None) => {
                return Err(Error::shape("unet", "this U-Net (text_time) needs the pooled text embedding and time ids"))
            }
            (None, _) => {}
        }
        // Every resnet applies SiLU to the embedding before its own projection: do it once.
        let temb_act = ops::silu(&temb)?;

        let mut x = self.conv_in.forward(sample)?;
        let mut skips = vec![x.clone()];
        for block in &self.down {
            x = block.forward(x, &temb_act, context, &mut skips)?;
        }
        x = self.mid.forward(&x, &temb_act, context)?;
        for block in &self.up {
            x = block.forward(x, &temb_act, context, &mut skips)?;
        }
        self.conv_out.forward(&self.norm_out.forward(&x, true)?)
    }

    /// diffusers' `aug_emb` input: [text_embeds, flatten(add_time_proj(time_ids))] per row.
    fn added_input(&self, a: &Added, b: usize, sample: &GpuTensor) -> Result<GpuTensor> {
        let (t, text) = self.config.text_time().unwrap_or_default();
        if a.text_embeds.shape() != [b, text] || a.time_ids.len() != b * TIME_IDS {
            return Err(Error::shape(
                "unet",
                format!(
                    "added conditioning for {b} rows needs text_embeds [{b}, {text}] and {} time ids; got {:?} and {}",
                    b * TIME_IDS,
                    a.text_embeds.shape(),
                    a.time_ids.len()
                ),
            ));
        }
        let times = ops::timestep_embedding(
            sample.gpu(),
            &a.time_ids,
            t,
            self.config.flip_sin_to_cos,
            self.config.freq_shift as f32,
            sample.dtype(),
        )?
        .reshape(&[b, config_time_ids(t)])?;
        ops::concat(&[&a.text_embeds, &times], 1)
    }
}

/// SDXL's added conditioning for a batch: the pooled, projected text embedding of
/// `text_encoder_2` [B, projection_dim] and `add_time_ids` (six numbers per row).
pub struct Added {
    pub text_embeds: GpuTensor,
    pub time_ids: Vec<f32>,
}

fn config_time_ids(time_dim: usize) -> usize {
    TIME_IDS * time_dim
}
