//! CLIPTextModel (transformers): token + position embeddings, pre-norm causal self-attention
//! layers with a quick_gelu (SD 1.x) or gelu (SD 2.x) MLP, and the final layer norm.

use super::config::ClipConfig;
use super::nn::{LayerNorm, Linear};
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
    token_embedding: GpuTensor,
    position_embedding: GpuTensor,
    layers: Vec<ClipLayer>,
    final_ln: LayerNorm,
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
            token_embedding: t.get("embeddings.token_embedding.weight", &[config.vocab_size, d])?,
            position_embedding: t.get("embeddings.position_embedding.weight", &[config.max_position_embeddings, d])?,
            final_ln: LayerNorm::load(&t.pp("final_layer_norm"), d, eps)?,
            layers,
            config,
        })
    }

    /// Hidden states [B, T, hidden] for `ids` (B rows of T tokens), after the final layer norm.
    /// `clip_skip` = k stops k layers early (diffusers' `clip_skip`); SD 2 checkpoints already
    /// dropped their last layer, so they use 0.
    pub fn forward(&self, ids: &[u32], batch: usize, clip_skip: usize) -> Result<GpuTensor> {
        let c = &self.config;
        let tokens = ids.len() / batch.max(1);
        if batch == 0 || tokens * batch != ids.len() || tokens > c.max_position_embeddings {
            return Err(Error::shape(
                "clip",
                format!("{} ids for {batch} prompts of at most {} tokens", ids.len(), c.max_position_embeddings),
            ));
        }
        if clip_skip >= c.num_hidden_layers {
            return Err(Error::shape("clip", format!("clip_skip {clip_skip} with {} layers", c.num_hidden_layers)));
        }
        let d = c.hidden_size;
        let pos = ops::narrow(&self.position_embedding, 0, 0, tokens)?;
        let mut x = ops::add(&ops::embedding(&self.token_embedding, ids)?.reshape(&[batch, tokens, d])?, &pos)?;
        for layer in &self.layers[..c.num_hidden_layers - clip_skip] {
            let h = layer.ln1.forward(&x)?;
            let (q, k, v) = (layer.q.forward(&h)?, layer.k.forward(&h)?, layer.v.forward(&h)?);
            let a = ops::attention(&q, &k, &v, c.num_attention_heads, AttentionLayout::Merged, true, None)?;
            x = ops::add(&x, &layer.out.forward(&a)?)?;
            let h = layer.fc1.forward(&layer.ln2.forward(&x)?)?;
            let h = if c.hidden_act == "gelu" { ops::gelu(&h)? } else { ops::gelu_quick(&h)? };
            x = ops::add(&x, &layer.fc2.forward(&h)?)?;
        }
        self.final_ln.forward(&x)
    }
}
