//! Euler Ancestral, as diffusers' `EulerAncestralDiscreteScheduler`: Euler's schedule, a noise
//! draw every step.

use super::euler::EulerSchedule;
use super::Sampler;
use crate::error::Result;
use crate::pipeline::schedule::SchedulerConfig;

pub struct EulerAncestral(EulerSchedule);

pub fn build(config: &SchedulerConfig, steps: usize) -> Result<Box<dyn Sampler>> {
    Ok(Box::new(EulerAncestral(EulerSchedule::new(config, steps, false)?)))
}

impl Sampler for EulerAncestral {
    fn timesteps(&self) -> &[f32] {
        &self.0.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.0.init_noise_sigma
    }

    fn draws_noise(&self, _i: usize) -> bool {
        true
    }

    fn noise_factors(&self, i: usize) -> (f32, f32) {
        (1.0, self.0.sigmas[i])
    }

    fn scale_model_input(&self, x: &mut [f32], i: usize) {
        self.0.scale_model_input(x, i)
    }

    fn step(&mut self, i: usize, out: &[f32], sample: &[f32], noise: Option<&[f32]>) -> Vec<f32> {
        let noise = noise.expect("Scheduler::step passes the draw this sampler asks for");
        let (sigma, next) = (self.0.sigmas[i], self.0.sigmas[i + 1]);
        let up = (next * next * (sigma * sigma - next * next) / (sigma * sigma)).sqrt();
        let down = (next * next - up * up).sqrt();
        let dt = down - sigma;
        out.iter()
            .zip(sample)
            .zip(noise)
            .map(|((&m, &x), &z)| x + (x - self.0.x0(m, x, sigma)) / sigma * dt + z * up)
            .collect()
    }
}
