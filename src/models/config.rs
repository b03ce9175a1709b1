//! Model configurations, parsed from the diffusers / transformers `config.json` files exactly as
//! Hugging Face publishes them. Defaults are diffusers' where a key is absent. Keys we do not
//! implement (class embeddings, addition embeddings, …) are rejected when set, rather than
//! silently ignored.

use serde::Deserialize;

use crate::error::{Error, Result};

fn config_error(component: &str, e: impl std::fmt::Display) -> Error {
    Error::Config { component: component.to_string(), msg: e.to_string() }
}

/// Every size a config gives, within bounds, before any of it divides, multiplies or sizes an
/// allocation: `(key, value, at most)`, each at least 1. The bounds are far beyond any published
/// model (SDXL's widest U-Net level is 1280, OpenCLIP bigG's width 1280 and 32 layers).
fn sizes(component: &str, fields: &[(&str, usize, usize)]) -> Result<()> {
    for &(key, v, max) in fields {
        if !(1..=max).contains(&v) {
            return Err(config_error(component, format!("{key} is {v}; expected 1 to {max}")));
        }
    }
    Ok(())
}

/// `key` is a finite number within `lo..=hi`.
fn number(component: &str, key: &str, v: f64, lo: f64, hi: f64) -> Result<()> {
    if !(v.is_finite() && v >= lo && v <= hi) {
        return Err(config_error(component, format!("{key} is {v}; expected {lo} to {hi}")));
    }
    Ok(())
}

/// Bounds of a `PerBlock` value's entries.
fn per_block(component: &str, key: &str, p: &PerBlock, max: usize) -> Result<()> {
    let each: Vec<usize> = match p {
        PerBlock::One(v) => vec![*v],
        PerBlock::Each(v) => v.clone(),
    };
    each.into_iter().try_for_each(|v| sizes(component, &[(key, v, max)]))
}

/// A number or a per-block list, as `attention_head_dim` may be.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    pub fn get(&self, block: usize) -> usize {
        match self {
            PerBlock::One(v) => *v,
            PerBlock::Each(v) => v[block.min(v.len().saturating_sub(1))],
        }
    }
    fn len_ok(&self, blocks: usize) -> bool {
        match self {
            PerBlock::One(_) => true,
            PerBlock::Each(v) => v.len() == blocks,
        }
    }
}

/// CLIPTextModel (transformers `config.json` of `text_encoder/`).
#[derive(Clone, Debug, Deserialize)]
pub struct ClipConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    /// `quick_gelu` (SD 1.x, OpenAI CLIP) or `gelu` (SD 2.x, OpenCLIP).
    #[serde(default = "d_quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "d_ln_eps")]
    pub layer_norm_eps: f64,
    /// `CLIPTextModelWithProjection` (SDXL's `text_encoder_2`) says so here: it carries a
    /// `text_projection` from the pooled hidden state to `projection_dim`.
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub projection_dim: Option<usize>,
}

fn d_max_pos() -> usize {
    77
}
fn d_quick_gelu() -> String {
    "quick_gelu".into()
}
fn d_ln_eps() -> f64 {
    1e-5
}

impl ClipConfig {
    pub fn from_json(json: &str) -> Result<ClipConfig> {
        let c: ClipConfig = serde_json::from_str(json).map_err(|e| config_error("text_encoder", e))?;
        sizes(
            "text_encoder",
            &[
                ("vocab_size", c.vocab_size, 1 << 20),
                ("hidden_size", c.hidden_size, 16384),
                ("intermediate_size", c.intermediate_size, 65536),
                ("num_hidden_layers", c.num_hidden_layers, 256),
                ("num_attention_heads", c.num_attention_heads, 256),
                ("max_position_embeddings", c.max_position_embeddings, 4096),
            ],
        )?;
        number("text_encoder", "layer_norm_eps", c.layer_norm_eps, 0.0, 1.0)?;
        if c.hidden_size % c.num_attention_heads != 0 {
            return Err(config_error("text_encoder", "hidden_size must be a multiple of num_attention_heads"));
        }
        if !matches!(c.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(config_error("text_encoder", format!("unsupported hidden_act {}", c.hidden_act)));
        }
        if c.with_projection() {
            let p = c
                .projection_dim
                .ok_or_else(|| config_error("text_encoder", "CLIPTextModelWithProjection without projection_dim"))?;
            sizes("text_encoder", &[("projection_dim", p, 16384)])?;
        }
        Ok(c)
    }

    /// Whether the model ends in a `text_projection` (transformers' `CLIPTextModelWithProjection`).
    pub fn with_projection(&self) -> bool {
        self.architectures.iter().any(|a| a == "CLIPTextModelWithProjection")
    }
}

