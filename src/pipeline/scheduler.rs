//! Samplers, stepping latents on the CPU (they are small: 4 x H/8 x W/8) in f32 as diffusers does:
//! DDIM (eta 0), Euler, Euler Ancestral, DPM++ 2M (optionally with Karras sigmas) and LCM. Each is
//! configured from the model's `scheduler_config.json` the way `XScheduler.from_config(...)`
//! configures it in diffusers.

use super::schedule::{interp, round_half_even, Prediction, SchedulerConfig};
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerKind {
    Ddim,
    Euler,
    EulerAncestral,
    DpmPP2M,
    DpmPP2MKarras,
    Lcm,
}

impl SchedulerKind {
    /// The sampler's name in AUTOMATIC1111's parameters text.
    pub fn a1111_name(self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "DDIM",
            SchedulerKind::Euler => "Euler",
            SchedulerKind::EulerAncestral => "Euler a",
            SchedulerKind::DpmPP2M => "DPM++ 2M",
            SchedulerKind::DpmPP2MKarras => "DPM++ 2M Karras",
            SchedulerKind::Lcm => "LCM",
        }
    }

    pub fn parse(name: &str) -> Result<SchedulerKind> {
        match name {
            "ddim" => Ok(SchedulerKind::Ddim),
            "euler" => Ok(SchedulerKind::Euler),
            "euler-a" => Ok(SchedulerKind::EulerAncestral),
            "dpm++2m" => Ok(SchedulerKind::DpmPP2M),
            "dpm++2m-karras" => Ok(SchedulerKind::DpmPP2MKarras),
            "lcm" => Ok(SchedulerKind::Lcm),
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
    /// DPM++: the previous step's x0 prediction.
    prev_x0: Option<Vec<f32>>,
}

impl Scheduler {
    pub fn new(kind: SchedulerKind, config: &SchedulerConfig, steps: usize) -> Result<Scheduler> {
        let default_spacing = match kind {
            SchedulerKind::Ddim | SchedulerKind::Lcm => "leading",
            _ => "linspace",
        };
        let config = &config.for_class(default_spacing);
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
                let init =
                    if matches!(config.spacing(), "linspace" | "trailing") { max } else { (max * max + 1.0).sqrt() };
                (spaced.iter().map(|&t| t as f32).collect(), sigmas, init)
            }
            SchedulerKind::DpmPP2M | SchedulerKind::DpmPP2MKarras => {
                dpm_schedule(config, &ac, steps, kind == SchedulerKind::DpmPP2MKarras)?
            }
            SchedulerKind::Lcm => {
                let original = config.original_inference_steps.unwrap_or(50).min(n);
                let k = n / original;
                let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
                if steps > original {
                    return Err(Error::Request(format!("LCM runs at most {original} steps")));
                }
                let ts = (0..steps).map(|i| origin[(i * original) / steps] as f32).collect();
                (ts, Vec::new(), 1.0)
            }
        };
        if timesteps.iter().any(|&t| t < 0.0 || t as usize >= n) {
            return Err(Error::Request(format!(
                "{steps} steps with this schedule reach past the {n} training timesteps"
            )));
        }
        Ok(Scheduler {
            kind,
            prediction: config.prediction()?,
            final_alpha_cumprod: if config.set_alpha_to_one { 1.0 } else { ac[0] },
            alphas_cumprod: ac,
            timesteps,
            sigmas,
            step_ratio: n / steps,
            init_noise_sigma,
            prev_x0: None,
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
    pub fn draws_noise(&self, i: usize) -> bool {
        match self.kind {
            SchedulerKind::EulerAncestral => true,
            SchedulerKind::Lcm => i + 1 < self.timesteps.len(),
            _ => false,
        }
    }

    /// Noises clean latents to the level of step `i` (img2img's start), as each scheduler's
    /// `add_noise` does.
    pub fn add_noise(&self, x: &[f32], noise: &[f32], i: usize) -> Result<Vec<f32>> {
        let (a, b) = match self.kind {
            SchedulerKind::Ddim | SchedulerKind::Lcm => {
                let ac = self.alphas_cumprod[self.timesteps[i] as usize];
                (ac.sqrt(), (1.0 - ac).sqrt())
            }
            SchedulerKind::Euler | SchedulerKind::EulerAncestral => (1.0, self.sigmas[i]),
            SchedulerKind::DpmPP2M | SchedulerKind::DpmPP2MKarras => {
                let s = self.sigmas[i];
                let alpha = 1.0 / (s * s + 1.0).sqrt();
                (alpha, s * alpha)
            }
        };
        if x.len() != noise.len() {
            return Err(Error::shape("add_noise", "latents and noise sizes differ"));
        }
        Ok(x.iter().zip(noise).map(|(&x, &n)| a * x + b * n).collect())
    }

    /// Scales the U-Net input at step `i` in place.
    pub fn scale_model_input(&self, x: &mut [f32], i: usize) {
        if !matches!(self.kind, SchedulerKind::Euler | SchedulerKind::EulerAncestral) {
            return;
        }
        let s = self.sigmas[i];
        let d = (s * s + 1.0).sqrt();
        x.iter_mut().for_each(|v| *v /= d);
    }

    /// Advances `sample` by step `i` given the guided model output. `noise` is this step's
    /// standard-normal draw when `draws_noise(i)`.
    pub fn step(&mut self, i: usize, model_output: &[f32], sample: &[f32], noise: Option<&[f32]>) -> Result<Vec<f32>> {
        if model_output.len() != sample.len() || noise.is_some_and(|n| n.len() != sample.len()) {
            return Err(Error::shape("scheduler", "model output, sample and noise sizes differ"));
        }
        let need = || Error::shape("scheduler", "this step needs a noise draw");
        match self.kind {
            SchedulerKind::Ddim => Ok(self.ddim_step(i, model_output, sample)),
            SchedulerKind::Euler => Ok(self.euler_step(i, model_output, sample, None)),
            SchedulerKind::EulerAncestral => {
                Ok(self.euler_step(i, model_output, sample, Some(noise.ok_or_else(need)?)))
            }
            SchedulerKind::DpmPP2M | SchedulerKind::DpmPP2MKarras => Ok(self.dpm_step(i, model_output, sample)),
            SchedulerKind::Lcm => {
                let noise = if self.draws_noise(i) { Some(noise.ok_or_else(need)?) } else { None };
                Ok(self.lcm_step(i, model_output, sample, noise))
            }
        }
    }

    fn x0(&self, m: f32, x: f32, sa: f32, sb: f32) -> f32 {
        match self.prediction {
            Prediction::Epsilon => (x - sb * m) / sa,
            Prediction::V => sa * x - sb * m,
            Prediction::Sample => m,
        }
    }

    /// DPM-Solver++ (2M, midpoint), first order on the first and the last step (diffusers'
    /// `lower_order_final` with a final sigma of 0).
    fn dpm_step(&mut self, i: usize, out: &[f32], sample: &[f32]) -> Vec<f32> {
        let at = |s: f32| {
            let a = 1.0 / (s * s + 1.0).sqrt();
            (a, s * a)
        };
        let (alpha_s0, sigma_s0) = at(self.sigmas[i]);
        let (alpha_t, sigma_t) = at(self.sigmas[i + 1]);
        let lambda = |a: f32, s: f32| a.ln() - s.ln();
        let x0: Vec<f32> = out.iter().zip(sample).map(|(&m, &x)| self.x0(m, x, alpha_s0, sigma_s0)).collect();
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

    fn lcm_step(&self, i: usize, out: &[f32], sample: &[f32], noise: Option<&[f32]>) -> Vec<f32> {
        let t = self.timesteps[i];
        let prev = self.timesteps.get(i + 1).copied().unwrap_or(t);
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = self.alphas_cumprod[prev as usize];
        let (sa, sb) = (a_t.sqrt(), (1.0 - a_t).sqrt());
        // Consistency-model boundary scalings (sigma_data 0.5, timestep_scaling 10), in f64 as Python.
        let st = t as f64 * 10.0;
        let c_skip = (0.25 / (st * st + 0.25)) as f32;
        let c_out = (st / (st * st + 0.25).sqrt()) as f32;
        let denoised = out.iter().zip(sample).map(|(&m, &x)| c_out * self.x0(m, x, sa, sb) + c_skip * x);
        match noise {
            Some(z) => {
                let (pa, pb) = (a_prev.sqrt(), (1.0 - a_prev).sqrt());
                denoised.zip(z).map(|(d, &z)| pa * d + pb * z).collect()
            }
            None => denoised.collect(),
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

/// DPM-Solver multistep timesteps and sigmas: `steps + 1` points spaced per config with the last
/// dropped, or Karras sigmas (rho 7) mapped back to (rounded) timesteps; a final sigma of 0.
fn dpm_schedule(config: &SchedulerConfig, ac: &[f32], steps: usize, karras: bool) -> Result<(Vec<f32>, Vec<f32>, f32)> {
    let n = config.num_train_timesteps;
    let table: Vec<f32> = ac.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect();
    let table64: Vec<f64> = table.iter().map(|&s| s as f64).collect();
    let (timesteps, mut sigmas): (Vec<f64>, Vec<f32>) = if karras {
        let (smin, smax) = (table64[0], table64[n - 1]);
        let rho = 7.0;
        let (lo, hi) = (smin.powf(1.0 / rho), smax.powf(1.0 / rho));
        let sig: Vec<f64> = (0..steps)
            .map(|i| {
                let ramp = if steps == 1 { 0.0 } else { i as f64 / (steps - 1) as f64 };
                (hi + ramp * (lo - hi)).powf(rho)
            })
            .collect();
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
    Ok((timesteps.iter().map(|&t| t as f32).collect(), sigmas, 1.0))
}

/// diffusers' `_sigma_to_t`: interpolates a sigma's position in the log-sigma table.
fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let ls = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    let low = log_sigmas.iter().rposition(|&l| ls - l >= 0.0).unwrap_or(0).min(n - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo - ls) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile schedule sizes are refused by name before a schedule is built from them (an
    /// `original_inference_steps` of 0 used to divide by zero; a billion train timesteps
    /// allocated their tables).
    #[test]
    fn schedule_sizes_are_bounded() {
        let base = serde_json::json!({"_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 1000, "steps_offset": 1});
        let err = |k: &str, v: serde_json::Value| {
            let mut c = base.clone();
            c[k] = v;
            SchedulerConfig::from_json(&c.to_string()).unwrap_err().to_string()
        };
        assert!(SchedulerConfig::from_json(&base.to_string()).is_ok());
        for (e, want) in [
            (err("num_train_timesteps", 0.into()), "num_train_timesteps is 0"),
            (err("num_train_timesteps", 1_000_000_000u64.into()), "num_train_timesteps is 1000000000"),
            (err("original_inference_steps", 0.into()), "original_inference_steps is 0"),
            (err("steps_offset", 1000.into()), "steps_offset 1000"),
            (err("beta_end", 2.0.into()), "beta_end is 2"),
            (err("trained_betas", serde_json::json!([0.1, 0.2])), "trained_betas"),
        ] {
            assert!(e.contains(want), "{e}");
        }
    }

    fn sd15() -> SchedulerConfig {
        SchedulerConfig::from_json(
            r#"{"_class_name":"PNDMScheduler","beta_start":0.00085,"beta_end":0.012,"beta_schedule":"scaled_linear",
                "num_train_timesteps":1000,"set_alpha_to_one":false,"steps_offset":1,"skip_prk_steps":true}"#,
        )
        .unwrap()
    }

    #[test]
    fn bad_step_counts_are_errors_not_panics() {
        let c = sd15();
        for kind in [SchedulerKind::Ddim, SchedulerKind::Euler, SchedulerKind::DpmPP2MKarras, SchedulerKind::Lcm] {
            assert!(Scheduler::new(kind, &c, 0).is_err(), "{kind:?} 0 steps");
            assert!(Scheduler::new(kind, &c, 1001).is_err(), "{kind:?} 1001 steps");
            assert!(Scheduler::new(kind, &c, 1).is_ok(), "{kind:?} 1 step");
        }
        // Leading spacing plus steps_offset would reach timestep 1000 at 1000 DDIM steps.
        assert!(Scheduler::new(SchedulerKind::Ddim, &c, 1000).is_err());
        assert!(Scheduler::new(SchedulerKind::Lcm, &c, 51).is_err());
    }

    #[test]
    fn defaults_follow_the_scheduler_class() {
        // SD 1.5's config has no timestep_spacing: DDIM uses leading (+offset), Euler linspace.
        let c = sd15();
        assert_eq!(Scheduler::new(SchedulerKind::Ddim, &c, 4).unwrap().timesteps(), [751.0, 501.0, 251.0, 1.0]);
        assert_eq!(Scheduler::new(SchedulerKind::Euler, &c, 3).unwrap().timesteps(), [999.0, 499.5, 0.0]);
        assert_eq!(Scheduler::new(SchedulerKind::DpmPP2M, &c, 4).unwrap().timesteps(), [999.0, 749.0, 500.0, 250.0]);
        assert_eq!(Scheduler::new(SchedulerKind::Lcm, &c, 4).unwrap().timesteps(), [999.0, 759.0, 499.0, 259.0]);
        let euler = Scheduler::new(SchedulerKind::Euler, &c, 3).unwrap();
        assert!((euler.init_noise_sigma() - 14.614647).abs() < 1e-4, "{}", euler.init_noise_sigma());
    }
}
