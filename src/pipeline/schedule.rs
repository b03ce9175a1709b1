//! The scheduler configuration (`scheduler/scheduler_config.json`) and the noise schedule every
//! scheduler derives from: betas, cumulative alphas, timestep spacing. Arithmetic follows
//! diffusers' dtypes (betas and alphas in f32, the cumulative product accumulated in f64 as torch
//! does on the CPU) so timesteps and sigmas match to the last bit or two.

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Clone, Debug, Deserialize)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    #[serde(default = "d_train")]
    pub num_train_timesteps: usize,
    #[serde(default = "d_beta_start")]
    pub beta_start: f64,
    #[serde(default = "d_beta_end")]
    pub beta_end: f64,
    #[serde(default = "d_schedule")]
    pub beta_schedule: String,
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    /// `epsilon`, `v_prediction` (SD 2.1-768) or `sample`.
    #[serde(default = "d_epsilon")]
    pub prediction_type: String,
    /// `leading`, `trailing` (SD-Turbo) or `linspace`; absent means the scheduler class's own
    /// default (see `for_class`).
    #[serde(default)]
    pub timestep_spacing: Option<String>,
    #[serde(default)]
    pub steps_offset: usize,
    #[serde(default = "d_true")]
    pub set_alpha_to_one: bool,
    #[serde(default)]
    pub clip_sample: bool,
    #[serde(default)]
    pub use_karras_sigmas: bool,
    #[serde(default)]
    pub final_sigmas_type: Option<String>,
    #[serde(default)]
    pub interpolation_type: Option<String>,
    #[serde(default)]
    pub timestep_type: Option<String>,
    /// LCM: the teacher's step count its timesteps are drawn from.
    #[serde(default)]
    pub original_inference_steps: Option<usize>,
    /// Keys the saved config only had by default. diffusers' `from_config` drops them, so a
    /// different scheduler class falls back to its own default (e.g. Euler's `linspace`).
    #[serde(rename = "_use_default_values", default)]
    pub use_default_values: Vec<String>,
    #[serde(default)]
    pub thresholding: bool,
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
    /// Multistep solver settings (DPM-Solver's, UniPC's), checked by the sampler that reads them:
    /// the model's config may name another class's.
    #[serde(default)]
    pub algorithm_type: Option<String>,
    #[serde(default)]
    pub solver_order: Option<usize>,
    #[serde(default)]
    pub solver_type: Option<String>,
    /// PNDM: PLMS steps only (SD 1.x ships this), instead of Runge-Kutta warm-up steps first.
    #[serde(default)]
    pub skip_prk_steps: bool,
}

fn d_train() -> usize {
    1000
}
fn d_beta_start() -> f64 {
    0.0001
}
fn d_beta_end() -> f64 {
    0.02
}
fn d_schedule() -> String {
    "linear".into()
}
fn d_epsilon() -> String {
    "epsilon".into()
}
fn d_true() -> bool {
    true
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Config { component: "scheduler".into(), msg: msg.into() }
}

/// What the U-Net predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    V,
    Sample,
}

/// The most training timesteps a scheduler config may declare (every published SD has 1000).
pub const MAX_TRAIN_TIMESTEPS: usize = 10_000;

impl SchedulerConfig {
    pub fn from_json(json: &str) -> Result<SchedulerConfig> {
        let c: SchedulerConfig = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        // Sizes first: every schedule is built from these before anything else is read.
        if !(1..=MAX_TRAIN_TIMESTEPS).contains(&c.num_train_timesteps) {
            return Err(bad(format!(
                "num_train_timesteps is {}; expected 1 to {MAX_TRAIN_TIMESTEPS}",
                c.num_train_timesteps
            )));
        }
        if c.original_inference_steps.is_some_and(|n| !(1..=c.num_train_timesteps).contains(&n)) {
            return Err(bad(format!(
                "original_inference_steps is {}; expected 1 to num_train_timesteps",
                c.original_inference_steps.unwrap_or_default()
            )));
        }
        if c.steps_offset >= c.num_train_timesteps {
            return Err(bad(format!("steps_offset {} is not below num_train_timesteps", c.steps_offset)));
        }
        if c.trained_betas.as_ref().is_some_and(|b| b.len() != c.num_train_timesteps) {
            return Err(bad("trained_betas must have num_train_timesteps entries"));
        }
        if let Some((i, v)) =
            c.trained_betas.iter().flatten().enumerate().find(|(_, v)| !(v.is_finite() && **v > 0.0 && **v < 1.0))
        {
            return Err(bad(format!("trained_betas[{i}] is {v}; expected a number between 0 and 1")));
        }
        for (key, v) in [("beta_start", c.beta_start), ("beta_end", c.beta_end)] {
            if !(v.is_finite() && v > 0.0 && v < 1.0) {
                return Err(bad(format!("{key} is {v}; expected a number between 0 and 1")));
            }
        }
        c.prediction()?;
        if let Some(sp) = c.timestep_spacing.as_deref().filter(|s| !matches!(*s, "leading" | "trailing" | "linspace")) {
            return Err(bad(format!("timestep_spacing {sp} is not supported")));
        }
        if c.clip_sample {
            return Err(bad("clip_sample is not supported (no Stable Diffusion model uses it)"));
        }
        if c.thresholding || c.rescale_betas_zero_snr {
            return Err(bad("thresholding and rescale_betas_zero_snr are not supported"));
        }
        if c.timestep_type.as_deref().is_some_and(|t| t != "discrete") {
            return Err(bad("only discrete timesteps are supported"));
        }
        if c.interpolation_type.as_deref().is_some_and(|t| t != "linear") {
            return Err(bad("only linear sigma interpolation is supported"));
        }
        Ok(c)
    }

