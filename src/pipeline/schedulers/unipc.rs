//! UniPC (Zhao et al. 2023), a predictor-corrector multistep solver in the data-prediction form,
//! as diffusers' `UniPCMultistepScheduler` with its defaults: `solver_order` 2, `bh2`,
//! `predict_x0`, `lower_order_final`, the corrector on every step after the first, a final
//! sigma of 0. The schedule (timesteps, sigmas, Karras option) is DPM-Solver's.
//!
//! Each step first corrects the sample the previous step predicted, using the model output at
//! that sample (UniC: no extra U-Net call), then predicts the next (UniP).

use super::dpmpp_2m::schedule;
use super::Sampler;
use crate::error::{Error, Result};
use crate::pipeline::schedule::{Prediction, SchedulerConfig};

/// The B(h) of the UniPC update: `bh1` is B(h) = h, `bh2` (diffusers' default) e^h - 1.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bh {
    One,
    Two,
}

pub struct UniPc {
    prediction: Prediction,
    timesteps: Vec<f32>,
    /// One per step plus the final 0.
    sigmas: Vec<f32>,
    solver_order: usize,
    bh: Bh,
    /// x0 predictions of the last `solver_order` steps, oldest first.
    outputs: Vec<Vec<f32>>,
    /// The sample the last predictor started from (what the corrector corrects from).
    last_sample: Option<Vec<f32>>,
    /// The order the last predictor ran at, which the corrector reuses.
    last_order: usize,
    /// Steps taken so far, capped at `solver_order` (the multistep warm-up).
    taken: usize,
}

pub fn build(config: &SchedulerConfig, steps: usize, karras: bool) -> Result<Box<dyn Sampler>> {
    let config = &config.for_class("linspace");
    let ac = config.alphas_cumprod()?;
    config.timesteps(steps)?;
    let (timesteps, sigmas) = schedule(config, &ac, steps, karras);
    let solver_order = config.solver_order.unwrap_or(2);
    if !(1..=2).contains(&solver_order) {
        return Err(Error::Config {
            component: "scheduler".into(),
            msg: format!("UniPC with solver_order {solver_order} (1 or 2 are implemented)"),
        });
    }
    let bh = match config.solver_type.as_deref() {
        None | Some("bh2") | Some("midpoint") | Some("heun") | Some("logrho") => Bh::Two,
        Some("bh1") => Bh::One,
        Some(other) => {
            return Err(Error::Config {
                component: "scheduler".into(),
                msg: format!("UniPC solver_type {other} (bh1 or bh2)"),
            })
        }
    };
    Ok(Box::new(UniPc {
        prediction: config.prediction()?,
        timesteps,
        sigmas,
        solver_order,
        bh,
        outputs: Vec::new(),
        last_sample: None,
        last_order: 1,
        taken: 0,
    }))
}

/// (alpha, sigma) of the variance-preserving form at Euler sigma `s`.
fn at(s: f32) -> (f32, f32) {
    let a = 1.0 / (s * s + 1.0).sqrt();
    (a, s * a)
}

fn lambda(s: f32) -> f32 {
    let (a, sg) = at(s);
    a.ln() - sg.ln()
}

/// The update's scalars from `s0` to `t` (sigmas): (sigma_t / sigma_s0, alpha_t, h·φ1 = e^-h - 1,
/// B(h), and the right-hand side b of the order conditions for orders 1 and 2).
struct Coefficients {
    ratio: f32,
    alpha_t: f32,
    h_phi_1: f32,
    b_h: f32,
    b: [f32; 2],
    h: f32,
}

