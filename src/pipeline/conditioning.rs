//! From prompts to the U-Net's cross-attention context, the way AUTOMATIC1111 builds it
//! (`sd_hijack_clip.py`): a prompt of any length becomes consecutive 77-token chunks (BOS + 75
//! tokens + EOS), each encoded alone and concatenated along the sequence axis; emphasis
//! multiplies each token's hidden state by its weight and rescales the chunk to its unweighted
//! mean. A batch's rows are padded to the same number of chunks with empty ones.
//!
//! `PromptSyntax::Diffusers` is diffusers' reading instead: the literal text, truncated to one
//! chunk, no weights.

use super::prompt::{parse_attention, PromptSyntax};
use crate::error::{Error, Result};
use crate::gpu::GpuTensor;
use crate::models::clip::{ClipTextModel, Encoded, Hidden};
use crate::models::tokenizer::ClipTokenizer;
use crate::ops;

/// The most 75-token chunks a prompt may take (1200 tokens).
pub const MAX_PROMPT_CHUNKS: usize = 16;
/// The longest prompt text taken, in bytes: far above what 16 chunks hold (a token is a few
/// bytes), low enough that a pasted novel is refused before it is tokenized.
pub const MAX_PROMPT_BYTES: usize = 32 << 10;

/// How many tokens back from a full chunk A1111 looks for a comma to break at instead
/// (its `comma_padding_backtrack` default).
const COMMA_BACKTRACK: usize = 20;

/// One chunk: `max_len` token ids and a weight for each.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    pub ids: Vec<u32>,
    pub weights: Vec<f32>,
}

/// A prompt as chunks, with A1111's token count (the prompt's tokens; full chunks count 75).
#[derive(Clone, Debug, PartialEq)]
pub struct PromptTokens {
    pub chunks: Vec<Chunk>,
    pub count: usize,
    /// Tokens cut off (only `PromptSyntax::Diffusers` truncates).
    pub dropped: usize,
    /// Tokens a chunk holds (75 for CLIP's 77).
    pub per_chunk: usize,
}

impl PromptTokens {
    /// The count shown beside it: the tokens that fit in as many chunks as the prompt needs
    /// (`34/75`, `80/150`).
    pub fn target(&self) -> usize {
        self.count.max(1).div_ceil(self.per_chunk) * self.per_chunk
    }

    pub fn weighted(&self) -> bool {
        self.chunks.iter().any(|c| c.weights.iter().any(|&w| w != 1.0))
    }
}

/// Builds chunks: BOS + `body` padded with EOS + EOS, then, where the pad token is not EOS (SD
/// 2), everything after the first EOS is the pad token, as A1111 does before encoding.
fn finish(tok: &ClipTokenizer, body: &[u32], weights: &[f64]) -> Chunk {
    let n = tok.max_len;
    let mut ids = Vec::with_capacity(n);
    ids.push(tok.bos);
    ids.extend_from_slice(body);
    ids.resize(n, tok.eos);
    if tok.pad != tok.eos {
        if let Some(first) = ids.iter().position(|&t| t == tok.eos) {
            ids[first + 1..].iter_mut().for_each(|t| *t = tok.pad);
        }
    }
    let mut w = Vec::with_capacity(n);
    w.push(1.0);
    w.extend(weights.iter().map(|&x| x as f32));
    w.resize(n, 1.0);
    Chunk { ids, weights: w }
}

/// The chunk that pads a shorter prompt of a batch (A1111's `empty_chunk`).
pub fn empty_chunk(tok: &ClipTokenizer) -> Chunk {
    finish(tok, &[], &[])
}

pub fn tokenize(tok: &ClipTokenizer, prompt: &str, syntax: PromptSyntax) -> Result<PromptTokens> {
    if prompt.len() > MAX_PROMPT_BYTES {
        return Err(Error::Request(format!(
            "the prompt has {} bytes of text; at most {MAX_PROMPT_BYTES} are taken",
            prompt.len()
        )));
    }
    let per_chunk = tok.max_len - 2;
    if syntax == PromptSyntax::Diffusers {
        let t = tok.encode(prompt)?;
        let weights = vec![1.0; tok.max_len];
        let count = t.total - 2 - t.dropped;
        return Ok(PromptTokens { chunks: vec![Chunk { ids: t.ids, weights }], count, dropped: t.dropped, per_chunk });
    }
    let mut chunks = Vec::new();
    let (mut body, mut weights): (Vec<u32>, Vec<f64>) = (Vec::new(), Vec::new());
    let mut count = 0;
    let mut last_comma: Option<usize> = None;
    for fragment in parse_attention(prompt) {
        if fragment.is_break() {
            chunks.push(finish(tok, &body, &weights));
            count += per_chunk;
            (body, weights, last_comma) = (Vec::new(), Vec::new(), None);
            continue;
        }
        for token in tok.tokenize(&fragment.text)? {
            if Some(token) == tok.comma {
                last_comma = Some(body.len());
            } else if let Some(at) =
                last_comma.filter(|&at| body.len() == per_chunk && per_chunk - at <= COMMA_BACKTRACK)
            {
                // A full chunk with a comma near its end: the words after the comma move to the
                // next chunk, so a phrase is not cut in two.
                let (moved, moved_w) = (body.split_off(at + 1), weights.split_off(at + 1));
                chunks.push(finish(tok, &body, &weights));
                count += per_chunk;
                (body, weights, last_comma) = (moved, moved_w, None);
            }
            if body.len() == per_chunk {
                chunks.push(finish(tok, &body, &weights));
                count += per_chunk;
                (body, weights, last_comma) = (Vec::new(), Vec::new(), None);
            }
            body.push(token);
            weights.push(fragment.weight);
        }
    }
    if !body.is_empty() || chunks.is_empty() {
        count += body.len();
        chunks.push(finish(tok, &body, &weights));
    }
    Ok(PromptTokens { chunks, count, dropped: 0, per_chunk })
}

