//! DPM-Solver++ 2M (midpoint), optionally with Karras sigmas, as diffusers'
//! `DPMSolverMultistepScheduler` with its defaults for SD.

use super::euler::{karras as karras_sigmas, sigma_to_t};
use super::Sampler;
use crate::error::{Error, Result};
use crate::pipeline::schedule::{interp, round_half_even, Prediction, SchedulerConfig};

pub struct DpmPP2M {
    prediction: Prediction,
    timesteps: Vec<f32>,
    /// One per step plus the final 0.
    sigmas: Vec<f32>,
    /// The previous step's x0 prediction.
    prev_x0: Option<Vec<f32>>,
}

pub fn build(config: &SchedulerConfig, steps: usize, karras: bool) -> Result<Box<dyn Sampler>> {
    let config = &config.for_class("linspace");
    // diffusers' DPMSolverMultistepScheduler maps UniPC's solver types (bh1, bh2, logrho) to
    // midpoint; heun, other orders and algorithms are other solvers.
    if config.algorithm_type.as_deref().is_some_and(|a| a != "dpmsolver++")
        || config.solver_order.is_some_and(|o| o != 2)
        || config.solver_type.as_deref().is_some_and(|t| !matches!(t, "midpoint" | "logrho" | "bh1" | "bh2"))
    {
        return Err(Error::Config {
            component: "scheduler".into(),
            msg: "only DPM-Solver++ 2M with the midpoint solver is supported".into(),
        });
    }
    let ac = config.alphas_cumprod()?;
    // The spaced timesteps are not this schedule's, but building them checks the step count.
    config.timesteps(steps)?;
    let (timesteps, sigmas) = schedule(config, &ac, steps, karras);
    Ok(Box::new(DpmPP2M { prediction: config.prediction()?, timesteps, sigmas, prev_x0: None }))
}

/// `steps + 1` points spaced per config with the last dropped, or Karras sigmas (rho 7) mapped
/// back to (rounded) timesteps; a final sigma of 0.
pub(super) fn schedule(config: &SchedulerConfig, ac: &[f32], steps: usize, karras: bool) -> (Vec<f32>, Vec<f32>) {
    let n = config.num_train_timesteps;
    let table: Vec<f32> = ac.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect();
    let table64: Vec<f64> = table.iter().map(|&s| s as f64).collect();
    let (timesteps, mut sigmas): (Vec<f64>, Vec<f32>) = if karras {
        let (smin, smax) = (table64[0], table64[n - 1]);
        let sig = karras_sigmas(smin, smax, steps);
        let logs: Vec<f64> = table.iter().map(|&s| s.ln() as f64).collect();
        let ts = sig.iter().map(|&s| round_half_even(sigma_to_t(s, &logs))).collect();
        (ts, sig.iter().map(|&s| s as f32).collect())
    } else {
        let ts: Vec<f64> = match config.spacing() {
            "linspace" => (0..=steps)
                .rev()
                .map(|i| round_half_even((n - 1) as f64 * i as f64 / steps as f64))
                .take(steps)
                .collect(),
            "leading" => {
                let ratio = n / (steps + 1);
                (1..=steps).rev().map(|i| (i * ratio + config.steps_offset) as f64).collect()
            }
            _ => {
                let ratio = n as f64 / steps as f64;
                (0..steps).map(|i| round_half_even(n as f64 - i as f64 * ratio) - 1.0).collect()
            }
        };
        let sig = ts.iter().map(|&t| interp(t, &table64) as f32).collect();
        (ts, sig)
    };
    sigmas.push(0.0);
    (timesteps.iter().map(|&t| t as f32).collect(), sigmas)
}

/// (alpha, sigma) of the variance-preserving form at Euler sigma `s`.
fn at(s: f32) -> (f32, f32) {
    let a = 1.0 / (s * s + 1.0).sqrt();
    (a, s * a)
}

impl Sampler for DpmPP2M {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn noise_factors(&self, i: usize) -> (f32, f32) {
        at(self.sigmas[i])
    }

    /// First order on the first and the last step (diffusers' `lower_order_final` with a final
    /// sigma of 0), second order between.
    fn step(&mut self, i: usize, out: &[f32], sample: &[f32], _noise: Option<&[f32]>) -> Vec<f32> {
        let (alpha_s0, sigma_s0) = at(self.sigmas[i]);
        let (alpha_t, sigma_t) = at(self.sigmas[i + 1]);
        let lambda = |a: f32, s: f32| a.ln() - s.ln();
        let x0: Vec<f32> =
            out.iter().zip(sample).map(|(&m, &x)| super::x0(self.prediction, m, x, alpha_s0, sigma_s0)).collect();
        let h = lambda(alpha_t, sigma_t) - lambda(alpha_s0, sigma_s0);
        let (ratio, coef) = (sigma_t / sigma_s0, alpha_t * ((-h).exp() - 1.0));
        let last = i + 1 == self.timesteps.len();
        let next = match (&self.prev_x0, last) {
            (Some(prev), false) => {
                let (alpha_s1, sigma_s1) = at(self.sigmas[i - 1]);
                let r0 = (lambda(alpha_s0, sigma_s0) - lambda(alpha_s1, sigma_s1)) / h;
                x0.iter()
                    .zip(prev)
                    .zip(sample)
                    .map(|((&d0, &m1), &x)| {
                        let d1 = (1.0 / r0) * (d0 - m1);
                        ratio * x - coef * d0 - 0.5 * coef * d1
                    })
                    .collect()
            }
            _ => x0.iter().zip(sample).map(|(&d0, &x)| ratio * x - coef * d0).collect(),
        };
        self.prev_x0 = Some(x0);
        next
    }
}