impl UniPc {
    fn coefficients(&self, s0: f32, t: f32) -> Coefficients {
        let (alpha_t, sigma_t) = at(t);
        let (_, sigma_s0) = at(s0);
        let h = lambda(t) - lambda(s0);
        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        let b_h = match self.bh {
            Bh::One => hh,
            Bh::Two => hh.exp_m1(),
        };
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1.0f32;
        let mut b = [0f32; 2];
        for (i, bi) in b.iter_mut().enumerate() {
            *bi = h_phi_k * factorial / b_h;
            factorial *= (i + 2) as f32;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        Coefficients { ratio: sigma_t / sigma_s0, alpha_t, h_phi_1, b_h, b, h }
    }

    /// UniC: corrects `this` (the sample at step `i`, predicted from `last` at step i - 1) with
    /// the x0 prediction `model_t` made at it.
    fn correct(&self, i: usize, model_t: &[f32], last: &[f32], this: &[f32]) -> Vec<f32> {
        let order = self.last_order;
        let m0 = &self.outputs[self.outputs.len() - 1];
        let c = self.coefficients(self.sigmas[i - 1], self.sigmas[i]);
        // rhos_c solves R rho = b, R's rows the powers of r_k (and 1 for the new point).
        let (rho_hist, rho_t, hist) = if order == 1 {
            (0.0, 0.5, None)
        } else {
            let m1 = &self.outputs[self.outputs.len() - 2];
            let rk = (lambda(self.sigmas[i - 2]) - lambda(self.sigmas[i - 1])) / c.h;
            // [[1, 1], [rk, 1]] · [rho0, rho1] = [b0, b1], in f64 then rounded as torch's f32 solve.
            let (rk64, b0, b1) = (rk as f64, c.b[0] as f64, c.b[1] as f64);
            let det = 1.0 - rk64;
            let rho0 = (b0 - b1) / det;
            let rho1 = (b1 - rk64 * b0) / det;
            (rho0 as f32, rho1 as f32, Some((m1, rk)))
        };
        (0..this.len())
            .map(|j| {
                let base = c.ratio * last[j] - c.alpha_t * c.h_phi_1 * m0[j];
                let corr = hist.map_or(0.0, |(m1, rk)| rho_hist * ((m1[j] - m0[j]) / rk));
                base - c.alpha_t * c.b_h * (corr + rho_t * (model_t[j] - m0[j]))
            })
            .collect()
    }

    /// UniP: from `x` at step `i` to step i + 1 with the newest x0 last in `outputs`.
    fn predict(&self, i: usize, x: &[f32], order: usize) -> Vec<f32> {
        let m0 = &self.outputs[self.outputs.len() - 1];
        let c = self.coefficients(self.sigmas[i], self.sigmas[i + 1]);
        let hist = (order == 2).then(|| {
            let m1 = &self.outputs[self.outputs.len() - 2];
            let rk = (lambda(self.sigmas[i - 1]) - lambda(self.sigmas[i])) / c.h;
            (m1, rk)
        });
        (0..x.len())
            .map(|j| {
                let base = c.ratio * x[j] - c.alpha_t * c.h_phi_1 * m0[j];
                // Order 2's predictor weight is 1/2 whatever b says (diffusers' rhos_p).
                let res = hist.map_or(0.0, |(m1, rk)| 0.5 * ((m1[j] - m0[j]) / rk));
                base - c.alpha_t * c.b_h * res
            })
            .collect()
    }
}

impl Sampler for UniPc {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn noise_factors(&self, i: usize) -> (f32, f32) {
        at(self.sigmas[i])
    }

    fn step(&mut self, i: usize, out: &[f32], sample: &[f32], _noise: Option<&[f32]>) -> Vec<f32> {
        let (alpha, sigma) = at(self.sigmas[i]);
        let x0: Vec<f32> =
            out.iter().zip(sample).map(|(&m, &x)| super::x0(self.prediction, m, x, alpha, sigma)).collect();
        let sample = match &self.last_sample {
            Some(last) if i > 0 => self.correct(i, &x0, last, sample),
            _ => sample.to_vec(),
        };
        if self.outputs.len() == self.solver_order {
            self.outputs.remove(0);
        }
        self.outputs.push(x0);
        let remaining = self.timesteps.len() - i;
        let order = self.solver_order.min(remaining).min(self.taken + 1);
        let next = self.predict(i, &sample, order);
        self.last_order = order;
        self.last_sample = Some(sample);
        self.taken = (self.taken + 1).min(self.solver_order);
        next
    }
}