    pub fn prediction(&self) -> Result<Prediction> {
        match self.prediction_type.as_str() {
            "epsilon" => Ok(Prediction::Epsilon),
            "v_prediction" => Ok(Prediction::V),
            "sample" => Ok(Prediction::Sample),
            other => Err(bad(format!("prediction_type {other} is not supported"))),
        }
    }

    /// The config as diffusers' `SchedulerClass.from_config(config)` sees it for a class whose
    /// default spacing is `default_spacing`: keys the file only had by default
    /// (`_use_default_values`) fall back to the class's own defaults.
    pub fn for_class(&self, default_spacing: &str) -> SchedulerConfig {
        let mut c = self.clone();
        let defaulted = |k: &str| c.use_default_values.iter().any(|v| v == k);
        if c.timestep_spacing.is_none() || defaulted("timestep_spacing") {
            c.timestep_spacing = Some(default_spacing.to_string());
        }
        if defaulted("prediction_type") {
            c.prediction_type = "epsilon".into();
        }
        c
    }

    pub fn spacing(&self) -> &str {
        self.timestep_spacing.as_deref().unwrap_or("leading")
    }

    /// Cumulative products of alphas, one per training timestep.
    pub fn alphas_cumprod(&self) -> Result<Vec<f32>> {
        let n = self.num_train_timesteps;
        let betas: Vec<f32> = if let Some(t) = &self.trained_betas {
            t.iter().map(|&b| b as f32).collect()
        } else {
            match self.beta_schedule.as_str() {
                "linear" => torch_linspace(self.beta_start, self.beta_end, n),
                "scaled_linear" => {
                    torch_linspace(self.beta_start.sqrt(), self.beta_end.sqrt(), n).into_iter().map(|b| b * b).collect()
                }
                "squaredcos_cap_v2" => {
                    let abar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
                    (0..n)
                        .map(|i| (1.0 - abar((i + 1) as f64 / n as f64) / abar(i as f64 / n as f64)).min(0.999) as f32)
                        .collect()
                }
                other => return Err(bad(format!("beta_schedule {other} is not supported"))),
            }
        };
        if betas.len() != n {
            return Err(bad(format!("{} trained betas for {n} timesteps", betas.len())));
        }
        let mut acc = 1f64;
        Ok(betas
            .iter()
            .map(|&b| {
                acc *= (1.0 - b) as f64;
                acc as f32
            })
            .collect())
    }

    /// The inference timesteps (descending) for `steps` steps, per `timestep_spacing`.
    pub fn timesteps(&self, steps: usize) -> Result<Vec<f64>> {
        let n = self.num_train_timesteps;
        if steps == 0 || steps > n {
            return Err(bad(format!("{steps} steps with {n} training timesteps")));
        }
        Ok(match self.spacing() {
            "linspace" => (0..steps)
                .rev()
                .map(|i| if steps == 1 { 0.0 } else { (n - 1) as f64 * i as f64 / (steps - 1) as f64 })
                .collect(),
            "leading" => {
                let ratio = n / steps;
                (0..steps).rev().map(|i| (i * ratio + self.steps_offset) as f64).collect()
            }
            _ => {
                // np.arange(n, 0, -n/steps).round() - 1
                let ratio = n as f64 / steps as f64;
                (0..steps).map(|i| round_half_even(n as f64 - i as f64 * ratio) - 1.0).collect()
            }
        })
    }
}

/// `torch.linspace(a, b, n, dtype=torch.float32)` bit for bit: an f32 step, each value one fused
/// multiply-add from the nearer end (the first half counts up from `a`, the second down from
/// `b`), as ATen's CPU kernel computes it. The betas, and so every alpha and sigma, come from it.
pub fn torch_linspace(a: f64, b: f64, n: usize) -> Vec<f32> {
    let (a, b) = (a as f32, b as f32);
    if n == 1 {
        return vec![a];
    }
    let step = (b - a) / (n - 1) as f32;
    (0..n).map(|i| if i < n / 2 { step.mul_add(i as f32, a) } else { (-step).mul_add((n - 1 - i) as f32, b) }).collect()
}

/// numpy's `round`: halves go to the even neighbour.
pub fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// `np.interp(x, 0..len, table)`.
pub fn interp(x: f64, table: &[f64]) -> f64 {
    if x <= 0.0 {
        return table[0];
    }
    let last = table.len() - 1;
    if x >= last as f64 {
        return table[last];
    }
    let i = x.floor() as usize;
    let f = x - i as f64;
    table[i] + (table[i + 1] - table[i]) * f
}
