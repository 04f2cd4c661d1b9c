//! The scheduler configurations that `scheduler_demo` and `bench_schedulers` run: one list, so
//! the two tables name the same schedulers with the same settings.
//!
//! Every entry is a diffusers `scheduler_config.json` on Stable Diffusion's (and AnimateDiff's)
//! training schedule: linear betas from 0.00085 to 0.012, `steps_offset: 1`, linspace spacing.
//! [`zero_snr_schedulers`] adds the zero-terminal-SNR setting real v-prediction checkpoints ship
//! (`rescale_betas_zero_snr: true`, trailing spacing; Lin et al. 2024, "Common Diffusion Noise
//! Schedules and Sample Steps are Flawed"), with ε and with v targets.

/// One scheduler configuration and the step counts the two examples use.
#[derive(Debug, Clone)]
pub struct SchedulerCase {
    /// Name in the tables.
    pub name: String,
    /// `scheduler_config.json` text.
    pub config: String,
    /// Steps in `scheduler_demo` (fewer for two-call and few-step samplers).
    pub demo_steps: usize,
    /// Steps in `bench_schedulers`.
    pub bench_steps: usize,
}

/// The Stable Diffusion training schedule with `class` and extra fields (a JSON fragment that
/// starts with a comma, or empty), linspace spacing.
fn sd_config(class: &str, extra: &str) -> String {
    spaced_config(class, "linspace", extra)
}

fn spaced_config(class: &str, spacing: &str, extra: &str) -> String {
    format!(
        r#"{{"_class_name":"{class}","beta_schedule":"linear","beta_start":0.00085,"beta_end":0.012,"steps_offset":1,"timestep_spacing":"{spacing}"{extra}}}"#
    )
}

fn case(name: &str, config: String, demo_steps: usize, bench_steps: usize) -> SchedulerCase {
    SchedulerCase {
        name: name.to_string(),
        config,
        demo_steps,
        bench_steps,
    }
}

/// Every sampler vdm implements, configured like AnimateDiff's DDIM config
/// (`examples/assets/animatediff_ddim.json`).
pub fn schedulers() -> Vec<SchedulerCase> {
    let few_step = |class: &str| {
        format!(
            r#"{{"_class_name":"{class}","beta_schedule":"linear","beta_start":0.00085,"beta_end":0.012}}"#
        )
    };
    vec![
        case(
            "DDIM",
            sd_config(
                "DDIMScheduler",
                r#","clip_sample":false,"set_alpha_to_one":false"#,
            ),
            25,
            50,
        ),
        case(
            "DDPM (draws noise)",
            sd_config("DDPMScheduler", r#","clip_sample":false"#),
            50,
            50,
        ),
        case("Euler", sd_config("EulerDiscreteScheduler", ""), 25, 50),
        case(
            "Euler a (draws noise)",
            sd_config("EulerAncestralDiscreteScheduler", ""),
            25,
            50,
        ),
        case(
            "Heun (2 calls/step)",
            sd_config("HeunDiscreteScheduler", ""),
            13,
            25,
        ),
        case(
            "KDPM2 (2 calls/step)",
            sd_config("KDPM2DiscreteScheduler", ""),
            13,
            25,
        ),
        case(
            "DPM-Solver++ 2M",
            sd_config("DPMSolverMultistepScheduler", ""),
            15,
            50,
        ),
        case(
            "DPM-Solver singlestep (order 2)",
            sd_config("DPMSolverSinglestepScheduler", ""),
            15,
            50,
        ),
        case(
            "UniPC (bh2, order 2)",
            sd_config("UniPCMultistepScheduler", ""),
            15,
            50,
        ),
        case(
            "DEIS (log-rho, order 2)",
            sd_config("DEISMultistepScheduler", ""),
            15,
            50,
        ),
        case("LCM", few_step("LCMScheduler"), 8, 8),
        case("TCD (gamma 0.3)", few_step("TCDScheduler"), 8, 8),
    ]
}

/// DDIM, Euler, DPM-Solver++ and LCM on the zero-terminal-SNR schedule, each with ε and with v
/// targets.
pub fn zero_snr_schedulers() -> Vec<SchedulerCase> {
    let mut cases = Vec::new();
    for (name, class, extra, steps) in [
        (
            "DDIM",
            "DDIMScheduler",
            r#","clip_sample":false,"set_alpha_to_one":false"#,
            25,
        ),
        ("Euler", "EulerDiscreteScheduler", "", 25),
        ("DPM-Solver++ 2M", "DPMSolverMultistepScheduler", "", 15),
        ("LCM", "LCMScheduler", "", 8),
    ] {
        for (target, prediction) in [("ε", "epsilon"), ("v", "v_prediction")] {
            let extra = format!(
                r#"{extra},"rescale_betas_zero_snr":true,"prediction_type":"{prediction}""#
            );
            cases.push(case(
                &format!("{name}, zero SNR, {target}"),
                spaced_config(class, "trailing", &extra),
                steps,
                steps,
            ));
        }
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mixture::sample_mixture;
    use vdm::core::Error;
    use vdm::schedulers::from_config_json;

    /// v-prediction on a zero-SNR schedule lands on a clean video with every sampler (the
    /// denoiser is exact); ε-prediction is a typed error, before sampling, for the samplers
    /// whose first step would divide by `α = 0` (DDIM, LCM), and lands for those that clamp the
    /// first sigma (Euler, DPM-Solver++), never NaN.
    #[test]
    fn zero_snr_configs_land_or_fail_with_a_typed_error() {
        let shape = [1, 2, 4, 8, 8];
        for case in zero_snr_schedulers() {
            let mut s = from_config_json(&case.config).unwrap();
            match sample_mixture(s.as_mut(), case.demo_steps, 3, shape) {
                Ok((video, model, _)) => {
                    let (_, rms) = model.nearest(&video).unwrap();
                    // DDIM stops at ᾱ[0] (set_alpha_to_one = false): a little noise is left.
                    assert!(rms < 0.05, "{}: {rms}", case.name);
                }
                Err(Error::NonFinite { .. }) => {
                    assert!(case.name.ends_with('ε'), "{}", case.name);
                    assert!(
                        case.name.starts_with("DDIM") || case.name.starts_with("LCM"),
                        "{}",
                        case.name
                    );
                }
                Err(e) => panic!("{}: {e}", case.name),
            }
        }
    }

    #[test]
    fn every_case_builds_and_the_embedded_ddim_config_is_the_first() {
        for case in schedulers().iter().chain(&zero_snr_schedulers()) {
            let mut s =
                from_config_json(&case.config).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            match s.set_timesteps(case.demo_steps) {
                Ok(()) => {}
                // ε at ᾱ = 0 is refused before sampling by the schedulers that divide by α.
                Err(Error::NonFinite { what, .. })
                    if case.name.ends_with('ε')
                        && (case.name.starts_with("DDIM") || case.name.starts_with("LCM")) =>
                {
                    assert!(what.contains("timestep 999"), "{}: {what}", case.name);
                }
                Err(e) => panic!("{}: {e}", case.name),
            }
        }
        let embedded: serde_json::Value =
            serde_json::from_str(include_str!("../assets/animatediff_ddim.json")).unwrap();
        let ddim: serde_json::Value = serde_json::from_str(&schedulers()[0].config).unwrap();
        for (key, value) in ddim.as_object().unwrap() {
            assert_eq!(&embedded[key], value, "{key}");
        }
    }
}
