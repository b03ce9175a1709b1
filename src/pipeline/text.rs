//! Prompts → what the U-Net is conditioned on: the cross-attention context and, for SDXL, the
//! added conditioning, as diffusers' `StableDiffusionPipeline.encode_prompt` and
//! `StableDiffusionXLPipeline.encode_prompt` / `_get_add_time_ids` build them.
//!
//! SDXL runs each prompt through both text encoders, takes each one's penultimate hidden states
//! (no final layer norm) and concatenates them along the feature axis (768 + 1280 = 2048); the
//! pooled, projected embedding of `text_encoder_2` and the micro-conditioning `add_time_ids`
//! (original size, crop corner, target size) go through the U-Net's `add_embedding`. With
//! `force_zeros_for_empty_prompt` (SDXL and SDXL-Turbo ship it) a missing negative prompt is
//! zeros, not the encoding of "".

use super::conditioning;
use super::generate::{Request, StableDiffusion};
use super::prompt::PromptSyntax;
use crate::error::{Error, Result};
use crate::gpu::{DType, GpuTensor};
use crate::models::clip::{ClipTextModel, Hidden};
use crate::models::config::TIME_IDS;
use crate::models::unet::Added;

/// What the U-Net sees besides the latents: rows [uncond × b, cond × b] with guidance.
pub struct Conditioning {
    pub context: GpuTensor,
    pub added: Option<Added>,
}

fn released() -> Error {
    Error::Request("the text encoder was released to save memory; load the model again to change the prompt".into())
}

/// diffusers' `add_time_ids` with its defaults: original size = target size = the image's
/// (height, width), crop corner (0, 0).
pub fn time_ids(width: usize, height: usize) -> [f32; TIME_IDS] {
    let (h, w) = (height as f32, width as f32);
    [h, w, 0.0, 0.0, h, w]
}

/// The negative prompt a request leaves unset: with `force_zeros_for_empty_prompt`, diffusers
/// zeroes it (`negative_prompt=None`); an empty text box means the same here.
fn zeroed(r: &Request) -> bool {
    r.negative_prompt.as_deref().is_none_or(str::is_empty)
}

impl StableDiffusion {
    /// True for SDXL-style models: two text encoders and the U-Net's text_time conditioning.
    pub fn is_xl(&self) -> bool {
        self.unet_config.text_time().is_some()
    }

    pub(super) async fn encode(&self, prompts: &[(&str, PromptSyntax)]) -> Result<GpuTensor> {
        let te = self.text_encoder.as_ref().ok_or_else(released)?;
        let context = conditioning::context(&self.tokenizer, te, prompts).await?;
        // One small readback (2 × 77 × 768 values for SD 1.5), so an overflow is named where it
        // happens rather than at the U-Net's first step.
        super::generate::finite(&context.to_vec_f32().await?, "the text encoder", context.dtype())?;
        Ok(context)
    }

    pub(super) async fn condition(&self, reqs: &[Request], cfg: bool) -> Result<Conditioning> {
        let mut prompts: Vec<(&str, PromptSyntax)> = Vec::new();
        if cfg {
            prompts.extend(reqs.iter().map(|r| (r.negative_prompt.as_deref().unwrap_or(""), r.prompt_syntax)));
        }
        prompts.extend(reqs.iter().map(|r| (r.prompt.as_str(), r.prompt_syntax)));
        if !self.is_xl() {
            return Ok(Conditioning { context: self.encode(&prompts).await?, added: None });
        }
        // Rows zeroed instead of encoded: the unconditional half, per request.
        let zero: Vec<bool> = (0..prompts.len())
            .map(|i| cfg && i < reqs.len() && self.force_zeros_for_empty_prompt && zeroed(&reqs[i]))
            .collect();
        let encoded: Vec<(&str, PromptSyntax)> =
            prompts.iter().zip(&zero).filter(|(_, &z)| !z).map(|(p, _)| *p).collect();
        let (context, pooled) = self.encode_xl(&encoded).await?;
        let (_, pooled_dim) = self.unet_config.text_time().unwrap_or_default();
        let per = context.len() / encoded.len().max(1);
        if pooled.len() != encoded.len() * pooled_dim {
            return Err(Error::Request(format!(
                "text_encoder_2 pools {} values a prompt; the U-Net's add_embedding takes {pooled_dim}",
                pooled.len() / encoded.len().max(1)
            )));
        }
        let (mut ctx, mut pool) = (Vec::with_capacity(per * prompts.len()), Vec::new());
        let mut next = 0;
        for &z in &zero {
            if z {
                ctx.extend(std::iter::repeat_n(0.0, per));
                pool.extend(std::iter::repeat_n(0.0, pooled_dim));
            } else {
                ctx.extend_from_slice(&context[next * per..(next + 1) * per]);
                pool.extend_from_slice(&pooled[next * pooled_dim..(next + 1) * pooled_dim]);
                next += 1;
            }
        }
        let dim = self.unet_config.cross_attention_dim;
        let rows = prompts.len();
        let context = GpuTensor::from_f32_as(&self.gpu, &ctx, &[rows, per / dim, dim], self.dtype)?;
        let text_embeds = GpuTensor::from_f32_as(&self.gpu, &pool, &[rows, pooled_dim], self.dtype)?;
        let r = &reqs[0];
        let time_ids = time_ids(r.width, r.height).repeat(rows);
        Ok(Conditioning { context, added: Some(Added { text_embeds, time_ids }) })
    }

