//! The three networks of Stable Diffusion on our GPU ops, loaded under diffusers' names:
//! `clip` (text encoder), `unet`, `vae`; their building blocks `resnet`, `attention`,
//! `unet_blocks`, `nn`; `config` parsing; `weights` by name; `tokenizer`; `loader` for the
//! diffusers folder layout. Model code never touches wgpu.

pub mod arch;
pub mod attention;
pub mod clip;
pub mod component;
pub mod config;
pub mod convert;
pub mod hash;
pub mod header;
pub mod ldm;
pub mod loader;
pub mod lora;
pub mod nn;
pub mod package;
pub mod parity;
pub mod resnet;
pub mod single_file;
pub mod sources;
pub mod stream;
pub mod stream_single;
pub mod taesd;
pub mod tokenizer;
pub mod unet;
pub mod unet_blocks;
pub mod vae;
pub mod weights;
