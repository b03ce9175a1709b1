//! The published architectures, by their diffusers configs (copied from the Hugging Face repos;
//! `tests/published.rs` checks our models load their real tensor lists): what benchmarks and
//! package-size estimates build with synthetic weights, nothing downloaded.

use super::component::Component;
use crate::error::{Error, Result};

pub struct Arch {
    pub name: &'static str,
    /// The Hugging Face repo it comes from.
    pub repo: &'static str,
    pub unet: &'static str,
    pub vae: &'static str,
    pub text_encoder: &'static str,
    /// SDXL's second text encoder.
    pub text_encoder_2: Option<&'static str>,
}

impl Arch {
    pub fn config(&self, component: Component) -> &'static str {
        match component {
            Component::Unet => self.unet,
            Component::Vae => self.vae,
            Component::TextEncoder => self.text_encoder,
            Component::TextEncoder2 => self.text_encoder_2.unwrap_or_default(),
        }
    }

    /// The components this architecture has, in load order.
    pub fn components(&self) -> Vec<Component> {
        Component::present(|p| p != Component::TextEncoder2.config_file() || self.text_encoder_2.is_some())
    }
}

macro_rules! arch {
    ($name:literal, $repo:literal) => {
        Arch {
            name: $name,
            repo: $repo,
            unet: include_str!(concat!("arch/", $name, "/unet.json")),
            vae: include_str!(concat!("arch/", $name, "/vae.json")),
            text_encoder: include_str!(concat!("arch/", $name, "/text_encoder.json")),
            text_encoder_2: None,
        }
    };
    ($name:literal, $repo:literal, xl) => {
        Arch {
            text_encoder_2: Some(include_str!(concat!("arch/", $name, "/text_encoder_2.json"))),
            ..arch!($name, $repo)
        }
    };
}

pub const ARCHS: [Arch; 5] = [
    arch!("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    arch!("sd21-base", "stabilityai/stable-diffusion-2-1-base"),
    arch!("sd-turbo", "stabilityai/sd-turbo"),
    arch!("sdxl-turbo", "stabilityai/sdxl-turbo", xl),
    arch!("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", xl),
];

pub fn by_name(name: &str) -> Result<&'static Arch> {
    ARCHS.iter().find(|a| a.name == name).ok_or_else(|| {
        let names: Vec<_> = ARCHS.iter().map(|a| a.name).collect();
        Error::Request(format!("unknown architecture {name} (one of {})", names.join(", ")))
    })
}
