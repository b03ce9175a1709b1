//! DDIM, as diffusers' `DDIMScheduler`: deterministic at eta 0, with a noise draw per step
//! scaled by eta times DDPM's posterior deviation above it.

use super::Sampler;
use crate::error::Result;
use crate::pipeline::schedule::{round_half_even, Prediction, SchedulerConfig};

pub struct Ddim {
    prediction: Prediction,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<f32>,
    step_ratio: usize,
    eta: f32,
}

pub fn build(config: &SchedulerConfig, steps: usize) -> Result<Box<dyn Sampler>> {
    let config = &config.for_class("leading");
    let ac = config.alphas_cumprod()?;
    // DDIM rounds linspace spacing to integer timesteps.
    let timesteps = config.timesteps(steps)?.iter().map(|&t| round_half_even(t) as f32).collect();
    Ok(Box::new(Ddim {
        prediction: config.prediction()?,
        final_alpha_cumprod: if config.set_alpha_to_one { 1.0 } else { ac[0] },
        alphas_cumprod: ac,
        timesteps,
        step_ratio: config.num_train_timesteps / steps,
        eta: 0.0,
    }))
}

impl Sampler for Ddim {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn noise_factors(&self, i: usize) -> (f32, f32) {
        let ac = self.alphas_cumprod[self.timesteps[i] as usize];
        (ac.sqrt(), (1.0 - ac).sqrt())
    }

    fn set_eta(&mut self, eta: f32) {
        self.eta = eta;
    }

    fn draws_noise(&self, _i: usize) -> bool {
        self.eta > 0.0
    }

    fn step(&mut self, i: usize, out: &[f32], sample: &[f32], noise: Option<&[f32]>) -> Vec<f32> {
        let t = self.timesteps[i] as i64;
        let prev = t - self.step_ratio as i64;
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = if prev >= 0 { self.alphas_cumprod[prev as usize] } else { self.final_alpha_cumprod };
        let b_t = 1.0 - a_t;
        let (sa, sb) = (a_t.sqrt(), b_t.sqrt());
        // `_get_variance`: DDPM's posterior variance between the two timesteps.
        let variance = ((1.0 - a_prev) / b_t) * (1.0 - a_t / a_prev);
        let std = self.eta * variance.sqrt();
        let dir = (1.0 - a_prev - std * std).sqrt();
        let sa_prev = a_prev.sqrt();
        let x: Vec<f32> = out
            .iter()
            .zip(sample)
            .map(|(&m, &x)| {
                let (x0, eps) = match self.prediction {
                    Prediction::Epsilon => ((x - sb * m) / sa, m),
                    Prediction::V => (sa * x - sb * m, sa * m + sb * x),
                    Prediction::Sample => (m, (x - sa * m) / sb),
                };
                sa_prev * x0 + dir * eps
            })
            .collect();
        match noise {
            Some(z) if self.eta > 0.0 => x.iter().zip(z).map(|(&x, &z)| x + std * z).collect(),
            _ => x,
        }
    }
}