/// UNet2DConditionModel (`unet/config.json`).
#[derive(Clone, Debug, Deserialize)]
pub struct UNetConfig {
    #[serde(default = "d_4")]
    pub in_channels: usize,
    #[serde(default = "d_4")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default = "d_2")]
    pub layers_per_block: usize,
    /// Despite the name, the number of heads (diffusers' legacy naming): 8 for SD 1.x,
    /// [5, 10, 20, 20] for SD 2.x. `num_attention_heads`, when set, wins.
    #[serde(default = "d_head_dim")]
    pub attention_head_dim: PerBlock,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    pub cross_attention_dim: usize,
    #[serde(default = "d_32")]
    pub norm_num_groups: usize,
    #[serde(default = "d_ln_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "d_1")]
    pub downsample_padding: usize,
    #[serde(default = "d_one_f")]
    pub mid_block_scale_factor: f64,
    /// SD 2.x: Transformer2D projections are Linear instead of 1x1 convs.
    #[serde(default)]
    pub use_linear_projection: bool,
    /// SD 2.1-768 computes attention scores in f32 even in f16 (we always accumulate in f32).
    #[serde(default)]
    pub upcast_attention: Option<bool>,
    /// LCM's guidance-scale embedding input size.
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default)]
    pub transformer_layers_per_block: Option<PerBlock>,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub time_embedding_type: Option<String>,
    #[serde(default)]
    pub sample_size: Option<usize>,
    /// SDXL's `text_time` added conditioning: each of the six micro-conditioning numbers
    /// (original size, crop corner, target size) through a sinusoidal embedding of this width,
    /// beside the pooled text embedding, into `add_embedding` of this input width.
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    #[serde(default)]
    pub mid_block_type: Option<String>,
}

/// The micro-conditioning numbers SDXL's `add_time_ids` holds per image.
pub const TIME_IDS: usize = 6;

fn d_4() -> usize {
    4
}
fn d_2() -> usize {
    2
}
fn d_1() -> usize {
    1
}
fn d_32() -> usize {
    32
}
fn d_true() -> bool {
    true
}
fn d_one_f() -> f64 {
    1.0
}
fn d_head_dim() -> PerBlock {
    PerBlock::One(8)
}

impl UNetConfig {
    pub fn from_json(json: &str) -> Result<UNetConfig> {
        let c: UNetConfig = serde_json::from_str(json).map_err(|e| config_error("unet", e))?;
        let n = c.block_out_channels.len();
        let bad = |msg: String| Err(config_error("unet", msg));
        sizes(
            "unet",
            &[
                ("in_channels", c.in_channels, 64),
                ("out_channels", c.out_channels, 64),
                ("block_out_channels (levels)", n, 8),
                ("layers_per_block", c.layers_per_block, 16),
                ("cross_attention_dim", c.cross_attention_dim, 16384),
                ("norm_num_groups", c.norm_num_groups, 1024),
                ("sample_size", c.sample_size.unwrap_or(64), 1024),
                ("time_cond_proj_dim", c.time_cond_proj_dim.unwrap_or(1), 16384),
            ],
        )?;
        for &ch in &c.block_out_channels {
            sizes("unet", &[("block_out_channels", ch, 8192)])?;
        }
        per_block("unet", "attention_head_dim", &c.attention_head_dim, 1024)?;
        if let Some(h) = &c.num_attention_heads {
            per_block("unet", "num_attention_heads", h, 1024)?;
        }
        number("unet", "norm_eps", c.norm_eps, 0.0, 1.0)?;
        // diffusers' SD U-Nets use 0 / 1 / 1; far outside these the model computes nothing useful.
        number("unet", "freq_shift", c.freq_shift, -1e3, 1e3)?;
        number("unet", "mid_block_scale_factor", c.mid_block_scale_factor, 1e-6, 1e3)?;
        if c.downsample_padding != 1 {
            return bad(format!(
                "downsample_padding is {}; only 1 (what SD U-Nets use) is supported",
                c.downsample_padding
            ));
        }
        if c.down_block_types.len() != n || c.up_block_types.len() != n {
            return bad("block_out_channels, down_block_types and up_block_types must have one entry per level".into());
        }
        if !c.attention_head_dim.len_ok(n) || c.num_attention_heads.as_ref().is_some_and(|h| !h.len_ok(n)) {
            return bad("per-block head counts must have one entry per level".into());
        }
        for t in c.down_block_types.iter().chain(&c.up_block_types) {
            if !matches!(t.as_str(), "CrossAttnDownBlock2D" | "DownBlock2D" | "CrossAttnUpBlock2D" | "UpBlock2D") {
                return bad(format!("unsupported block type {t}"));
            }
        }
        if let Some(t) = &c.transformer_layers_per_block {
            per_block("unet", "transformer_layers_per_block", t, 64)?;
            if !t.len_ok(n) {
                return bad("transformer_layers_per_block must have one entry per level".into());
            }
        }
        if c.reverse_transformer_layers_per_block.as_ref().is_some_and(|v| !v.is_null()) {
            return bad("reverse_transformer_layers_per_block is not supported".into());
        }
        if c.mid_block_type.as_deref().is_some_and(|t| t != "UNetMidBlock2DCrossAttn") {
            return bad(format!("unsupported mid_block_type {}", c.mid_block_type.as_deref().unwrap_or_default()));
        }
        if c.class_embed_type.is_some() {
            return bad("class_embed_type is not supported".into());
        }
        match (c.addition_embed_type.as_deref(), c.addition_time_embed_dim, c.projection_class_embeddings_input_dim) {
            (None, _, _) => {}
            (Some("text_time"), Some(t), Some(p)) => {
                sizes(
                    "unet",
                    &[("addition_time_embed_dim", t, 4096), ("projection_class_embeddings_input_dim", p, 65536)],
                )?;
                if t % 2 != 0 || p <= TIME_IDS * t {
                    return bad(format!(
                        "projection_class_embeddings_input_dim {p} must exceed {TIME_IDS} x an even addition_time_embed_dim {t}"
                    ));
                }
            }
            (Some("text_time"), _, _) => return bad(
                "addition_embed_type text_time needs addition_time_embed_dim and projection_class_embeddings_input_dim"
                    .into(),
            ),
            (Some(other), _, _) => return bad(format!("addition_embed_type {other} is not supported")),
        }
        if c.time_embedding_type.as_deref().is_some_and(|t| t != "positional") {
            return bad("only positional time embeddings are supported".into());
        }
        if c.block_out_channels.iter().any(|ch| ch % c.norm_num_groups != 0) {
            return bad("every block width must be a multiple of norm_num_groups".into());
        }
        for (level, &ch) in c.block_out_channels.iter().enumerate() {
            let heads = c.heads(level);
            // `attention_head_dim` is a head count in SD 1.x configs, a head size with
            // `num_attention_heads`; either way it must divide the width.
            if heads == 0 || ch % heads != 0 {
                let key = if c.num_attention_heads.is_some() { "num_attention_heads" } else { "attention_head_dim" };
                return bad(format!("{key} {heads} does not divide block {level}'s width {ch}"));
            }
        }
        Ok(c)
    }

