//! LCM, as diffusers' `LCMScheduler`: consistency-model steps on a subset of the original
//! schedule, with fresh noise between them.

use super::Sampler;
use crate::error::{Error, Result};
use crate::pipeline::schedule::{Prediction, SchedulerConfig};

pub struct Lcm {
    prediction: Prediction,
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f32>,
}

pub fn build(config: &SchedulerConfig, steps: usize) -> Result<Box<dyn Sampler>> {
    let config = &config.for_class("leading");
    let n = config.num_train_timesteps;
    // The spaced timesteps are not LCM's, but building them checks the step count.
    config.timesteps(steps)?;
    let original = config.original_inference_steps.unwrap_or(50).min(n);
    let k = n / original;
    let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
    if steps > original {
        return Err(Error::Request(format!("LCM runs at most {original} steps")));
    }
    let timesteps = (0..steps).map(|i| origin[(i * original) / steps] as f32).collect();
    Ok(Box::new(Lcm { prediction: config.prediction()?, alphas_cumprod: config.alphas_cumprod()?, timesteps }))
}

impl Sampler for Lcm {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn draws_noise(&self, i: usize) -> bool {
        i + 1 < self.timesteps.len()
    }

    fn noise_factors(&self, i: usize) -> (f32, f32) {
        let ac = self.alphas_cumprod[self.timesteps[i] as usize];
        (ac.sqrt(), (1.0 - ac).sqrt())
    }

    fn step(&mut self, i: usize, out: &[f32], sample: &[f32], noise: Option<&[f32]>) -> Vec<f32> {
        let t = self.timesteps[i];
        let prev = self.timesteps.get(i + 1).copied().unwrap_or(t);
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = self.alphas_cumprod[prev as usize];
        let (sa, sb) = (a_t.sqrt(), (1.0 - a_t).sqrt());
        // Consistency-model boundary scalings (sigma_data 0.5, timestep_scaling 10), in f64 as Python.
        let st = t as f64 * 10.0;
        let c_skip = (0.25 / (st * st + 0.25)) as f32;
        let c_out = (st / (st * st + 0.25).sqrt()) as f32;
        let denoised =
            out.iter().zip(sample).map(|(&m, &x)| c_out * super::x0(self.prediction, m, x, sa, sb) + c_skip * x);
        match noise {
            Some(z) => {
                let (pa, pb) = (a_prev.sqrt(), (1.0 - a_prev).sqrt());
                denoised.zip(z).map(|(d, &z)| pa * d + pb * z).collect()
            }
            None => denoised.collect(),
        }
    }
}
