//! CLIPTextModel and CLIPTextModelWithProjection (transformers): token + position embeddings,
//! pre-norm causal self-attention layers with a quick_gelu (SD 1.x) or gelu (SD 2.x, SDXL) MLP,
//! the final layer norm, and (with projection) the pooled EOS state through `text_projection`.

use super::config::ClipConfig;
use super::nn::{LayerNorm, Linear, Weight};
use super::weights::Weights;
use crate::error::{Error, Result};
use crate::gpu::GpuTensor;
use crate::ops::{self, AttentionLayout};

struct ClipLayer {
    ln1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

pub struct ClipTextModel {
    pub config: ClipConfig,
    /// A matrix to the quantization policy: the largest tensor of a text encoder (SDXL's two are
    /// 202 MB in f16), gathered row by row, so it may be stored in blocks.
    token_embedding: Weight,
    position_embedding: GpuTensor,
    layers: Vec<ClipLayer>,
    final_ln: LayerNorm,
    text_projection: Option<Linear>,
}

/// Which hidden states become the U-Net's context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hidden {
    /// `skip` layers before the end, through the final layer norm (SD 1.x/2.x pipelines,
    /// diffusers' `clip_skip`).
    Normed { skip: usize },
    /// `hidden_states[-(skip + 2)]` as it is, no final layer norm (SDXL's pipelines).
    Penultimate { skip: usize },
}

/// What one pass of the encoder gives.
pub struct Encoded {
    /// [B, T, hidden].
    pub hidden: GpuTensor,
    /// [B, projection_dim]: the final-layer-normed state at each row's first EOS token through
    /// `text_projection` (CLIPTextModelWithProjection's `text_embeds`), when the model has one.
    pub pooled: Option<GpuTensor>,
}

