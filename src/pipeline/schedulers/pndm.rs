//! PNDM, as diffusers' `PNDMScheduler`: SD 1.x's shipped sampler. With `skip_prk_steps` (what
//! SD 1.x's config says) it is PLMS: a linear multistep method over the last four model
//! outputs, warmed up by running the first timestep twice (the second U-Net call averages with
//! the first, like a Heun step); without it, three Runge-Kutta steps of four calls each come
//! first. The steps keep their own counter, not the loop index, so an img2img run that starts
//! part-way warms up from its first step exactly as diffusers' does.

use super::Sampler;
use crate::error::{Error, Result};
use crate::pipeline::schedule::{round_half_even, Prediction, SchedulerConfig};

/// Model outputs the multistep formula uses.
const ORDER: usize = 4;

pub struct Pndm {
    prediction: Prediction,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<f32>,
    /// `num_train_timesteps / steps`: the distance between two timesteps of the schedule.
    ratio: i64,
    /// Runge-Kutta steps before PLMS (0 with `skip_prk_steps`); each the start of a group of 4.
    prk: Vec<i64>,
    counter: usize,
    ets: Vec<Vec<f32>>,
    cur_sample: Option<Vec<f32>>,
    cur_model_output: Vec<f32>,
}

pub fn build(config: &SchedulerConfig, steps: usize) -> Result<Box<dyn Sampler>> {
    let config = &config.for_class("leading");
    let prediction = config.prediction()?;
    if prediction == Prediction::Sample {
        return Err(Error::Config {
            component: "scheduler".into(),
            msg: "PNDM takes epsilon or v_prediction models, not prediction_type sample".into(),
        });
    }
    let n = config.num_train_timesteps;
    // The schedule in ascending order, as set_timesteps builds `_timesteps` (this also refuses
    // a step count of 0 or above the training timesteps).
    let asc: Vec<i64> = config.timesteps(steps)?.iter().rev().map(|&t| round_half_even(t) as i64).collect();
    let ratio = (n / steps) as i64;
    let (prk, plms): (Vec<i64>, Vec<i64>) = if config.skip_prk_steps {
        // The second-to-last timestep twice: the PLMS warm-up runs it again.
        let k = asc.len();
        let mut plms: Vec<i64> = asc[..k - 1].to_vec();
        plms.extend(&asc[k.saturating_sub(2)..k - 1]);
        plms.push(asc[k - 1]);
        plms.reverse();
        (Vec::new(), plms)
    } else {
        if asc.len() < ORDER {
            return Err(Error::Request(format!(
                "PNDM without skip_prk_steps needs at least {ORDER} steps, not {steps}"
            )));
        }
        // The last ORDER timesteps each with its half-step, repeated as the RK stages need them.
        let half = (n / steps / 2) as i64;
        let pairs: Vec<i64> = asc[asc.len() - ORDER..].iter().flat_map(|&t| [t, t + half]).collect();
        let mut prk: Vec<i64> = pairs[..pairs.len() - 1].iter().flat_map(|&t| [t, t]).collect();
        prk = prk[1..prk.len() - 1].to_vec();
        prk.reverse();
        let plms = asc[..asc.len() - 3].iter().rev().copied().collect();
        (prk, plms)
    };
    let ac = config.alphas_cumprod()?;
    let timesteps: Vec<f32> = prk.iter().chain(&plms).map(|&t| t as f32).collect();
    if timesteps.iter().any(|&t| t < 0.0 || t as usize >= n) {
        return Err(Error::Request(format!("{steps} PNDM steps reach past the {n} training timesteps")));
    }
    Ok(Box::new(Pndm {
        prediction,
        final_alpha_cumprod: if config.set_alpha_to_one { 1.0 } else { ac[0] },
        alphas_cumprod: ac,
        timesteps,
        ratio,
        prk,
        counter: 0,
        ets: Vec::new(),
        cur_sample: None,
        cur_model_output: Vec::new(),
    }))
}

