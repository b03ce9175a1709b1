//! The parts of a Stable Diffusion model that carry weights, as a type: the folder diffusers
//! names each one, its weights file and its place in the load order. SDXL's `text_encoder_2`
//! joins here.

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Component {
    Vae,
    TextEncoder,
    Unet,
}

impl Component {
    /// The order components load and convert in (a package stores them so, and streams so).
    pub const LOAD_ORDER: [Component; 3] = [Component::Vae, Component::TextEncoder, Component::Unet];

    /// The diffusers folder, which is also the component's name in manifests and messages.
    pub fn name(self) -> &'static str {
        match self {
            Component::Vae => "vae",
            Component::TextEncoder => "text_encoder",
            Component::Unet => "unet",
        }
    }

    /// The weights file's stem: transformers' `model`, diffusers' `diffusion_pytorch_model`.
    pub fn stem(self) -> &'static str {
        match self {
            Component::TextEncoder => "model",
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
        Component::LOAD_ORDER
            .into_iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| Error::Weights(format!("{name:?} is not a model component (vae, text_encoder, unet)")))
    }
}

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
}
