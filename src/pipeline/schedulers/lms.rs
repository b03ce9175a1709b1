//! LMS, as diffusers' `LMSDiscreteScheduler` (order 4), optionally with Karras sigmas: Euler's
//! schedule, each step a linear multistep combination of the last four derivatives, weighted by
//! the integrals of their Lagrange basis polynomials over the step (diffusers integrates them
//! numerically with `scipy.integrate.quad`; they are polynomials, so here they are integrated
//! exactly).

use super::euler::{EulerSchedule, Family};
use super::Sampler;
use crate::error::Result;
use crate::pipeline::schedule::SchedulerConfig;

const ORDER: usize = 4;

pub struct Lms {
    s: EulerSchedule,
    /// The last `ORDER` derivatives, oldest first.
    derivatives: Vec<Vec<f32>>,
}

pub fn build(config: &SchedulerConfig, steps: usize, karras: bool) -> Result<Box<dyn Sampler>> {
    let s = EulerSchedule::family(config, steps, Family { f64_timesteps: true, karras, ..Family::default() })?;
    Ok(Box::new(Lms { s, derivatives: Vec::new() }))
}

/// The integral over [sigmas[t], sigmas[t + 1]] of the Lagrange basis polynomial of node
/// `current` among the nodes sigmas[t], sigmas[t - 1], .., sigmas[t - order + 1].
fn coefficient(sigmas: &[f32], order: usize, t: usize, current: usize) -> f64 {
    let node = |k: usize| sigmas[t - k] as f64;
    // Coefficients of prod_{k != current} (tau - s_k) / (s_current - s_k), lowest degree first.
    let mut poly = vec![1.0f64];
    for k in (0..order).filter(|&k| k != current) {
        let denom = node(current) - node(k);
        let mut next = vec![0.0; poly.len() + 1];
        for (d, &c) in poly.iter().enumerate() {
            next[d + 1] += c / denom;
            next[d] -= c * node(k) / denom;
        }
        poly = next;
    }
    let antiderivative =
        |x: f64| poly.iter().enumerate().map(|(d, &c)| c * x.powi(d as i32 + 1) / (d + 1) as f64).sum::<f64>();
    antiderivative(sigmas[t + 1] as f64) - antiderivative(sigmas[t] as f64)
}

impl Sampler for Lms {
    fn timesteps(&self) -> &[f32] {
        &self.s.timesteps
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
        let sigma = self.s.sigmas[i];
        let d: Vec<f32> = out.iter().zip(sample).map(|(&m, &x)| (x - self.s.x0(m, x, sigma)) / sigma).collect();
        self.derivatives.push(d);
        if self.derivatives.len() > ORDER {
            self.derivatives.remove(0);
        }
        // diffusers counts the order from the step index, not from the derivatives it holds: an
        // img2img run starting part-way uses fewer derivatives than the order says at first.
        let order = (i + 1).min(ORDER);
        let coeffs: Vec<f32> = (0..order).map(|c| coefficient(&self.s.sigmas, order, i, c) as f32).collect();
        let mut x = sample.to_vec();
        let mut acc = vec![0f32; x.len()];
        for (c, d) in coeffs.iter().zip(self.derivatives.iter().rev()) {
            acc.iter_mut().zip(d).for_each(|(a, &d)| *a += c * d);
        }
        x.iter_mut().zip(&acc).for_each(|(x, a)| *x += a);
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each coefficient is the integral of its Lagrange basis polynomial: first order is the
    /// Euler step, and every order agrees with a fine Simpson rule over the same interval.
    #[test]
    fn coefficients_integrate_the_lagrange_basis() {
        let sigmas = [14.6f32, 7.9, 4.1, 2.2, 1.05, 0.4, 0.0];
        assert!((coefficient(&sigmas, 1, 0, 0) - (7.9f32 as f64 - 14.6f32 as f64)).abs() < 1e-12);
        for order in 1..=ORDER {
            let t = 4;
            for current in 0..order {
                let node = |k: usize| sigmas[t - k] as f64;
                let basis = |tau: f64| {
                    (0..order)
                        .filter(|&k| k != current)
                        .map(|k| (tau - node(k)) / (node(current) - node(k)))
                        .product::<f64>()
                };
                let (a, b) = (sigmas[t] as f64, sigmas[t + 1] as f64);
                let m = 2000;
                let h = (b - a) / m as f64;
                let simpson: f64 = (0..=m)
                    .map(|j| {
                        basis(a + j as f64 * h)
                            * if j == 0 || j == m {
                                1.0
                            } else if j % 2 == 1 {
                                4.0
                            } else {
                                2.0
                            }
                    })
                    .sum::<f64>()
                    * h
                    / 3.0;
                let exact = coefficient(&sigmas, order, t, current);
                assert!((exact - simpson).abs() < 1e-9, "order {order} node {current}: {exact} vs {simpson}");
            }
        }
        // The weights of a multistep rule sum to the step length.
        let sum: f64 = (0..ORDER).map(|c| coefficient(&sigmas, ORDER, 4, c)).sum();
        assert!((sum - (sigmas[5] as f64 - sigmas[4] as f64)).abs() < 1e-9);
    }
}
