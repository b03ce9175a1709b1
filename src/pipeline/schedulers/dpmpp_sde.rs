//! DPM++ SDE, as diffusers' `DPMSolverSDEScheduler` (k-diffusion's `sample_dpmpp_sde`, A1111's
//! "DPM++ SDE"): each step goes to the midpoint in log-sigma, evaluates the model there, and
//! takes the second-order step from the start, each half adding noise of the SDE (η = 1,
//! `s_noise` 1). Like Heun it runs every sigma after the first twice (2N - 1 U-Net calls, the
//! last an Euler step to sigma 0) and is order 2 for img2img.
//!
//! The noise: diffusers draws it from a torchsde Brownian tree over sigma, so the two draws of a
//! step are increments over nested intervals [σ, σ_mid] and [σ, σ_next]. Here the same Brownian
//! motion is built from two independent normals per step: W(σ_mid) − W(σ) = √a·z1 and
//! W(σ_next) − W(σ) = √a·z1 + √b·z2 (a = |σ − σ_mid|, b = |σ_mid − σ_next|), each handed to the
//! step divided by the root of its interval's length as diffusers does. The values differ from
//! torchsde's (no RNG is shared with torch anyway); the law is the same. The fixture replaces
//! diffusers' tree with this construction over its recorded draws, so a run replays exactly.

use super::euler::{sigma_to_t, EulerSchedule, Family};
use super::Sampler;
use crate::error::{Error, Result};
use crate::pipeline::schedule::{Prediction, SchedulerConfig};

pub struct DpmSde {
    s: EulerSchedule,
    /// The first half of a step in progress: its start sample, z1, √a and the midpoint sigma.
    pending: Option<Pending>,
}

struct Pending {
    start: Vec<f32>,
    z1: Vec<f32>,
    root_a: f64,
    mid_sigma: f32,
}

pub fn build(config: &SchedulerConfig, steps: usize, karras: bool) -> Result<Box<dyn Sampler>> {
    let mut s = EulerSchedule::family(config, steps, Family { f64_timesteps: true, karras, ..Family::default() })?;
    if s.prediction == Prediction::Sample {
        return Err(Error::Config {
            component: "scheduler".into(),
            msg: "DPM++ SDE with prediction_type sample is not supported (diffusers does not implement it either)"
                .into(),
        });
    }
    // Midpoint timesteps: sigma halfway in log-sigma, mapped back to a fractional timestep.
    let ac = config.for_class("linspace").alphas_cumprod()?;
    let logs: Vec<f64> = ac.iter().map(|&a| (((1.0 - a) / a).sqrt()).ln() as f64).collect();
    let mids: Vec<f32> = s
        .sigmas64
        .windows(2)
        .map(|w| {
            let (t0, t1) = (-w[0].ln(), -w[1].ln());
            sigma_to_t((-(t0 + (t1 - t0) * 0.5)).exp(), &logs) as f32
        })
        .collect();
    // sigmas [s0, s1, s1, .., s(N-1), s(N-1), 0]; timesteps [t0, m0, t1, m1, .., m(N-2), t(N-1)].
    let (sig, ts) = (&s.sigmas, &s.timesteps);
    let mut sigmas = vec![sig[0]];
    sigmas.extend(sig[1..sig.len() - 1].iter().flat_map(|&x| [x, x]));
    sigmas.push(sig[sig.len() - 1]);
    let mut timesteps = vec![ts[0]];
    timesteps.extend(ts[1..].iter().zip(&mids).flat_map(|(&t, &m)| [m, t]));
    (s.sigmas, s.timesteps) = (sigmas, timesteps);
    Ok(Box::new(DpmSde { s, pending: None }))
}

/// t = −ln σ and back, in f32 as torch computes them.
fn t_of(sigma: f32) -> f32 {
    -sigma.ln()
}
fn sigma_of(t: f32) -> f32 {
    (-t).exp()
}

impl DpmSde {
    /// (sigma, sigma_next, t_proposed) of the step substep `i` belongs to.
    fn pair(&self, i: usize) -> (f32, f32, f32) {
        let (sigma, next) = match self.pending {
            None => (self.s.sigmas[i], self.s.sigmas[i + 1]),
            Some(_) => (self.s.sigmas[i - 1], self.s.sigmas[i]),
        };
        let (t, t_next) = (t_of(sigma), t_of(next));
        (sigma, next, t + (t_next - t) * 0.5)
    }
}

impl Sampler for DpmSde {
    fn timesteps(&self) -> &[f32] {
        &self.s.timesteps
    }

    fn order(&self) -> usize {
        2
    }

    fn init_noise_sigma(&self) -> f32 {
        self.s.init_noise_sigma
    }

    fn draws_noise(&self, i: usize) -> bool {
        self.s.sigmas.get(i + 1).is_some_and(|&s| s != 0.0)
    }

    fn noise_factors(&self, i: usize) -> (f32, f32) {
        (1.0, self.s.sigmas[i])
    }

    fn scale_model_input(&self, x: &mut [f32], i: usize) {
        let s = self.pending.as_ref().map_or(self.s.sigmas[i], |p| p.mid_sigma);
        let d = (s * s + 1.0).sqrt();
        x.iter_mut().for_each(|v| *v /= d);
    }

    fn step(&mut self, i: usize, out: &[f32], sample: &[f32], noise: Option<&[f32]>) -> Vec<f32> {
        let (sigma, next, t_proposed) = self.pair(i);
        let sigma_input = if self.pending.is_none() { sigma } else { sigma_of(t_proposed) };
        let x0: Vec<f32> = out.iter().zip(sample).map(|(&m, &x)| self.s.x0(m, x, sigma_input)).collect();
        let Some(noise) = noise.filter(|_| next != 0.0) else {
            // The last step: Euler to sigma 0.
            let dt = next - sigma;
            return sample.iter().zip(&x0).map(|(&x, &d0)| x + (x - d0) / sigma * dt).collect();
        };
        let t = t_of(sigma);
        let first = self.pending.is_none();
        let t_next = if first { t_proposed } else { t_of(next) };
        let (sigma_from, sigma_to) = (sigma_of(t), sigma_of(t_next));
        let sigma_up = sigma_to.min(
            (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) / (sigma_from * sigma_from)).sqrt(),
        );
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
        let ancestral_t = t_of(sigma_down);
        let ratio = sigma_of(ancestral_t) / sigma_of(t);
        let coef = (t - ancestral_t).exp_m1();
        // This substep's Brownian increment, normalised by its interval (see the module doc); the
        // second half starts again from the step's start sample.
        let (from, to) = (sigma_from as f64, sigma_to as f64);
        let (start, n) = match self.pending.take() {
            None => {
                let root_a = (to - from).abs().sqrt();
                self.pending =
                    Some(Pending { start: sample.to_vec(), z1: noise.to_vec(), root_a, mid_sigma: sigma_to });
                (sample.to_vec(), noise.to_vec())
            }
            Some(p) => {
                let (root_b, total) = ((to - p.mid_sigma as f64).abs().sqrt(), (to - from).abs().sqrt());
                let n =
                    p.z1.iter()
                        .zip(noise)
                        .map(|(&z1, &z2)| ((p.root_a * z1 as f64 + root_b * z2 as f64) / total) as f32);
                (p.start, n.collect())
            }
        };
        start.iter().zip(&x0).zip(&n).map(|((&x, &d0), &z)| ratio * x - coef * d0 + z * sigma_up).collect()
    }
}
