//! The original Stable Diffusion (LDM / A1111 / civitai) checkpoint layout: one file holding
//! `model.diffusion_model.*` (the U-Net), `first_stage_model.*` (the VAE) and
//! `cond_stage_model.*` (CLIP ViT-L/14 for SD 1.x; OpenCLIP ViT-H/14 for SD 2.x, with q, k, v
//! fused into one `in_proj`). This file names each of its tensors the way diffusers does, so the
//! models load from it unchanged: `ldm_to_diffusers` maps one original name to the diffusers
//! name(s) it holds and how to cut them out.
//!
//! The U-Net's and the VAE's block indices depend on the architecture (levels, layers per block,
//! which up blocks have attention), so the mapping takes the diffusers configs.

use super::component::Component;
use super::config::{UNetConfig, VaeConfig};

pub const UNET: &str = "model.diffusion_model.";
pub const VAE: &str = "first_stage_model.";
pub const CLIP_L: &str = "cond_stage_model.transformer.";
pub const OPEN_CLIP: &str = "cond_stage_model.model.";

/// Which text encoder layout the file holds, from its key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x: OpenAI CLIP ViT-L/14 in transformers' naming.
    Sd1,
    /// SD 2.x: OpenCLIP ViT-H/14 in OpenCLIP's naming.
    Sd2,
    /// SDXL's `conditioner.embedders.*`: recognised so the message can say so.
    Sdxl,
}

impl Family {
    pub fn detect(names: &[String]) -> Option<Family> {
        let has = |p: &str| names.iter().any(|n| n.starts_with(p));
        if has("conditioner.embedders.") {
            Some(Family::Sdxl)
        } else if has(OPEN_CLIP) {
            Some(Family::Sd2)
        } else if has(CLIP_L) {
            Some(Family::Sd1)
        } else {
            None
        }
    }
}

/// How a diffusers tensor is cut from the original one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    Whole,
    /// Part `index` of `parts` equal slices along the first axis (q, k, v of a fused `in_proj`).
    Rows {
        index: usize,
        parts: usize,
    },
    /// A linear layer stored as a 1x1 convolution: trailing `[1, 1]` dropped where present (the
    /// VAE's attention; SD 2's `proj_in`/`proj_out` in some files).
    Squeeze,
}

/// The diffusers names (with their component) an original tensor holds; empty for tensors no
/// model of ours reads (EMA weights, `alphas_cumprod`, OpenCLIP's `text_projection`).
pub fn ldm_to_diffusers(name: &str, unet: &UNetConfig, vae: &VaeConfig) -> Vec<(Component, String, Cut)> {
    let whole = |c: Component, n: Option<String>| n.map(|n| vec![(c, n, Cut::Whole)]).unwrap_or_default();
    let linear = |c: Component, n: Option<String>, squeeze: bool| {
        n.map(|n| vec![(c, n, if squeeze { Cut::Squeeze } else { Cut::Whole })]).unwrap_or_default()
    };
    if let Some(rest) = name.strip_prefix(UNET) {
        let n = unet_name(rest, unet);
        let proj = n.as_deref().is_some_and(|n| n.ends_with("proj_in.weight") || n.ends_with("proj_out.weight"));
        linear(Component::Unet, n, proj && unet.use_linear_projection)
    } else if let Some(rest) = name.strip_prefix(VAE) {
        let n = vae_name(rest, vae);
        let attn = n.as_deref().is_some_and(|n| n.contains("attentions.0.to_") && n.ends_with(".weight"));
        linear(Component::Vae, n, attn)
    } else if let Some(rest) = name.strip_prefix(CLIP_L) {
        // Checkpoints saved with transformers < 4.20 lack the `text_model.` level.
        let rest = rest.strip_prefix("text_model.").unwrap_or(rest);
        if rest.ends_with("position_ids") {
            return Vec::new();
        }
        whole(Component::TextEncoder, Some(format!("text_model.{rest}")))
    } else if let Some(rest) = name.strip_prefix(OPEN_CLIP) {
        open_clip_name(rest)
    } else {
        Vec::new()
    }
}

