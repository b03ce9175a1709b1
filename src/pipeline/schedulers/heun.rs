//! Heun, as diffusers' `HeunDiscreteScheduler`: Euler's schedule with every sigma after the
//! first run twice, an Euler step and then its trapezoidal correction from the second model
//! output (2 U-Net calls per step, `2N - 1` in all; the last step stays first order, landing on
//! sigma 0). Order 2: img2img starts at twice the skipped step count.

use super::euler::{EulerSchedule, Family};
use super::Sampler;
use crate::error::{Error, Result};
use crate::pipeline::schedule::SchedulerConfig;

pub struct Heun {
    s: EulerSchedule,
    /// The first-order half of a step in progress: its derivative, dt and start sample.
    pending: Option<(Vec<f32>, f32, Vec<f32>)>,
}

pub fn build(config: &SchedulerConfig, steps: usize) -> Result<Box<dyn Sampler>> {
    if config.use_karras_sigmas {
        return Err(Error::Config {
            component: "scheduler".into(),
            msg: "Karras sigmas for Heun are not supported yet".into(),
        });
    }
    let mut s = EulerSchedule::family(config, steps, Family::default())?;
    // sigmas [s0, s1, s1, .., s(N-1), s(N-1), 0]; timesteps [t0, t1, t1, .., t(N-1), t(N-1)].
    let (sig, ts) = (&s.sigmas, &s.timesteps);
    let mut sigmas = vec![sig[0]];
    sigmas.extend(sig[1..sig.len() - 1].iter().flat_map(|&x| [x, x]));
    sigmas.push(sig[sig.len() - 1]);
    let mut timesteps = vec![ts[0]];
    timesteps.extend(ts[1..].iter().flat_map(|&t| [t, t]));
    (s.sigmas, s.timesteps) = (sigmas, timesteps);
    Ok(Box::new(Heun { s, pending: None }))
}

impl Sampler for Heun {
    fn timesteps(&self) -> &[f32] {
        &self.s.timesteps
    }

    fn order(&self) -> usize {
        2
    }

    fn init_noise_sigma(&self) -> f32 {
        self.s.init_noise_sigma
    }

    fn noise_factors(&self, i: usize) -> (f32, f32) {
        (1.0, self.s.sigmas[i])
    }

    fn scale_model_input(&self, x: &mut [f32], i: usize) {
        self.s.scale_model_input(x, i)
    }

    fn step(&mut self, i: usize, out: &[f32], sample: &[f32], _noise: Option<&[f32]>) -> Vec<f32> {
        match self.pending.take() {
            None => {
                let (sigma, next) = (self.s.sigmas[i], self.s.sigmas[i + 1]);
                let d: Vec<f32> = out.iter().zip(sample).map(|(&m, &x)| (x - self.s.x0(m, x, sigma)) / sigma).collect();
                let dt = next - sigma;
                let x = sample.iter().zip(&d).map(|(&x, &d)| x + d * dt).collect();
                self.pending = Some((d, dt, sample.to_vec()));
                x
            }
            Some((d0, dt, x0)) => {
                let next = self.s.sigmas[i];
                out.iter()
                    .zip(sample)
                    .zip(d0.iter().zip(&x0))
                    .map(|((&m, &x), (&d0, &start))| {
                        let d = (x - self.s.x0(m, x, next)) / next;
                        start + (d0 + d) / 2.0 * dt
                    })
                    .collect()
            }
        }
    }
}
