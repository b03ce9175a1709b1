//! Samplers, stepping latents on the CPU (they are small: 4 x H/8 x W/8) in f32 as diffusers does:
//! DDIM (eta 0), Euler and Euler Ancestral. Each is configured from the model's
//! `scheduler_config.json` the way `XScheduler.from_config(...)` configures it in diffusers.

use super::schedule::{interp, round_half_even, Prediction, SchedulerConfig};
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerKind {
    Ddim,
    Euler,
    EulerAncestral,
}

impl SchedulerKind {
    pub fn parse(name: &str) -> Result<SchedulerKind> {
        match name {
            "ddim" => Ok(SchedulerKind::Ddim),
            "euler" => Ok(SchedulerKind::Euler),
            "euler-a" => Ok(SchedulerKind::EulerAncestral),
            other => Err(Error::Config { component: "scheduler".into(), msg: format!("unknown scheduler {other}") }),
        }
    }
}

pub struct Scheduler {
    kind: SchedulerKind,
    prediction: Prediction,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<f32>,
    /// Euler family: sigma per step, plus the final 0.
    sigmas: Vec<f32>,
    step_ratio: usize,
    init_noise_sigma: f32,
}

impl Scheduler {
    pub fn new(kind: SchedulerKind, config: &SchedulerConfig, steps: usize) -> Result<Scheduler> {
        let ac = config.alphas_cumprod()?;
        let spaced = config.timesteps(steps)?;
        let n = config.num_train_timesteps;
        let (timesteps, sigmas, init_noise_sigma) = match kind {
            SchedulerKind::Ddim => {
                // DDIM rounds linspace spacing to integer timesteps.
                let ts = spaced.iter().map(|&t| round_half_even(t) as f32).collect();
                (ts, Vec::new(), 1.0)
            }
            SchedulerKind::Euler | SchedulerKind::EulerAncestral => {
                if config.use_karras_sigmas {
                    return Err(Error::Config {
                        component: "scheduler".into(),
                        msg: "Karras sigmas for Euler are not supported yet".into(),
                    });
                }
                let table: Vec<f64> = ac.iter().map(|&a| (((1.0 - a) / a).sqrt()) as f64).collect();
                let mut sigmas: Vec<f32> = spaced.iter().map(|&t| interp(t as f32 as f64, &table) as f32).collect();
                let last = match (kind, config.final_sigmas_type.as_deref()) {
                    (SchedulerKind::Euler, Some("sigma_min")) => ((1.0 - ac[0]) / ac[0]).sqrt(),
                    _ => 0.0,
                };
                sigmas.push(last);
                let max = sigmas.iter().fold(0f32, |m, &s| m.max(s));
                let init = if matches!(config.timestep_spacing.as_str(), "linspace" | "trailing") {
                    max
                } else {
                    (max * max + 1.0).sqrt()
                };
                (spaced.iter().map(|&t| t as f32).collect(), sigmas, init)
            }
        };
        Ok(Scheduler {
            kind,
            prediction: config.prediction()?,
            final_alpha_cumprod: if config.set_alpha_to_one { 1.0 } else { ac[0] },
            alphas_cumprod: ac,
            timesteps,
            sigmas,
            step_ratio: n / steps,
            init_noise_sigma,
        })
    }

    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// Initial latents are standard normal times this.
    pub fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    /// Whether step `i` consumes a standard-normal draw (in diffusers' order).
    pub fn draws_noise(&self, _i: usize) -> bool {
        self.kind == SchedulerKind::EulerAncestral
    }

    /// Scales the U-Net input at step `i` in place.
    pub fn scale_model_input(&self, x: &mut [f32], i: usize) {
        if self.sigmas.is_empty() {
            return;
        }
        let s = self.sigmas[i];
        let d = (s * s + 1.0).sqrt();
        x.iter_mut().for_each(|v| *v /= d);
    }

    /// Advances `sample` by step `i` given the guided model output. `noise` is this step's
    /// standard-normal draw when `draws_noise(i)`.
    pub fn step(&self, i: usize, model_output: &[f32], sample: &[f32], noise: Option<&[f32]>) -> Result<Vec<f32>> {
        if model_output.len() != sample.len() || noise.is_some_and(|n| n.len() != sample.len()) {
            return Err(Error::shape("scheduler", "model output, sample and noise sizes differ"));
        }
        match self.kind {
            SchedulerKind::Ddim => Ok(self.ddim_step(i, model_output, sample)),
            SchedulerKind::Euler => Ok(self.euler_step(i, model_output, sample, None)),
            SchedulerKind::EulerAncestral => {
                let noise =
                    noise.ok_or_else(|| Error::shape("scheduler", "Euler Ancestral needs a noise draw every step"))?;
                Ok(self.euler_step(i, model_output, sample, Some(noise)))
            }
        }
    }

    fn ddim_step(&self, i: usize, out: &[f32], sample: &[f32]) -> Vec<f32> {
        let t = self.timesteps[i] as i64;
        let prev = t - self.step_ratio as i64;
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = if prev >= 0 { self.alphas_cumprod[prev as usize] } else { self.final_alpha_cumprod };
        let b_t = 1.0 - a_t;
        let (sa, sb) = (a_t.sqrt(), b_t.sqrt());
        let dir = (1.0 - a_prev).sqrt();
        let sa_prev = a_prev.sqrt();
        out.iter()
            .zip(sample)
            .map(|(&m, &x)| {
                let (x0, eps) = match self.prediction {
                    Prediction::Epsilon => ((x - sb * m) / sa, m),
                    Prediction::V => (sa * x - sb * m, sa * m + sb * x),
                    Prediction::Sample => (m, (x - sa * m) / sb),
                };
                sa_prev * x0 + dir * eps
            })
            .collect()
    }

    fn euler_step(&self, i: usize, out: &[f32], sample: &[f32], noise: Option<&[f32]>) -> Vec<f32> {
        let (sigma, next) = (self.sigmas[i], self.sigmas[i + 1]);
        let x0 = |m: f32, x: f32| match self.prediction {
            Prediction::Epsilon => x - sigma * m,
            Prediction::V => m * (-sigma / (sigma * sigma + 1.0).sqrt()) + x / (sigma * sigma + 1.0),
            Prediction::Sample => m,
        };
        match noise {
            None => {
                let dt = next - sigma;
                out.iter().zip(sample).map(|(&m, &x)| x + (x - x0(m, x)) / sigma * dt).collect()
            }
            Some(noise) => {
                let up = (next * next * (sigma * sigma - next * next) / (sigma * sigma)).sqrt();
                let down = (next * next - up * up).sqrt();
                let dt = down - sigma;
                out.iter()
                    .zip(sample)
                    .zip(noise)
                    .map(|((&m, &x), &z)| x + (x - x0(m, x)) / sigma * dt + z * up)
                    .collect()
            }
        }
    }
}
