//! Which storage type each tensor gets: the per-tensor quantization policy.
//!
//! Only *matrices* can be quantized: weights consumed by a matmul or a conv, whose reduction
//! dimension (`in` of nn.Linear, `Cin*KH*KW` of a conv) is a whole number of 32-blocks. The model
//! constructors say which tensors those are (`Weights::matrix`; token embeddings too, whose
//! rows are dequantized as they are gathered), so the policy never has to guess from names.
//! Everything else (norms, biases, position embeddings) and every matrix a rule keeps out is
//! stored as `other` (f16 by default).
//!
//! A policy is JSON (`convert --policy FILE`), e.g.
//! `{"matrices": "q4_0", "other": "f16", "rules": [{"match": "vae.*", "dtype": "f16"}]}`;
//! rule patterns match `component.tensor` names (`unet.down_blocks.0.resnets.0.conv1.weight`),
//! `*` matching any run of characters; the first matching rule wins.

use serde::{Deserialize, Serialize};

use super::{QuantFormat, BLOCK};
use crate::error::{Error, Result};

/// How a tensor is stored (in a package, and for quantized ones also on the GPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StoreType {
    #[serde(rename = "f32")]
    F32,
    #[serde(rename = "f16")]
    F16,
    #[serde(rename = "q8_0")]
    Q8_0,
    #[serde(rename = "q4_0")]
    Q4_0,
    #[serde(rename = "q3_0")]
    Q3_0,
}

impl StoreType {
    pub fn parse(s: &str) -> Result<StoreType> {
        serde_json::from_value(serde_json::Value::String(s.to_string()))
            .map_err(|_| Error::Request(format!("unknown storage type {s} (f32, f16, q8_0, q4_0 or q3_0)")))
    }

    pub fn name(self) -> &'static str {
        match self {
            StoreType::F32 => "f32",
            StoreType::F16 => "f16",
            StoreType::Q8_0 => "q8_0",
            StoreType::Q4_0 => "q4_0",
            StoreType::Q3_0 => "q3_0",
        }
    }

    pub fn quant(self) -> Option<QuantFormat> {
        match self {
            StoreType::Q8_0 => Some(QuantFormat::Q8_0),
            StoreType::Q4_0 => Some(QuantFormat::Q4_0),
            StoreType::Q3_0 => Some(QuantFormat::Q3_0),
            _ => None,
        }
    }

    /// Bytes of `numel` values (a quantized count must be whole blocks).
    pub fn bytes(self, numel: usize) -> usize {
        match self {
            // Saturating: `numel` may come from a hostile manifest (a mismatch is then reported).
            StoreType::F32 => numel.saturating_mul(4),
            StoreType::F16 => numel.saturating_mul(2),
            StoreType::Q8_0 | StoreType::Q4_0 | StoreType::Q3_0 => {
                numel / BLOCK * self.quant().map_or(0, |f| f.block_bytes())
            }
        }
    }
}