    /// Heads of the transformer blocks at `level`.
    pub fn heads(&self, level: usize) -> usize {
        self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim).get(level)
    }

    /// Transformer blocks in each Transformer2D at `level` (SDXL: 1, 2, 10; the mid block takes
    /// the last level's, as diffusers does).
    pub fn transformer_depth(&self, level: usize) -> usize {
        self.transformer_layers_per_block.as_ref().map_or(1, |t| t.get(level))
    }

    /// The width of the pooled text embedding SDXL's added conditioning takes, when it has one.
    pub fn text_time(&self) -> Option<(usize, usize)> {
        match (
            self.addition_embed_type.as_deref(),
            self.addition_time_embed_dim,
            self.projection_class_embeddings_input_dim,
        ) {
            (Some("text_time"), Some(t), Some(p)) => Some((t, p - TIME_IDS * t)),
            _ => None,
        }
    }
}

/// AutoencoderKL (`vae/config.json`).
#[derive(Clone, Debug, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "d_3")]
    pub in_channels: usize,
    #[serde(default = "d_3")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_1")]
    pub layers_per_block: usize,
    #[serde(default = "d_4")]
    pub latent_channels: usize,
    #[serde(default = "d_32")]
    pub norm_num_groups: usize,
    /// Latents are `scaling_factor * z`; SD 1.x/2.x configs omit it (0.18215).
    #[serde(default = "d_scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub down_block_types: Vec<String>,
    #[serde(default)]
    pub up_block_types: Vec<String>,
    #[serde(default)]
    pub sample_size: Option<usize>,
    /// diffusers' `force_upcast` (`AutoencoderKL`'s default: true): this VAE's activations
    /// overflow in fp16 on some images, so it runs in f32 even where the rest runs in f16.
    /// The fp16-fix VAEs say false.
    #[serde(default = "d_true")]
    pub force_upcast: bool,
}

fn d_3() -> usize {
    3
}
fn d_scaling() -> f64 {
    0.18215
}

impl VaeConfig {
    /// The dtype this VAE computes in when the model computes in `dtype`: f32 instead of f16
    /// when `force_upcast` says so.
    pub fn compute_dtype(&self, dtype: crate::gpu::DType) -> crate::gpu::DType {
        match dtype {
            crate::gpu::DType::F16 if self.force_upcast => crate::gpu::DType::F32,
            d => d,
        }
    }

