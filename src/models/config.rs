//! Model configurations, parsed from the diffusers / transformers `config.json` files exactly as
//! Hugging Face publishes them. Defaults are diffusers' where a key is absent. Keys we do not
//! implement (class embeddings, addition embeddings, …) are rejected when set, rather than
//! silently ignored.

use serde::Deserialize;

use crate::error::{Error, Result};

fn config_error(component: &str, e: impl std::fmt::Display) -> Error {
    Error::Config { component: component.to_string(), msg: e.to_string() }
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
        if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
            return Err(config_error("text_encoder", "hidden_size must be a multiple of num_attention_heads"));
        }
        if !matches!(c.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(config_error("text_encoder", format!("unsupported hidden_act {}", c.hidden_act)));
        }
        Ok(c)
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
}

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
        if n == 0 || c.down_block_types.len() != n || c.up_block_types.len() != n {
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
        if c.transformer_layers_per_block.as_ref().is_some_and(|t| *t != PerBlock::One(1)) {
            return bad("transformer_layers_per_block other than 1 is not supported".into());
        }
        for (key, v) in [("class_embed_type", &c.class_embed_type), ("addition_embed_type", &c.addition_embed_type)] {
            if v.is_some() {
                return bad(format!("{key} is not supported"));
            }
        }
        if c.time_embedding_type.as_deref().is_some_and(|t| t != "positional") {
            return bad("only positional time embeddings are supported".into());
        }
        if c.block_out_channels.iter().any(|ch| ch % c.norm_num_groups != 0) {
            return bad("every block width must be a multiple of norm_num_groups".into());
        }
        Ok(c)
    }

    /// Heads of the transformer blocks at `level`.
    pub fn heads(&self, level: usize) -> usize {
        self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim).get(level)
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
}

fn d_3() -> usize {
    3
}
fn d_scaling() -> f64 {
    0.18215
}

impl VaeConfig {
    pub fn from_json(json: &str) -> Result<VaeConfig> {
        let c: VaeConfig = serde_json::from_str(json).map_err(|e| config_error("vae", e))?;
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