/// Splits `a.b.c` into its first `n` dot-separated parts and the rest.
fn head(s: &str, n: usize) -> Option<(Vec<&str>, &str)> {
    let mut parts = Vec::with_capacity(n);
    let mut rest = s;
    for _ in 0..n {
        let (p, r) = rest.split_once('.')?;
        parts.push(p);
        rest = r;
    }
    Some((parts, rest))
}

fn resnet(rest: &str) -> Option<String> {
    let (layer, tail) = rest.split_once('.')?;
    let named = match (layer, tail.split_once('.')) {
        ("in_layers", Some(("0", t))) => format!("norm1.{t}"),
        ("in_layers", Some(("2", t))) => format!("conv1.{t}"),
        ("emb_layers", Some(("1", t))) => format!("time_emb_proj.{t}"),
        ("out_layers", Some(("0", t))) => format!("norm2.{t}"),
        ("out_layers", Some(("3", t))) => format!("conv2.{t}"),
        ("skip_connection", _) => format!("conv_shortcut.{tail}"),
        _ => return None,
    };
    Some(named)
}

fn unet_name(rest: &str, c: &UNetConfig) -> Option<String> {
    let per = c.layers_per_block + 1;
    let levels = c.block_out_channels.len();
    let idx = |s: &str| s.parse::<usize>().ok();
    if let Some(t) = rest.strip_prefix("time_embed.0.") {
        return Some(format!("time_embedding.linear_1.{t}"));
    }
    if let Some(t) = rest.strip_prefix("time_embed.2.") {
        return Some(format!("time_embedding.linear_2.{t}"));
    }
    if let Some(t) = rest.strip_prefix("out.0.") {
        return Some(format!("conv_norm_out.{t}"));
    }
    if let Some(t) = rest.strip_prefix("out.2.") {
        return Some(format!("conv_out.{t}"));
    }
    if let Some(t) = rest.strip_prefix("input_blocks.0.0.") {
        return Some(format!("conv_in.{t}"));
    }
    if let Some(r) = rest.strip_prefix("middle_block.") {
        let (k, t) = r.split_once('.')?;
        return match k {
            "0" => Some(format!("mid_block.resnets.0.{}", resnet(t)?)),
            "1" => Some(format!("mid_block.attentions.0.{t}")),
            "2" => Some(format!("mid_block.resnets.1.{}", resnet(t)?)),
            _ => None,
        };
    }
    let (parts, t) = head(rest, 3)?;
    let (k, sub) = (idx(parts[1])?, idx(parts[2])?);
    match parts[0] {
        "input_blocks" if k >= 1 => {
            let (level, j) = ((k - 1) / per, (k - 1) % per);
            if level >= levels {
                return None;
            }
            match (j == c.layers_per_block, sub) {
                (false, 0) => Some(format!("down_blocks.{level}.resnets.{j}.{}", resnet(t)?)),
                (false, 1) => Some(format!("down_blocks.{level}.attentions.{j}.{t}")),
                (true, 0) => t.strip_prefix("op.").map(|t| format!("down_blocks.{level}.downsamplers.0.conv.{t}")),
                _ => None,
            }
        }
        "output_blocks" => {
            let (level, j) = (k / per, k % per);
            let attn = c.up_block_types.get(level)?.contains("CrossAttn");
            match sub {
                0 => Some(format!("up_blocks.{level}.resnets.{j}.{}", resnet(t)?)),
                1 if attn => Some(format!("up_blocks.{level}.attentions.{j}.{t}")),
                1 | 2 if j == c.layers_per_block => {
                    t.strip_prefix("conv.").map(|t| format!("up_blocks.{level}.upsamplers.0.conv.{t}"))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

fn vae_resnet(t: &str) -> String {
    match t.strip_prefix("nin_shortcut.") {
        Some(rest) => format!("conv_shortcut.{rest}"),
        None => t.to_string(),
    }
}

fn vae_mid(t: &str) -> Option<String> {
    if let Some(r) = t.strip_prefix("block_1.") {
        return Some(format!("mid_block.resnets.0.{}", vae_resnet(r)));
    }
    if let Some(r) = t.strip_prefix("block_2.") {
        return Some(format!("mid_block.resnets.1.{}", vae_resnet(r)));
    }
    let r = t.strip_prefix("attn_1.")?;
    let (layer, tail) = r.split_once('.')?;
    let named = match layer {
        "norm" => "group_norm",
        "q" => "to_q",
        "k" => "to_k",
        "v" => "to_v",
        "proj_out" => "to_out.0",
        _ => return None,
    };
    Some(format!("mid_block.attentions.0.{named}.{tail}"))
}

fn vae_name(rest: &str, c: &VaeConfig) -> Option<String> {
    let levels = c.block_out_channels.len();
    for top in ["quant_conv.", "post_quant_conv."] {
        if rest.starts_with(top) {
            return Some(rest.to_string());
        }
    }
    let (side, t) = rest.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    let inner = if let Some(r) = t.strip_prefix("mid.") {
        vae_mid(r)?
    } else if let Some(r) = t.strip_prefix("norm_out.") {
        format!("conv_norm_out.{r}")
    } else if t.starts_with("conv_in.") || t.starts_with("conv_out.") {
        t.to_string()
    } else {
        let (parts, r) = head(t, 2)?;
        let k = parts[1].parse::<usize>().ok().filter(|&k| k < levels)?;
        // The decoder's `up` blocks count from the lowest resolution up; diffusers' from the top.
        let (level, blocks) = match (side, parts[0]) {
            ("encoder", "down") => (k, "down_blocks"),
            ("decoder", "up") => (levels - 1 - k, "up_blocks"),
            _ => return None,
        };
        if let Some(b) = r.strip_prefix("block.") {
            let (j, tail) = b.split_once('.')?;
            format!("{blocks}.{level}.resnets.{}.{}", j.parse::<usize>().ok()?, vae_resnet(tail))
        } else if let Some(conv) = r.strip_prefix("downsample.conv.") {
            format!("{blocks}.{level}.downsamplers.0.conv.{conv}")
        } else if let Some(conv) = r.strip_prefix("upsample.conv.") {
            format!("{blocks}.{level}.upsamplers.0.conv.{conv}")
        } else {
            return None;
        }
    };
    Some(format!("{side}.{inner}"))
}

fn open_clip_name(rest: &str) -> Vec<(Component, String, Cut)> {
    let te = |n: String| vec![(Component::TextEncoder, format!("text_model.{n}"), Cut::Whole)];
    match rest {
        "token_embedding.weight" => return te("embeddings.token_embedding.weight".into()),
        "positional_embedding" => return te("embeddings.position_embedding.weight".into()),
        _ => {}
    }
    if let Some(t) = rest.strip_prefix("ln_final.") {
        return te(format!("final_layer_norm.{t}"));
    }
    let Some(r) = rest.strip_prefix("transformer.resblocks.") else { return Vec::new() };
    let Some((i, t)) = r.split_once('.') else { return Vec::new() };
    let Ok(i) = i.parse::<usize>() else { return Vec::new() };
    let layer = format!("encoder.layers.{i}");
    let fused = |kind: &str| {
        ["q_proj", "k_proj", "v_proj"]
            .iter()
            .enumerate()
            .map(|(index, p)| {
                (
                    Component::TextEncoder,
                    format!("text_model.{layer}.self_attn.{p}.{kind}"),
                    Cut::Rows { index, parts: 3 },
                )
            })
            .collect()
    };
    match t {
        "attn.in_proj_weight" => fused("weight"),
        "attn.in_proj_bias" => fused("bias"),
        _ => {
            let named = [
                ("ln_1.", "layer_norm1."),
                ("ln_2.", "layer_norm2."),
                ("attn.out_proj.", "self_attn.out_proj."),
                ("mlp.c_fc.", "mlp.fc1."),
                ("mlp.c_proj.", "mlp.fc2."),
            ]
            .iter()
            .find_map(|(from, to)| t.strip_prefix(from).map(|tail| format!("{to}{tail}")));
            named.map(|n| te(format!("{layer}.{n}"))).unwrap_or_default()
        }
    }
}
