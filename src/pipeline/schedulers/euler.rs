//! Euler, as diffusers' `EulerDiscreteScheduler`; its schedule is Euler Ancestral's too.

use super::Sampler;
use crate::error::{Error, Result};
use crate::pipeline::schedule::{interp, Prediction, SchedulerConfig};

/// Timesteps, sigmas (one per step plus the final one) and the initial noise scale of the Euler
/// family. `sigma_min_last`: the class honours `final_sigmas_type: "sigma_min"` (plain Euler).
pub(super) struct EulerSchedule {
    pub prediction: Prediction,
    pub timesteps: Vec<f32>,
    pub sigmas: Vec<f32>,
    pub init_noise_sigma: f32,
}

impl EulerSchedule {
    pub fn new(config: &SchedulerConfig, steps: usize, sigma_min_last: bool) -> Result<Self> {
        let config = &config.for_class("linspace");
        if config.use_karras_sigmas {
            return Err(Error::Config {
                component: "scheduler".into(),
                msg: "Karras sigmas for Euler are not supported yet".into(),
            });
        }
        let ac = config.alphas_cumprod()?;
        let spaced = config.timesteps(steps)?;
        let table: Vec<f64> = ac.iter().map(|&a| (((1.0 - a) / a).sqrt()) as f64).collect();
        let mut sigmas: Vec<f32> = spaced.iter().map(|&t| interp(t as f32 as f64, &table) as f32).collect();
        let last = if sigma_min_last && config.final_sigmas_type.as_deref() == Some("sigma_min") {
            ((1.0 - ac[0]) / ac[0]).sqrt()
        } else {
            0.0
        };
        sigmas.push(last);
        let max = sigmas.iter().fold(0f32, |m, &s| m.max(s));
        let init = if matches!(config.spacing(), "linspace" | "trailing") { max } else { (max * max + 1.0).sqrt() };
        Ok(EulerSchedule {
            prediction: config.prediction()?,
            timesteps: spaced.iter().map(|&t| t as f32).collect(),
            sigmas,
            init_noise_sigma: init,
        })
    }

    pub fn scale_model_input(&self, x: &mut [f32], i: usize) {
        let s = self.sigmas[i];
        let d = (s * s + 1.0).sqrt();
        x.iter_mut().for_each(|v| *v /= d);
    }

    /// The clean-sample estimate at sigma `sigma` (Euler's parameterization: x = x0 + sigma·eps).
    pub fn x0(&self, m: f32, x: f32, sigma: f32) -> f32 {
        match self.prediction {
            Prediction::Epsilon => x - sigma * m,
            Prediction::V => m * (-sigma / (sigma * sigma + 1.0).sqrt()) + x / (sigma * sigma + 1.0),
            Prediction::Sample => m,
        }
    }
}

pub struct Euler(EulerSchedule);

pub fn build(config: &SchedulerConfig, steps: usize) -> Result<Box<dyn Sampler>> {
    Ok(Box::new(Euler(EulerSchedule::new(config, steps, true)?)))
}

impl Sampler for Euler {
    fn timesteps(&self) -> &[f32] {
        &self.0.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.0.init_noise_sigma
    }

    fn noise_factors(&self, i: usize) -> (f32, f32) {
        (1.0, self.0.sigmas[i])
    }

    fn scale_model_input(&self, x: &mut [f32], i: usize) {
        self.0.scale_model_input(x, i)
    }

    fn step(&mut self, i: usize, out: &[f32], sample: &[f32], _noise: Option<&[f32]>) -> Vec<f32> {
        let (sigma, next) = (self.0.sigmas[i], self.0.sigmas[i + 1]);
        let dt = next - sigma;
        out.iter().zip(sample).map(|(&m, &x)| x + (x - self.0.x0(m, x, sigma)) / sigma * dt).collect()
    }
}