impl ClipTextModel {
    /// `w` at the file root. Published checkpoints (transformers 4) name the tensors
    /// `text_model.*`; transformers 5 saves `CLIPTextModel` and `CLIPTextModelWithProjection`
    /// without that level, so every fine-tune saved with current tools does: both are read
    /// (a `text_projection` beside them is not part of this model).
    pub fn load(config: ClipConfig, w: &Weights) -> Result<ClipTextModel> {
        let nested = w.contains("text_model.embeddings.token_embedding.weight");
        let flat = w.contains("embeddings.token_embedding.weight");
        let t = if nested || !flat { w.pp("text_model") } else { w.clone() };
        let (d, eps) = (config.hidden_size, config.layer_norm_eps);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = t.pp(format!("encoder.layers.{i}"));
                let a = l.pp("self_attn");
                Ok(ClipLayer {
                    ln1: LayerNorm::load(&l.pp("layer_norm1"), d, eps)?,
                    q: Linear::load(&a.pp("q_proj"), d, d, true)?,
                    k: Linear::load(&a.pp("k_proj"), d, d, true)?,
                    v: Linear::load(&a.pp("v_proj"), d, d, true)?,
                    out: Linear::load(&a.pp("out_proj"), d, d, true)?,
                    ln2: LayerNorm::load(&l.pp("layer_norm2"), d, eps)?,
                    fc1: Linear::load(&l.pp("mlp.fc1"), d, config.intermediate_size, true)?,
                    fc2: Linear::load(&l.pp("mlp.fc2"), config.intermediate_size, d, true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ClipTextModel {
            token_embedding: t.matrix("embeddings.token_embedding.weight", &[config.vocab_size, d])?,
            position_embedding: t.get("embeddings.position_embedding.weight", &[config.max_position_embeddings, d])?,
            final_ln: LayerNorm::load(&t.pp("final_layer_norm"), d, eps)?,
            // `text_projection` sits beside `text_model`, not in it.
            text_projection: match config.projection_dim.filter(|_| config.with_projection()) {
                Some(p) => Some(Linear::load(&w.pp("text_projection"), d, p, false)?),
                None => None,
            },
            layers,
            config,
        })
    }

    /// Hidden states [B, T, hidden] for `ids` (B rows of T tokens), after the final layer norm.
    /// `clip_skip` = k stops k layers early (diffusers' `clip_skip`); SD 2 checkpoints already
    /// dropped their last layer, so they use 0.
    pub fn forward(&self, ids: &[u32], batch: usize, clip_skip: usize) -> Result<GpuTensor> {
        Ok(self.encode(ids, batch, Hidden::Normed { skip: clip_skip }, None)?.hidden)
    }

    /// The hidden states `hidden` picks and, with `eos` (the end-of-text token id) on a model
    /// with a projection, the pooled embedding of each row.
    pub fn encode(&self, ids: &[u32], batch: usize, hidden: Hidden, eos: Option<u32>) -> Result<Encoded> {
        let c = &self.config;
        let tokens = ids.len() / batch.max(1);
        if batch == 0 || tokens * batch != ids.len() || tokens > c.max_position_embeddings {
            return Err(Error::shape(
                "clip",
                format!("{} ids for {batch} prompts of at most {} tokens", ids.len(), c.max_position_embeddings),
            ));
        }
        let (run, normed) = match hidden {
            Hidden::Normed { skip } => (c.num_hidden_layers.checked_sub(skip).filter(|&r| r > 0), true),
            Hidden::Penultimate { skip } => (c.num_hidden_layers.checked_sub(skip + 1).filter(|&r| r > 0), false),
        };
        let Some(run) = run else {
            return Err(Error::shape("clip", format!("{hidden:?} with {} layers", c.num_hidden_layers)));
        };
        let pooled = eos.filter(|_| self.text_projection.is_some());
        let d = c.hidden_size;
        let pos = ops::narrow(&self.position_embedding, 0, 0, tokens)?;
        let tok = match &self.token_embedding {
            Weight::Dense(table) => ops::embedding(table, ids)?,
            Weight::Quant(table) => ops::embedding_quant(table, ids, pos.dtype())?,
        };
        let mut x = ops::add(&tok.reshape(&[batch, tokens, d])?, &pos)?;
        let last = if pooled.is_some() { c.num_hidden_layers } else { run };
        let mut out = None;
        for (i, layer) in self.layers[..last].iter().enumerate() {
            if i == run {
                out = Some(x.clone());
            }
            x = self.layer(layer, &x)?;
        }
        let hidden = match out {
            Some(h) => h,
            None => x.clone(),
        };
        let hidden = if normed { self.final_ln.forward(&hidden)? } else { hidden };
        let pooled = match (pooled, &self.text_projection) {
            (Some(eos), Some(proj)) => {
                // transformers takes each row's first EOS (argmax when eos_token_id is the legacy
                // 2: the same place, EOS being the largest id).
                let rows: Vec<u32> = ids
                    .chunks_exact(tokens)
                    .enumerate()
                    .map(|(r, row)| (r * tokens + row.iter().position(|&t| t == eos).unwrap_or(tokens - 1)) as u32)
                    .collect();
                let last = ops::embedding(&x.reshape(&[batch * tokens, d])?, &rows)?;
                Some(proj.forward(&self.final_ln.forward(&last)?)?)
            }
            _ => None,
        };
        Ok(Encoded { hidden, pooled })
    }

    fn layer(&self, layer: &ClipLayer, x: &GpuTensor) -> Result<GpuTensor> {
        let c = &self.config;
        let h = layer.ln1.forward(x)?;
        let (q, k, v) = (layer.q.forward(&h)?, layer.k.forward(&h)?, layer.v.forward(&h)?);
        let a = ops::attention(&q, &k, &v, c.num_attention_heads, AttentionLayout::Merged, true, None)?;
        let x = ops::add(x, &layer.out.forward(&a)?)?;
        let h = layer.fc1.forward(&layer.ln2.forward(&x)?)?;
        let h = if c.hidden_act == "gelu" { ops::gelu(&h)? } else { ops::gelu_quick(&h)? };
        ops::add(&x, &layer.fc2.forward(&h)?)
    }
}
