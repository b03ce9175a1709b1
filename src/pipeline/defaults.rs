//! Generation settings a model's own files imply, for a model that comes with none (added by
//! URL): what its scheduler config and U-Net say about how it was trained to be sampled.

use serde::Serialize;

use super::schedule::SchedulerConfig;
use crate::models::config::UNetConfig;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Defaults {
    pub steps: usize,
    pub guidance: f32,
    /// A name `SchedulerKind::parse` takes.
    pub scheduler: &'static str,
}

pub fn for_model(scheduler: &SchedulerConfig, unet: &UNetConfig) -> Defaults {
    let class = scheduler.class_name.as_deref().unwrap_or("");
    let trailing = scheduler.timestep_spacing.as_deref() == Some("trailing");
    // Latent consistency models: a guidance embedding (w) and a few steps.
    if class == "LCMScheduler" || unet.time_cond_proj_dim.is_some() {
        return Defaults { steps: 4, guidance: 8.0, scheduler: "lcm" };
    }
    // Adversarially distilled models (SD-Turbo, SDXL-Turbo) ship Euler with trailing spacing:
    // one step, no guidance, as their model cards sample them.
    if trailing && matches!(class, "EulerDiscreteScheduler" | "EulerAncestralDiscreteScheduler") {
        return Defaults { steps: 1, guidance: 0.0, scheduler: "euler" };
    }
    let scheduler = match class {
        "DDIMScheduler" => "ddim",
        "EulerDiscreteScheduler" => "euler",
        "EulerAncestralDiscreteScheduler" => "euler-a",
        "DPMSolverMultistepScheduler" if scheduler.use_karras_sigmas => "dpm++2m-karras",
        "DPMSolverMultistepScheduler" => "dpm++2m",
        // PNDM (SD 1.5's own, `pndm` in the list) and anything else: the sampler most users
        // pick for them, which also gets there in fewer steps.
        _ => "dpm++2m-karras",
    };
    Defaults { steps: 25, guidance: 7.5, scheduler }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(json: &str) -> SchedulerConfig {
        SchedulerConfig::from_json(json).unwrap()
    }

    #[test]
    fn published_schedulers_get_their_model_cards_settings() {
        let unet = UNetConfig::from_json(include_str!(
            "../../tests/fixtures/published/stabilityai__sd-turbo/unet/config.json"
        ))
        .unwrap();
        let turbo =
            sched(r#"{"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "trailing", "steps_offset": 1}"#);
        assert_eq!(for_model(&turbo, &unet), Defaults { steps: 1, guidance: 0.0, scheduler: "euler" });
        let sd15 = sched(r#"{"_class_name": "PNDMScheduler", "skip_prk_steps": true, "steps_offset": 1}"#);
        assert_eq!(for_model(&sd15, &unet), Defaults { steps: 25, guidance: 7.5, scheduler: "dpm++2m-karras" });
        let ddim = sched(r#"{"_class_name": "DDIMScheduler"}"#);
        assert_eq!(for_model(&ddim, &unet).scheduler, "ddim");
        let lcm = sched(r#"{"_class_name": "LCMScheduler"}"#);
        assert_eq!(for_model(&lcm, &unet), Defaults { steps: 4, guidance: 8.0, scheduler: "lcm" });
        for d in [for_model(&turbo, &unet), for_model(&sd15, &unet), for_model(&ddim, &unet)] {
            assert!(crate::pipeline::schedulers::SchedulerKind::parse(d.scheduler).is_ok());
        }
    }
}