/// One override: tensors whose `component.name` matches `pattern` are stored as `dtype`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    #[serde(rename = "match")]
    pub pattern: String,
    pub dtype: StoreType,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantPolicy {
    /// Storage of matrices.
    pub matrices: StoreType,
    /// Storage of everything else.
    #[serde(default = "default_other")]
    pub other: StoreType,
    /// Matrices with fewer elements are stored as `other`: too small to matter for size.
    #[serde(default)]
    pub min_elements: usize,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

fn default_other() -> StoreType {
    StoreType::F16
}

impl QuantPolicy {
    /// The policy `convert --quant` and `generate --quant` use unless given a file.
    ///
    /// Kept out of quantization because size gains are small and errors there are seen directly:
    /// the VAE decoder (its convs produce the pixels) and the U-Net's `conv_in`/`conv_out`. The
    /// VAE encoder (img2img only) is q8_0. With `q4_0`, the tensors on the U-Net's residual
    /// paths stay q8_0 — skip-connection `conv_shortcut`s, transformer `proj_in`/`proj_out`,
    /// the feed-forward output `ff.net.2` and the down/upsamplers convs: quantizing one group at
    /// a time showed these carry most of q4_0's error (BENCHMARKS.md, "Quantization quality"),
    /// while the bulk — ResNet convs, attention projections, `ff.net.0` — tolerates 4 bits.
    /// Token embeddings (matrices gathered by row) keep `other` under q8_0 and q4_0.
    ///
    /// `q3_0` is the smallest package, for SDXL (whose q4_0 package cannot reach 1.8 GB): the
    /// q4_0 policy with the U-Net's bulk in q3_0 — every transformer-block projection (attention,
    /// both feed-forward layers) and the ResNet convs, 97% of SDXL's U-Net — and the token
    /// embeddings in q4_0; the text encoders stay q4_0 and the small residual-path tensors q8_0.
    pub fn standard(matrices: StoreType) -> QuantPolicy {
        let other = if matrices == StoreType::F32 { StoreType::F32 } else { StoreType::F16 };
        let rule = |pattern: &str, dtype| Rule { pattern: pattern.into(), dtype };
        let mut rules = Vec::new();
        if matrices.quant().is_some() {
            rules.push(rule("vae.encoder.*", StoreType::Q8_0));
            for pattern in ["vae.*", "unet.conv_in.*", "unet.conv_out.*"] {
                rules.push(rule(pattern, other));
            }
            let table = if matrices == StoreType::Q3_0 { StoreType::Q4_0 } else { other };
            rules.push(rule("*.token_embedding.*", table));
        }
        if matches!(matrices, StoreType::Q4_0 | StoreType::Q3_0) {
            for pattern in ["unet.*conv_shortcut.*", "unet.*proj_in.*", "unet.*proj_out.*", "unet.*samplers.*"] {
                rules.push(rule(pattern, StoreType::Q8_0));
            }
        }
        let matrices = match matrices {
            StoreType::Q3_0 => {
                for pattern in ["unet.*transformer_blocks.*", "unet.*resnets.*.conv*"] {
                    rules.push(rule(pattern, StoreType::Q3_0));
                }
                StoreType::Q4_0
            }
            StoreType::Q4_0 => {
                rules.push(rule("unet.*ff.net.2.*", StoreType::Q8_0));
                StoreType::Q4_0
            }
            m => m,
        };
        QuantPolicy { matrices, other, min_elements: 0, rules }
    }

    pub fn from_json(json: &str) -> Result<QuantPolicy> {
        serde_json::from_str(json).map_err(|e| Error::Request(format!("bad quantization policy: {e}")))
    }

    /// Storage of `name` (`component.tensor`). `matrix` gives `[rows, cols]` for tensors used as
    /// a matmul/conv weight (cols = the reduction dimension), `None` for any other tensor.
    pub fn decide(&self, name: &str, matrix: Option<[usize; 2]>) -> StoreType {
        let quantizable = matrix.is_some_and(|[r, c]| c % BLOCK == 0 && r * c >= self.min_elements.max(1));
        let wanted = match self.rules.iter().find(|r| glob(&r.pattern, name)) {
            Some(rule) => rule.dtype,
            None if matrix.is_some() => self.matrices,
            None => self.other,
        };
        if wanted.quant().is_some() && !quantizable {
            self.other
        } else {
            wanted
        }
    }
}

/// `*` matches any run of characters (including dots); everything else literally.
fn glob(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            // Let the last star swallow one more character and retry.
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("vae.*", "vae.decoder.conv_in.weight"));
        assert!(glob("unet.*.attn1.*", "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"));
        assert!(!glob("unet.*.attn1.*", "unet.down_blocks.0.resnets.0.conv1.weight"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXbYbc"));
        assert!(!glob("a*b", "aXbY"));
    }

    #[test]
    fn standard_policy_decisions() {
        let p = QuantPolicy::standard(StoreType::Q4_0);
        let d = |n: &str, m| p.decide(n, m);
        assert_eq!(d("unet.down_blocks.0.resnets.0.conv1.weight", Some([320, 2880])), StoreType::Q4_0);
        assert_eq!(d("unet.down_blocks.0.resnets.0.conv1.bias", None), StoreType::F16);
        assert_eq!(
            d("unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight", Some([1280, 768])),
            StoreType::Q4_0
        );
        assert_eq!(d("unet.up_blocks.1.resnets.0.conv_shortcut.weight", Some([1280, 2560])), StoreType::Q8_0);
        assert_eq!(d("unet.down_blocks.0.downsamplers.0.conv.weight", Some([320, 2880])), StoreType::Q8_0);
        assert_eq!(
            d("unet.mid_block.attentions.0.transformer_blocks.0.ff.net.2.weight", Some([1280, 5120])),
            StoreType::Q8_0
        );
        assert_eq!(d("vae.encoder.down_blocks.0.resnets.0.conv1.weight", Some([128, 1152])), StoreType::Q8_0);
        assert_eq!(d("unet.conv_out.weight", Some([4, 2880])), StoreType::F16);
        assert_eq!(d("vae.decoder.up_blocks.0.resnets.0.conv1.weight", Some([512, 4608])), StoreType::F16);
        // A reduction dimension that is not whole blocks cannot be quantized.
        assert_eq!(d("unet.x.weight", Some([8, 36])), StoreType::F16);
        assert_eq!(QuantPolicy::standard(StoreType::F32).decide("unet.x.weight", Some([8, 64])), StoreType::F32);
        let json = r#"{"matrices": "q8_0", "rules": [{"match": "text_encoder.*", "dtype": "f32"}]}"#;
        let p = QuantPolicy::from_json(json).unwrap();
        assert_eq!(p.other, StoreType::F16);
        assert_eq!(p.decide("text_encoder.a.weight", Some([64, 64])), StoreType::F32);
        assert_eq!(p.decide("unet.a.weight", Some([64, 64])), StoreType::Q8_0);
        assert!(QuantPolicy::from_json(r#"{"matrices": "q5_1"}"#).is_err());
        assert_eq!(StoreType::Q4_0.bytes(64), 36);
        assert_eq!(StoreType::Q3_0.bytes(64), 28);
        let emb = "text_encoder_2.text_model.embeddings.token_embedding.weight";
        assert_eq!(QuantPolicy::standard(StoreType::Q4_0).decide(emb, Some([49408, 1280])), StoreType::F16);
        let p3 = QuantPolicy::standard(StoreType::Q3_0);
        let d3 = |n: &str, m| p3.decide(n, m);
        assert_eq!(d3(emb, Some([49408, 1280])), StoreType::Q4_0);
        let tb = "unet.down_blocks.2.attentions.1.transformer_blocks.9";
        for t in ["attn1.to_q", "attn2.to_k", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2"] {
            assert_eq!(d3(&format!("{tb}.{t}.weight"), Some([1280, 1280])), StoreType::Q3_0, "{t}");
        }
        assert_eq!(d3("unet.down_blocks.2.attentions.1.proj_in.weight", Some([1280, 1280])), StoreType::Q8_0);
        assert_eq!(d3("unet.down_blocks.2.resnets.0.conv1.weight", Some([1280, 11520])), StoreType::Q3_0);
        assert_eq!(d3("unet.up_blocks.0.resnets.0.conv_shortcut.weight", Some([1280, 2560])), StoreType::Q8_0);
        assert_eq!(d3("unet.up_blocks.0.resnets.0.time_emb_proj.weight", Some([1280, 1280])), StoreType::Q4_0);
        assert_eq!(
            d3("text_encoder_2.text_model.encoder.layers.0.mlp.fc1.weight", Some([5120, 1280])),
            StoreType::Q4_0
        );
        assert_eq!(d3("vae.decoder.up_blocks.0.resnets.0.conv1.weight", Some([512, 4608])), StoreType::F16);
    }
}
