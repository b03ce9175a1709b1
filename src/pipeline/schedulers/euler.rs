//! Euler, as diffusers' `EulerDiscreteScheduler`; its schedule is Euler Ancestral's too.

use super::Sampler;
use crate::error::{Error, Result};
use crate::pipeline::schedule::{interp, Prediction, SchedulerConfig};

/// Karras et al.'s sigmas (rho 7) from `max` down to `min` in `steps` points, in f64 as numpy
/// computes them (`_convert_to_karras`).
pub(super) fn karras(min: f64, max: f64, steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let (lo, hi) = (min.powf(1.0 / rho), max.powf(1.0 / rho));
    (0..steps)
        .map(|i| {
            let ramp = if steps == 1 { 0.0 } else { i as f64 / (steps - 1) as f64 };
            (hi + ramp * (lo - hi)).powf(rho)
        })
        .collect()
}

/// diffusers' `_sigma_to_t`: a sigma's fractional position in the (f32) log-sigma table.
pub(super) fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let ls = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    let low = log_sigmas.iter().rposition(|&l| ls - l >= 0.0).unwrap_or(0).min(n - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    // numpy subtracts the two f32 table entries in f32; the rest is f64.
    let w = ((lo - ls) / (lo as f32 - hi as f32) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// How a member of the Euler family builds its schedule from the shared recipe.
#[derive(Clone, Copy, Default)]
pub(super) struct Family {
    /// The class honours `final_sigmas_type: "sigma_min"` (plain Euler).
    pub sigma_min_last: bool,
    /// The spaced timesteps stay f64 (LMS's `np.linspace(.., dtype=float)`) rather than f32.
    pub f64_timesteps: bool,
    /// Karras sigmas (rho 7) between the spaced schedule's ends, mapped back to fractional
    /// timesteps.
    pub karras: bool,
}

/// Timesteps, sigmas (one per step plus the final one) and the initial noise scale of the Euler
/// family (Euler, Euler Ancestral, Heun, LMS).
pub(super) struct EulerSchedule {
    pub prediction: Prediction,
    pub timesteps: Vec<f32>,
    pub sigmas: Vec<f32>,
    /// The sigmas in f64 before they are rounded to f32 (no final one): DPM++ SDE's midpoints
    /// are computed from these, as numpy does.
    pub sigmas64: Vec<f64>,
    pub init_noise_sigma: f32,
}

impl EulerSchedule {
    /// Euler's and Euler Ancestral's schedule (`sigma_min_last`: see `Family`).
    pub fn new(config: &SchedulerConfig, steps: usize, sigma_min_last: bool) -> Result<Self> {
        if config.use_karras_sigmas {
            return Err(Error::Config {
                component: "scheduler".into(),
                msg: "Karras sigmas for Euler are not supported yet".into(),
            });
        }
        Self::family(config, steps, Family { sigma_min_last, ..Family::default() })
    }

    pub fn family(config: &SchedulerConfig, steps: usize, f: Family) -> Result<Self> {
        let config = &config.for_class("linspace");
        let ac = config.alphas_cumprod()?;
        let spaced = config.timesteps(steps)?;
        let table32: Vec<f32> = ac.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect();
        let table: Vec<f64> = table32.iter().map(|&s| s as f64).collect();
        let at = |t: f64| if f.f64_timesteps { t } else { t as f32 as f64 };
        let mut sigmas64: Vec<f64> = spaced.iter().map(|&t| interp(at(t), &table)).collect();
        let mut timesteps: Vec<f32> = spaced.iter().map(|&t| at(t) as f32).collect();
        if f.karras {
            sigmas64 = karras(sigmas64[sigmas64.len() - 1], sigmas64[0], steps);
            let logs: Vec<f64> = table32.iter().map(|&s| s.ln() as f64).collect();
            timesteps = sigmas64.iter().map(|&s| sigma_to_t(s, &logs) as f32).collect();
        }
        let mut sigmas: Vec<f32> = sigmas64.iter().map(|&s| s as f32).collect();
        let last = if f.sigma_min_last && config.final_sigmas_type.as_deref() == Some("sigma_min") {
            ((1.0 - ac[0]) / ac[0]).sqrt()
        } else {
            0.0
        };
        sigmas.push(last);
        let max = sigmas.iter().fold(0f32, |m, &s| m.max(s));
        let init = if matches!(config.spacing(), "linspace" | "trailing") { max } else { (max * max + 1.0).sqrt() };
        Ok(EulerSchedule { prediction: config.prediction()?, timesteps, sigmas, sigmas64, init_noise_sigma: init })
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
