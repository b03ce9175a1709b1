//! Text-to-image on top of the models: schedules, samplers and the denoising loop.

pub mod conditioning;
pub mod defaults;
pub mod generate;
pub mod image;
pub mod load;
pub mod preview;
pub mod prompt;
pub mod rng;
pub mod schedule;
pub mod schedulers;
pub mod sequential;
pub mod text;
pub mod vae_tiling;
