//! Schedule bounds, class defaults and the registry.

use super::*;
use crate::pipeline::schedule::SchedulerConfig;

/// Hostile schedule sizes are refused by name before a schedule is built from them (an
/// `original_inference_steps` of 0 used to divide by zero; a billion train timesteps
/// allocated their tables).
#[test]
fn schedule_sizes_are_bounded() {
    let base =
        serde_json::json!({"_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 1000, "steps_offset": 1});
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
        (err("trained_betas", serde_json::json!(vec![2.0; 1000])), "trained_betas[0] is 2"),
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
    for kind in [
        SchedulerKind::Ddim,
        SchedulerKind::Euler,
        SchedulerKind::DpmPP2MKarras,
        SchedulerKind::Lcm,
        SchedulerKind::Pndm,
    ] {
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
    // PLMS runs its first step after the start twice (the warm-up): N + 1 U-Net calls.
    assert_eq!(Scheduler::new(SchedulerKind::Pndm, &c, 4).unwrap().timesteps(), [751.0, 501.0, 501.0, 251.0, 1.0]);
    assert_eq!(Scheduler::new(SchedulerKind::Euler, &c, 3).unwrap().timesteps(), [999.0, 499.5, 0.0]);
    assert_eq!(Scheduler::new(SchedulerKind::DpmPP2M, &c, 4).unwrap().timesteps(), [999.0, 749.0, 500.0, 250.0]);
    assert_eq!(Scheduler::new(SchedulerKind::Lcm, &c, 4).unwrap().timesteps(), [999.0, 759.0, 499.0, 259.0]);
    let euler = Scheduler::new(SchedulerKind::Euler, &c, 3).unwrap();
    assert!((euler.init_noise_sigma() - 14.614647).abs() < 1e-4, "{}", euler.init_noise_sigma());
}

#[test]
fn the_registry_names_every_kind_once() {
    let kinds = [
        SchedulerKind::Ddim,
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::DpmPP2M,
        SchedulerKind::DpmPP2MKarras,
        SchedulerKind::Lcm,
        SchedulerKind::Pndm,
        SchedulerKind::Heun,
        SchedulerKind::Lms,
        SchedulerKind::LmsKarras,
        SchedulerKind::UniPc,
        SchedulerKind::UniPcKarras,
        SchedulerKind::DpmPPSde,
        SchedulerKind::DpmPPSdeKarras,
    ];
    assert_eq!(REGISTRY.len(), kinds.len());
    for kind in kinds {
        assert_eq!(REGISTRY.iter().filter(|e| e.kind == kind).count(), 1, "{kind:?}");
        assert_eq!(SchedulerKind::parse(kind.id()).unwrap(), kind);
        let e = kind.entry();
        assert_eq!(SchedulerKind::for_class(e.class, e.karras), Some(kind));
    }
    assert_eq!(SchedulerKind::for_class("DPMSolverMultistepScheduler", true), Some(SchedulerKind::DpmPP2MKarras));
    assert_eq!(SchedulerKind::for_class("DPMSolverMultistepScheduler", false), Some(SchedulerKind::DpmPP2M));
    assert_eq!(SchedulerKind::for_class("PNDMScheduler", false), Some(SchedulerKind::Pndm));
    assert_eq!(SchedulerKind::for_class("LMSDiscreteScheduler", true), Some(SchedulerKind::LmsKarras));
    assert_eq!(SchedulerKind::for_class("UniPCMultistepScheduler", true), Some(SchedulerKind::UniPcKarras));
    assert_eq!(SchedulerKind::for_class("KDPM2DiscreteScheduler", false), None);
    assert_eq!(SchedulerKind::EulerAncestral.a1111_name(), "Euler a");
    assert_eq!(SchedulerKind::Pndm.a1111_name(), "PLMS");
    let err = SchedulerKind::parse("nope").unwrap_err().to_string();
    assert!(err.contains("unknown scheduler nope") && err.contains("dpm++2m-karras") && err.contains("pndm"), "{err}");
}

/// The betas come from `torch.linspace(.., dtype=float32)` as ATen computes it, so the schedule
/// is torch's to the bit: SD's last alphas_cumprod, as torch 2.15 (CPU) gives it for SD's
/// scaled_linear betas (`torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000)**2, 0)[999]`),
/// differs from a plain f64 linspace's by several ulps.
#[test]
fn betas_are_torch_linspace() {
    let ac = sd15().alphas_cumprod().unwrap();
    assert_eq!(ac[999], 0.004_660_095_f32);
    let l = crate::pipeline::schedule::torch_linspace(0.1, 0.9, 7);
    assert_eq!((l[0], l[6]), (0.1, 0.9));
    assert!(l.windows(2).all(|w| w[0] < w[1]));
}