    pub fn from_json(json: &str) -> Result<VaeConfig> {
        let c: VaeConfig = serde_json::from_str(json).map_err(|e| config_error("vae", e))?;
        sizes(
            "vae",
            &[
                ("in_channels", c.in_channels, 64),
                ("out_channels", c.out_channels, 64),
                ("block_out_channels (levels)", c.block_out_channels.len(), 8),
                ("layers_per_block", c.layers_per_block, 16),
                ("latent_channels", c.latent_channels, 64),
                ("norm_num_groups", c.norm_num_groups, 1024),
                ("sample_size", c.sample_size.unwrap_or(512), 16384),
            ],
        )?;
        for &ch in &c.block_out_channels {
            sizes("vae", &[("block_out_channels", ch, 8192)])?;
        }
        number("vae", "scaling_factor", c.scaling_factor, 1e-6, 1e3)?;
        if c.block_out_channels.is_empty() || c.block_out_channels.iter().any(|ch| ch % c.norm_num_groups != 0) {
            return Err(config_error("vae", "block widths must be non-empty multiples of norm_num_groups"));
        }
        for t in c.down_block_types.iter().chain(&c.up_block_types) {
            if !matches!(t.as_str(), "DownEncoderBlock2D" | "UpDecoderBlock2D") {
                return Err(config_error("vae", format!("unsupported block type {t}")));
            }
        }
        Ok(c)
    }

    /// Pixels per latent along each side: 2^(levels - 1) (8 for SD).
    pub fn downscale(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `json` with `key` set to `value` (a JSON literal).
    fn with(json: &str, key: &str, value: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
        v[key] = serde_json::from_str(value).unwrap();
        v.to_string()
    }

    /// Hostile sizes are refused with the key named, never divided by or allocated from (a
    /// `norm_num_groups` of 0 used to panic on a division by zero).
    #[test]
    fn every_size_is_bounded_before_use() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-sd1");
        let read = |c: &str| std::fs::read_to_string(format!("{dir}/{c}/config.json")).unwrap();
        let (unet, vae, clip) = (read("unet"), read("vae"), read("text_encoder"));
        assert!(UNetConfig::from_json(&unet).is_ok() && VaeConfig::from_json(&vae).is_ok());
        assert!(ClipConfig::from_json(&clip).is_ok());
        let unet_err = |k: &str, v: &str| UNetConfig::from_json(&with(&unet, k, v)).unwrap_err().to_string();
        let vae_err = |k: &str, v: &str| VaeConfig::from_json(&with(&vae, k, v)).unwrap_err().to_string();
        let clip_err = |k: &str, v: &str| ClipConfig::from_json(&with(&clip, k, v)).unwrap_err().to_string();
        // Values the U-Net would run with and compute garbage or fail deep inside an op.
        assert!(unet_err("downsample_padding", "4294967296").contains("downsample_padding is 4294967296"));
        assert!(unet_err("downsample_padding", "0").contains("only 1"));
        let heads = unet_err("attention_head_dim", "3");
        assert!(heads.contains("attention_head_dim 3 does not divide block 0's width"), "{heads}");
        for (e, key) in [
            (unet_err("norm_num_groups", "0"), "norm_num_groups is 0"),
            (unet_err("in_channels", "100000"), "in_channels is 100000"),
            (unet_err("sample_size", "1000000000"), "sample_size is 1000000000"),
            (unet_err("block_out_channels", "[32, 9999999]"), "block_out_channels is 9999999"),
            (unet_err("attention_head_dim", "0"), "attention_head_dim is 0"),
            (unet_err("layers_per_block", "0"), "layers_per_block is 0"),
            (unet_err("norm_eps", "-1"), "norm_eps is -1"),
            (unet_err("freq_shift", "1e30"), "freq_shift is 1000000000000000000000000000000"),
            (unet_err("mid_block_scale_factor", "4294967296"), "mid_block_scale_factor is 4294967296"),
            (vae_err("norm_num_groups", "0"), "norm_num_groups is 0"),
            (vae_err("latent_channels", "0"), "latent_channels is 0"),
            (vae_err("scaling_factor", "0"), "scaling_factor is 0"),
            (vae_err("block_out_channels", "[]"), "block_out_channels (levels) is 0"),
            (clip_err("num_attention_heads", "0"), "num_attention_heads is 0"),
            (
                clip_err("max_position_embeddings", "18446744073709551615"),
                "max_position_embeddings is 18446744073709551615",
            ),
            (clip_err("vocab_size", "0"), "vocab_size is 0"),
        ] {
            assert!(e.contains(key) && e.contains("expected"), "{e}");
        }
        // Out of range for usize entirely: a parse error naming the file's component.
        let e = unet_err("in_channels", "-4");
        assert!(e.contains("unet"), "{e}");
    }
}