    /// Both encoders' penultimate states, concatenated per token, and text_encoder_2's pooled
    /// embeddings: [rows × tokens × (d1 + d2)] and [rows × projection_dim], on the CPU (a few
    /// hundred thousand values), checked finite.
    async fn encode_xl(&self, prompts: &[(&str, PromptSyntax)]) -> Result<(Vec<f32>, Vec<f32>)> {
        if prompts.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let te1 = self.text_encoder.as_ref().ok_or_else(released)?;
        let (te2, tok2) = match (&self.text_encoder_2, &self.tokenizer_2) {
            (Some(t), Some(k)) => (t, k),
            _ => return Err(released()),
        };
        let penultimate = Hidden::Penultimate { skip: 0 };
        let a = conditioning::encode(&self.tokenizer, te1, prompts, penultimate, false).await?;
        let b = conditioning::encode(tok2, te2, prompts, penultimate, true).await?;
        let pooled = b.pooled.ok_or_else(|| {
            Error::Request("text_encoder_2 has no text_projection: SDXL needs CLIPTextModelWithProjection".into())
        })?;
        let (sa, sb) = (a.hidden.shape().to_vec(), b.hidden.shape().to_vec());
        if sa[..2] != sb[..2] {
            return Err(Error::Request(format!("the two text encoders' contexts differ in shape: {sa:?} and {sb:?}")));
        }
        let (d1, d2) = (sa[2], sb[2]);
        if d1 + d2 != self.unet_config.cross_attention_dim {
            return Err(Error::Request(format!(
                "the text encoders give {d1} + {d2} features; the U-Net's cross_attention_dim is {}",
                self.unet_config.cross_attention_dim
            )));
        }
        let (va, vb) = (a.hidden.to_vec_f32().await?, b.hidden.to_vec_f32().await?);
        let pooled = pooled.to_vec_f32().await?;
        super::generate::finite(&va, "the text encoder", a.hidden.dtype())?;
        super::generate::finite(&vb, "text_encoder_2", b.hidden.dtype())?;
        super::generate::finite(&pooled, "text_encoder_2's pooled output", b.hidden.dtype())?;
        let mut out = Vec::with_capacity(va.len() + vb.len());
        for (x, y) in va.chunks_exact(d1).zip(vb.chunks_exact(d2)) {
            out.extend_from_slice(x);
            out.extend_from_slice(y);
        }
        Ok((out, pooled))
    }

    /// Records the text encoders' forward passes for `prepare` (their outputs are not used).
    pub(super) fn prepare_text(&self, rows: usize) -> Result<()> {
        let tokens = self.tokenizer.max_len;
        let ids: Vec<u32> =
            (0..rows * tokens).map(|i| if i % tokens == 0 { self.tokenizer.bos } else { self.tokenizer.eos }).collect();
        let xl = self.is_xl();
        let run = |te: &ClipTextModel, eos: Option<u32>| -> Result<()> {
            let hidden = if xl { Hidden::Penultimate { skip: 0 } } else { Hidden::Normed { skip: 0 } };
            drop(te.encode(&ids, rows, hidden, eos)?);
            Ok(())
        };
        if let Some(te) = &self.text_encoder {
            run(te, None)?;
        }
        if let (Some(te), Some(tok)) = (&self.text_encoder_2, &self.tokenizer_2) {
            run(te, Some(tok.eos))?;
        }
        Ok(())
    }

    /// Zeros shaped like a generation's conditioning (`prepare` records the U-Net on them).
    pub(super) fn zero_conditioning(&self, rows: usize, dtype: DType) -> Result<Conditioning> {
        let (tokens, dim) = (self.tokenizer.max_len, self.unet_config.cross_attention_dim);
        let context = GpuTensor::from_f32_as(&self.gpu, &vec![0.0; rows * tokens * dim], &[rows, tokens, dim], dtype)?;
        let added = match self.unet_config.text_time() {
            Some((_, p)) => Some(Added {
                text_embeds: GpuTensor::from_f32_as(&self.gpu, &vec![0.0; rows * p], &[rows, p], dtype)?,
                time_ids: time_ids(512, 512).repeat(rows),
            }),
            None => None,
        };
        Ok(Conditioning { context, added })
    }
}
