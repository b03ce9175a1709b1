//! The parts of a Stable Diffusion model that carry weights, as a type: the folder diffusers
//! names each one, its weights file and its place in the load order. SDXL's `text_encoder_2`
//! is the one a model may lack: it has it when it has `text_encoder_2/config.json`.

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Vae,
    TextEncoder,
    /// SDXL's second text encoder (OpenCLIP ViT-bigG, `CLIPTextModelWithProjection`).
    TextEncoder2,
    Unet,
}

impl Component {
    /// The order components load and convert in (a package stores them so, and streams so).
    pub const LOAD_ORDER: [Component; 4] =
        [Component::Vae, Component::TextEncoder, Component::TextEncoder2, Component::Unet];

    /// Whether every model has it (SD 1.x/2.x have no `text_encoder_2`).
    pub fn required(self) -> bool {
        self != Component::TextEncoder2
    }

    /// The components of a model whose small files include `has(path)`: the required ones and
    /// those whose config is there, in load order.
    pub fn present(has: impl Fn(&str) -> bool) -> Vec<Component> {
        Component::LOAD_ORDER.into_iter().filter(|c| c.required() || has(&c.config_file())).collect()
    }

    /// The diffusers folder, which is also the component's name in manifests and messages.
    pub fn name(self) -> &'static str {
        match self {
            Component::Vae => "vae",
            Component::TextEncoder => "text_encoder",
            Component::TextEncoder2 => "text_encoder_2",
            Component::Unet => "unet",
        }
    }

    /// The weights file's stem: transformers' `model`, diffusers' `diffusion_pytorch_model`.
    pub fn stem(self) -> &'static str {
        match self {
            Component::TextEncoder | Component::TextEncoder2 => "model",
            Component::Vae | Component::Unet => "diffusion_pytorch_model",
        }
    }

    pub fn config_file(self) -> String {
        format!("{}/config.json", self.name())
    }

    /// The weights files that may hold it, preferred first: the plain one, then `.fp16`.
    pub fn weights_files(self) -> [String; 2] {
        let (dir, stem) = (self.name(), self.stem());
        [format!("{dir}/{stem}.safetensors"), format!("{dir}/{stem}.fp16.safetensors")]
    }

    pub fn parse(name: &str) -> Result<Component> {
        Component::LOAD_ORDER.into_iter().find(|c| c.name() == name).ok_or_else(|| {
            Error::Weights(format!("{name:?} is not a model component (vae, text_encoder, text_encoder_2, unet)"))
        })
    }
}

/// A small file of a diffusers folder, and whether a model is usable without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SmallFile {
    pub path: &'static str,
    pub required: bool,
    /// Looked for only where this file is there: SDXL's `tokenizer_2/` with its
    /// `text_encoder_2/config.json`, so an SD 1.x/2.x folder costs no extra requests.
    pub with: Option<&'static str>,
}

const fn small(path: &'static str, required: bool) -> SmallFile {
    SmallFile { path, required, with: None }
}

const fn xl(path: &'static str) -> SmallFile {
    SmallFile { path, required: false, with: Some("text_encoder_2/config.json") }
}

/// Every small file of the diffusers layout the loader reads (a package copies them into its
/// manifest; the page probes a bare folder for them). The components' configs are among them.
pub const SMALL_FILES: [SmallFile; 14] = [
    small("model_index.json", true),
    small("scheduler/scheduler_config.json", true),
    small("text_encoder/config.json", true),
    small("unet/config.json", true),
    small("vae/config.json", true),
    small("tokenizer/vocab.json", true),
    small("tokenizer/merges.txt", true),
    small("tokenizer/tokenizer_config.json", false),
    small("tokenizer/special_tokens_map.json", false),
    // SDXL's: required there, so `present` and `loader::tokenizer_2` ask for them by the config.
    small("text_encoder_2/config.json", false),
    xl("tokenizer_2/vocab.json"),
    xl("tokenizer_2/merges.txt"),
    xl("tokenizer_2/tokenizer_config.json"),
    xl("tokenizer_2/special_tokens_map.json"),
];

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_name_their_files() {
        assert_eq!(Component::TextEncoder.weights_files()[0], "text_encoder/model.safetensors");
        assert_eq!(Component::Unet.weights_files()[1], "unet/diffusion_pytorch_model.fp16.safetensors");
        assert_eq!(Component::Vae.config_file(), "vae/config.json");
        for c in Component::LOAD_ORDER {
            assert_eq!(Component::parse(c.name()).unwrap(), c);
        }
        assert!(Component::parse("text_encoder_3").is_err());
    }

    #[test]
    fn every_component_config_is_a_required_small_file() {
        for c in Component::LOAD_ORDER {
            let path = c.config_file();
            assert!(
                SMALL_FILES.iter().any(|f| f.path == path && f.required == c.required()),
                "{path} missing from SMALL_FILES"
            );
        }
        let sd = Component::present(|p| p == "unet/config.json");
        assert_eq!(sd, [Component::Vae, Component::TextEncoder, Component::Unet]);
        assert_eq!(Component::present(|p| p == "text_encoder_2/config.json").len(), 4);
    }
}