/// A1111's "Original" emphasis on one chunk's hidden states `z` [tokens, dim]: each token's
/// row times its weight, then the whole rescaled to the mean it had before.
pub fn emphasize(z: &mut [f32], weights: &[f32]) {
    let dim = z.len() / weights.len().max(1);
    let mean = |z: &[f32]| z.iter().map(|&v| v as f64).sum::<f64>() / z.len().max(1) as f64;
    let before = mean(z);
    for (row, &w) in z.chunks_exact_mut(dim).zip(weights) {
        row.iter_mut().for_each(|v| *v *= w);
    }
    let after = mean(z);
    let scale = (before as f32) / (after as f32);
    // A chunk whose weighted mean is 0 (weights summing hidden states to nothing) keeps its
    // weighted values rather than becoming inf/NaN.
    if scale.is_finite() {
        z.iter_mut().for_each(|v| *v *= scale);
    }
}

/// The cross-attention context [rows, chunks × 77, dim] for `prompts` (text, syntax): each
/// chunk through the text encoder's last layer, rows padded with empty chunks to the batch's
/// most, emphasis applied where a prompt weighs its tokens.
pub async fn context(tok: &ClipTokenizer, te: &ClipTextModel, prompts: &[(&str, PromptSyntax)]) -> Result<GpuTensor> {
    Ok(encode(tok, te, prompts, Hidden::Normed { skip: 0 }, false).await?.hidden)
}

/// `context` with the hidden states `hidden` picks and, with `pooled`, each prompt's pooled
/// projected embedding [rows, projection_dim] (SDXL's `text_encoder_2`): A1111 and ComfyUI take
/// it from the prompt's first chunk, as diffusers' single chunk.
pub async fn encode(
    tok: &ClipTokenizer,
    te: &ClipTextModel,
    prompts: &[(&str, PromptSyntax)],
    hidden: Hidden,
    pooled: bool,
) -> Result<Encoded> {
    let tokens = prompts.iter().map(|&(p, syntax)| tokenize(tok, p, syntax)).collect::<Result<Vec<_>>>()?;
    let chunks = tokens.iter().map(|t| t.chunks.len()).max().unwrap_or(1);
    if chunks > MAX_PROMPT_CHUNKS {
        let longest = tokens.iter().map(|t| t.count).max().unwrap_or(0);
        return Err(Error::Request(format!(
            "a prompt has {longest} tokens in {chunks} chunks; at most {MAX_PROMPT_CHUNKS} chunks of 75 are taken"
        )));
    }
    let empty = empty_chunk(tok);
    let rows: Vec<&Chunk> =
        tokens.iter().flat_map(|t| (0..chunks).map(move |i| t.chunks.get(i))).map(|c| c.unwrap_or(&empty)).collect();
    let ids: Vec<u32> = rows.iter().flat_map(|c| c.ids.iter().copied()).collect();
    let out = te.encode(&ids, rows.len(), hidden, pooled.then_some(tok.eos))?;
    let pooled = match out.pooled {
        Some(p) if chunks > 1 => {
            let firsts: Vec<u32> = (0..prompts.len()).map(|i| (i * chunks) as u32).collect();
            Some(ops::embedding(&p, &firsts)?)
        }
        p => p,
    };
    let z = out.hidden;
    let (len, dim) = (tok.max_len, te.config.hidden_size);
    let shape = [prompts.len(), chunks * len, dim];
    if !tokens.iter().any(PromptTokens::weighted) {
        return Ok(Encoded { hidden: z.reshape(&shape)?, pooled });
    }
    let mut values = z.to_vec_f32().await?;
    for (chunk, z) in rows.iter().zip(values.chunks_exact_mut(len * dim)) {
        emphasize(z, &chunk.weights);
    }
    Ok(Encoded { hidden: GpuTensor::from_f32_as(z.gpu(), &values, &shape, z.dtype())?, pooled })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emphasis_keeps_the_mean_and_weighs_rows() {
        let mut z = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        emphasize(&mut z, &[1.0, 2.0, 1.0]);
        let mean = z.iter().sum::<f32>() / 6.0;
        assert!((mean - 3.5).abs() < 1e-6, "{z:?}");
        // Row 1 doubled relative to the others, then all scaled by 21 / 28.
        let s = 21.0 / 28.0;
        for (g, w) in z.iter().zip([1.0 * s, 2.0 * s, 6.0 * s, 8.0 * s, 5.0 * s, 6.0 * s]) {
            assert!((g - w).abs() < 1e-6, "{z:?}");
        }
    }
}
