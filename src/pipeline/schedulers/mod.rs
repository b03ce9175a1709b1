//! Samplers, stepping latents on the CPU (they are small: 4 x H/8 x W/8) in f32 as diffusers does.
//! Each is a `Sampler` in its own file, configured from the model's `scheduler_config.json` the
//! way `XScheduler.from_config(...)` configures it in diffusers; `REGISTRY` is the one list of
//! them, with the names the CLI, A1111's parameters text, diffusers' classes and the page use.
//!
//! To add one: a file here with a constructor and a `Sampler` impl, a `SchedulerKind` variant,
//! and its `REGISTRY` row. The CLI, the tests and the page's list pick it up from there.

mod ddim;
mod dpmpp_2m;
mod dpmpp_sde;
mod euler;
mod euler_ancestral;
mod heun;
mod lcm;
mod lms;
mod pndm;
mod unipc;

use super::schedule::{Prediction, SchedulerConfig};
use crate::error::{Error, Result};

/// One denoising schedule being run: timesteps fixed at construction, state (DPM++'s history)
/// advanced by `step`.
pub trait Sampler: Send {
    fn timesteps(&self) -> &[f32];

    /// Timesteps per step of the schedule (Heun runs each twice): img2img skips this many per
    /// step it leaves out, as diffusers' `timesteps[t_start * order:]`.
    fn order(&self) -> usize {
        1
    }

    /// Initial latents are standard normal times this.
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    /// Whether step `i` consumes a standard-normal draw (in diffusers' order).
    fn draws_noise(&self, _i: usize) -> bool {
        false
    }

    /// The (signal, noise) factors that noise clean latents to the level of step `i`
    /// (img2img's start), as the class's `add_noise` does.
    fn noise_factors(&self, i: usize) -> (f32, f32);

    /// Scales the U-Net input at step `i` in place.
    fn scale_model_input(&self, _x: &mut [f32], _i: usize) {}

    /// DDIM's eta (checked to be 0..=1 by the request); samplers without one ignore it.
    fn set_eta(&mut self, _eta: f32) {}

    /// Advances `sample` by step `i` given the guided model output; sizes are checked and a
    /// needed `noise` is present (see `Scheduler::step`).
    fn step(&mut self, i: usize, model_output: &[f32], sample: &[f32], noise: Option<&[f32]>) -> Vec<f32>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerKind {
    Ddim,
    Euler,
    EulerAncestral,
    DpmPP2M,
    DpmPP2MKarras,
    Lcm,
    Pndm,
    Heun,
    Lms,
    LmsKarras,
    UniPc,
    UniPcKarras,
    DpmPPSde,
    DpmPPSdeKarras,
}

/// A registry row: how each kind is named and built.
pub struct Entry {
    pub kind: SchedulerKind,
    /// The CLI's `--scheduler`, the page's and the catalog's name.
    pub id: &'static str,
    /// The sampler's name in AUTOMATIC1111's parameters text.
    pub a1111: &'static str,
    /// The diffusers class a model's `scheduler_config.json` names for it, and whether that
    /// class needs `use_karras_sigmas` set to mean this kind.
    pub class: &'static str,
    pub karras: bool,
    build: fn(&SchedulerConfig, usize) -> Result<Box<dyn Sampler>>,
}

/// Every scheduler, in the order the page lists them.
pub const REGISTRY: &[Entry] = &[
    Entry {
        kind: SchedulerKind::Ddim,
        id: "ddim",
        a1111: "DDIM",
        class: "DDIMScheduler",
        karras: false,
        build: ddim::build,
    },
    Entry {
        kind: SchedulerKind::Euler,
        id: "euler",
        a1111: "Euler",
        class: "EulerDiscreteScheduler",
        karras: false,
        build: euler::build,
    },
    Entry {
        kind: SchedulerKind::EulerAncestral,
        id: "euler-a",
        a1111: "Euler a",
        class: "EulerAncestralDiscreteScheduler",
        karras: false,
        build: euler_ancestral::build,
    },
    Entry {
        kind: SchedulerKind::DpmPP2M,
        id: "dpm++2m",
        a1111: "DPM++ 2M",
        class: "DPMSolverMultistepScheduler",
        karras: false,
        build: |c, s| dpmpp_2m::build(c, s, false),
    },
    Entry {
        kind: SchedulerKind::DpmPP2MKarras,
        id: "dpm++2m-karras",
        a1111: "DPM++ 2M Karras",
        class: "DPMSolverMultistepScheduler",
        karras: true,
        build: |c, s| dpmpp_2m::build(c, s, true),
    },
    Entry {
        kind: SchedulerKind::Pndm,
        id: "pndm",
        a1111: "PLMS",
        class: "PNDMScheduler",
        karras: false,
        build: pndm::build,
    },
    Entry {
        kind: SchedulerKind::Heun,
        id: "heun",
        a1111: "Heun",
        class: "HeunDiscreteScheduler",
        karras: false,
        build: heun::build,
    },
    Entry {
        kind: SchedulerKind::Lms,
        id: "lms",
        a1111: "LMS",
        class: "LMSDiscreteScheduler",
        karras: false,
        build: |c, s| lms::build(c, s, false),
    },
    Entry {
        kind: SchedulerKind::LmsKarras,
        id: "lms-karras",
        a1111: "LMS Karras",
        class: "LMSDiscreteScheduler",
        karras: true,
        build: |c, s| lms::build(c, s, true),
    },
    Entry {
        kind: SchedulerKind::UniPc,
        id: "unipc",
        a1111: "UniPC",
        class: "UniPCMultistepScheduler",
        karras: false,
        build: |c, s| unipc::build(c, s, false),
    },
    Entry {
        kind: SchedulerKind::UniPcKarras,
        id: "unipc-karras",
        a1111: "UniPC Karras",
        class: "UniPCMultistepScheduler",
        karras: true,
        build: |c, s| unipc::build(c, s, true),
    },
    Entry {
        kind: SchedulerKind::DpmPPSde,
        id: "dpm++sde",
        a1111: "DPM++ SDE",
        class: "DPMSolverSDEScheduler",
        karras: false,
        build: |c, s| dpmpp_sde::build(c, s, false),
    },
    Entry {
        kind: SchedulerKind::DpmPPSdeKarras,
        id: "dpm++sde-karras",
        a1111: "DPM++ SDE Karras",
        class: "DPMSolverSDEScheduler",
        karras: true,
        build: |c, s| dpmpp_sde::build(c, s, true),
    },
    Entry {
        kind: SchedulerKind::Lcm,
        id: "lcm",
        a1111: "LCM",
        class: "LCMScheduler",
        karras: false,
        build: lcm::build,
    },
];

impl SchedulerKind {
    pub fn entry(self) -> &'static Entry {
        REGISTRY.iter().find(|e| e.kind == self).expect("every kind has a registry row")
    }