impl Pndm {
    /// `_get_prev_sample`: the sample at `prev` from the one at `t`, given the (combined) output.
    fn prev_sample(&self, sample: &[f32], t: i64, prev: i64, out: &[f32]) -> Vec<f32> {
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = if prev >= 0 { self.alphas_cumprod[prev as usize] } else { self.final_alpha_cumprod };
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        let diff = a_prev - a_t;
        out.iter()
            .zip(sample)
            .map(|(&m, &x)| {
                let eps = match self.prediction {
                    Prediction::V => a_t.sqrt() * m + b_t.sqrt() * x,
                    _ => m,
                };
                sample_coeff * x - diff * eps / denom
            })
            .collect()
    }

    fn step_prk(&mut self, t: i64, out: &[f32], sample: &[f32]) -> Vec<f32> {
        let half = if self.counter % 2 == 1 { 0 } else { self.ratio / 2 };
        let prev = t - half;
        let t = self.prk[self.counter / 4 * 4];
        // Python's 1 / 6 and 1 / 3, multiplied in f32 as torch does.
        let (c6, c3) = ((1.0f64 / 6.0) as f32, (1.0f64 / 3.0) as f32);
        let combined = match self.counter % 4 {
            0 => {
                self.cur_model_output = out.iter().map(|&m| c6 * m).collect();
                self.ets.push(out.to_vec());
                self.cur_sample = Some(sample.to_vec());
                out.to_vec()
            }
            1 | 2 => {
                self.cur_model_output.iter_mut().zip(out).for_each(|(c, &m)| *c += c3 * m);
                out.to_vec()
            }
            _ => {
                let c = std::mem::take(&mut self.cur_model_output);
                c.iter().zip(out).map(|(&c, &m)| c + c6 * m).collect()
            }
        };
        let base = self.cur_sample.clone().unwrap_or_else(|| sample.to_vec());
        self.prev_sample(&base, t, prev, &combined)
    }

    fn step_plms(&mut self, t: i64, out: &[f32], sample: &[f32]) -> Vec<f32> {
        let (mut t, mut prev) = (t, t - self.ratio);
        if self.counter != 1 {
            if self.ets.len() > ORDER - 1 {
                self.ets.drain(..self.ets.len() - (ORDER - 1));
            }
            self.ets.push(out.to_vec());
        } else {
            prev = t;
            t += self.ratio;
        }
        let e = &self.ets;
        let k = e.len();
        let mut base = sample.to_vec();
        let combined: Vec<f32> = match (k, self.counter) {
            (1, 0) => {
                self.cur_sample = Some(sample.to_vec());
                out.to_vec()
            }
            (1, 1) => {
                if let Some(s) = self.cur_sample.take() {
                    base = s;
                }
                out.iter().zip(&e[0]).map(|(&m, &e)| (m + e) / 2.0).collect()
            }
            (1, _) => out.to_vec(),
            (2, _) => (0..out.len()).map(|j| (3.0 * e[1][j] - e[0][j]) / 2.0).collect(),
            (3, _) => (0..out.len()).map(|j| (23.0 * e[2][j] - 16.0 * e[1][j] + 5.0 * e[0][j]) / 12.0).collect(),
            _ => {
                let c = (1.0f64 / 24.0) as f32;
                (0..out.len())
                    .map(|j| c * (55.0 * e[k - 1][j] - 59.0 * e[k - 2][j] + 37.0 * e[k - 3][j] - 9.0 * e[k - 4][j]))
                    .collect()
            }
        };
        self.prev_sample(&base, t, prev, &combined)
    }
}

impl Sampler for Pndm {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn noise_factors(&self, i: usize) -> (f32, f32) {
        let ac = self.alphas_cumprod[self.timesteps[i] as usize];
        (ac.sqrt(), (1.0 - ac).sqrt())
    }

    fn step(&mut self, i: usize, out: &[f32], sample: &[f32], _noise: Option<&[f32]>) -> Vec<f32> {
        let t = self.timesteps[i] as i64;
        let x =
            if self.counter < self.prk.len() { self.step_prk(t, out, sample) } else { self.step_plms(t, out, sample) };
        self.counter += 1;
        x
    }
}