    /// The sampler's name in AUTOMATIC1111's parameters text.
    pub fn a1111_name(self) -> &'static str {
        self.entry().a1111
    }

    /// Our name (`--scheduler`, the page, the catalog).
    pub fn id(self) -> &'static str {
        self.entry().id
    }

    pub fn parse(name: &str) -> Result<SchedulerKind> {
        REGISTRY.iter().find(|e| e.id == name).map(|e| e.kind).ok_or_else(|| Error::Config {
            component: "scheduler".into(),
            msg: format!(
                "unknown scheduler {name} (one of {})",
                REGISTRY.iter().map(|e| e.id).collect::<Vec<_>>().join(", ")
            ),
        })
    }

    /// The kind a diffusers scheduler class stands for, if we implement it (`karras`: the
    /// config's `use_karras_sigmas`).
    pub fn for_class(class: &str, karras: bool) -> Option<SchedulerKind> {
        let mut rows = REGISTRY.iter().filter(|e| e.class == class);
        let all: Vec<_> = rows.by_ref().collect();
        all.iter().find(|e| e.karras == karras).or(all.first()).map(|e| e.kind)
    }
}

/// A scheduler of any kind, with the checks every kind shares.
pub struct Scheduler {
    kind: SchedulerKind,
    inner: Box<dyn Sampler>,
}

impl Scheduler {
    pub fn new(kind: SchedulerKind, config: &SchedulerConfig, steps: usize) -> Result<Scheduler> {
        let inner = (kind.entry().build)(config, steps)?;
        let n = config.num_train_timesteps;
        if inner.timesteps().iter().any(|&t| t < 0.0 || t as usize >= n) {
            return Err(Error::Request(format!(
                "{steps} steps with this schedule reach past the {n} training timesteps"
            )));
        }
        Ok(Scheduler { kind, inner })
    }

    pub fn kind(&self) -> SchedulerKind {
        self.kind
    }

    pub fn timesteps(&self) -> &[f32] {
        self.inner.timesteps()
    }

    /// Timesteps per step (see `Sampler::order`).
    pub fn order(&self) -> usize {
        self.inner.order()
    }

    /// Initial latents are standard normal times this.
    pub fn init_noise_sigma(&self) -> f32 {
        self.inner.init_noise_sigma()
    }

    /// Whether step `i` consumes a standard-normal draw (in diffusers' order).
    pub fn draws_noise(&self, i: usize) -> bool {
        self.inner.draws_noise(i)
    }

    /// Noises clean latents to the level of step `i` (img2img's start), as each scheduler's
    /// `add_noise` does.
    pub fn add_noise(&self, x: &[f32], noise: &[f32], i: usize) -> Result<Vec<f32>> {
        if x.len() != noise.len() {
            return Err(Error::shape("add_noise", "latents and noise sizes differ"));
        }
        let (a, b) = self.inner.noise_factors(i);
        Ok(x.iter().zip(noise).map(|(&x, &n)| a * x + b * n).collect())
    }

    /// DDIM's eta (see `Sampler::set_eta`).
    pub fn set_eta(&mut self, eta: f32) {
        self.inner.set_eta(eta)
    }

    /// Scales the U-Net input at step `i` in place.
    pub fn scale_model_input(&self, x: &mut [f32], i: usize) {
        self.inner.scale_model_input(x, i)
    }

    /// Advances `sample` by step `i` given the guided model output. `noise` is this step's
    /// standard-normal draw when `draws_noise(i)`.
    pub fn step(&mut self, i: usize, model_output: &[f32], sample: &[f32], noise: Option<&[f32]>) -> Result<Vec<f32>> {
        if model_output.len() != sample.len() || noise.is_some_and(|n| n.len() != sample.len()) {
            return Err(Error::shape("scheduler", "model output, sample and noise sizes differ"));
        }
        let noise = if self.inner.draws_noise(i) {
            Some(noise.ok_or_else(|| Error::shape("scheduler", "this step needs a noise draw"))?)
        } else {
            None
        };
        Ok(self.inner.step(i, model_output, sample, noise))
    }
}

/// The clean-sample estimate from a model output, for alpha-sigma parameterized samplers
/// (`sa`, `sb`: the signal and noise scales at this step).
fn x0(prediction: Prediction, m: f32, x: f32, sa: f32, sb: f32) -> f32 {
    match prediction {
        Prediction::Epsilon => (x - sb * m) / sa,
        Prediction::V => sa * x - sb * m,
        Prediction::Sample => m,
    }
}

#[cfg(test)]
mod tests;
