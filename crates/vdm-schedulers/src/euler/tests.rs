//! Unit tests of the Euler sampler and its configuration.

use super::*;
use burn::tensor::{Device, TensorData};
use vdm_core::noise::{NoNoise, NoiseBank};

fn sd(spacing: TimestepSpacing) -> EulerDiscreteConfig {
    EulerDiscreteConfig {
        betas: BetaConfig::sd(BetaSchedule::ScaledLinear),
        timestep_spacing: spacing,
        steps_offset: 1,
        ..EulerDiscreteConfig::default()
    }
}

fn err(cfg: EulerDiscreteConfig) -> String {
    cfg.build().unwrap_err().to_string()
}

#[test]
fn defaults_are_diffusers_defaults() {
    let c: EulerDiscreteConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(c, EulerDiscreteConfig::default());
    assert_eq!(c.timestep_spacing, TimestepSpacing::Linspace);
    assert_eq!(c.interpolation_type, InterpolationType::Linear);
    assert_eq!(c.final_sigmas_type, FinalSigmasType::Zero);
    assert_eq!(c.betas.beta_end, 0.02);
    let c: EulerDiscreteConfig =
        serde_json::from_str(r#"{"use_karras_sigmas": null, "sigma_min": null}"#).unwrap();
    assert!(!c.use_karras_sigmas);
}

#[test]
fn bad_configs_name_the_field() {
    let base = EulerDiscreteConfig::default;
    let e = err(EulerDiscreteConfig {
        betas: BetaConfig {
            beta_end: f64::NAN,
            ..BetaConfig::default()
        },
        ..base()
    });
    assert!(e.contains("beta_end"), "{e}");
    let e = err(EulerDiscreteConfig {
        use_karras_sigmas: true,
        use_exponential_sigmas: true,
        ..base()
    });
    assert!(e.contains("use_karras_sigmas"), "{e}");
    let e = err(EulerDiscreteConfig {
        use_beta_sigmas: true,
        use_exponential_sigmas: true,
        ..base()
    });
    assert!(e.contains("use_karras_sigmas"), "{e}");
    let e = err(EulerDiscreteConfig {
        sigma_min: Some(-1.0),
        ..base()
    });
    assert!(e.contains("sigma_min"), "{e}");
    let e = err(EulerDiscreteConfig {
        sigma_max: Some(f64::INFINITY),
        ..base()
    });
    assert!(e.contains("sigma_max"), "{e}");
    let e = err(EulerDiscreteConfig {
        sigma_min: Some(2.0),
        sigma_max: Some(1.0),
        ..base()
    });
    assert!(e.contains("sigma_min"), "{e}");
    let e = err(EulerDiscreteConfig {
        betas: BetaConfig::sd(BetaSchedule::Sigmoid),
        ..base()
    });
    assert!(e.contains("beta_schedule"), "{e}");
    let e = serde_json::from_str::<EulerDiscreteConfig>(r#"{"interpolation_type": "cubic"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("interpolation_type"), "{e}");

    let s = base().build().unwrap();
    for (field, r) in [
        ("s_churn", s.clone().with_s_churn(-1.0)),
        ("s_tmin", s.clone().with_s_tmin(f64::NAN)),
        ("s_tmax", s.clone().with_s_tmax(f64::NAN)),
        ("s_noise", s.clone().with_s_noise(f64::INFINITY)),
    ] {
        let e = r.unwrap_err().to_string();
        assert!(e.contains(field), "{e}");
    }
    assert!(s.clone().with_s_tmax(f64::INFINITY).is_ok());
    let mut s = s;
    let e = s.set_timesteps(0).unwrap_err().to_string();
    assert!(e.contains("num_inference_steps"), "{e}");
    let e = s.set_timesteps(1001).unwrap_err().to_string();
    assert!(e.contains("num_inference_steps"), "{e}");
}

#[test]
fn timestep_lookup() {
    let mut s = sd(TimestepSpacing::Leading).build().unwrap();
    assert!(s.index_for_timestep(961.0).is_err(), "before set_timesteps");
    s.set_timesteps(25).unwrap();
    assert_eq!(s.timesteps()[0], 961.0);
    assert_eq!(s.index_for_timestep(961.0).unwrap(), 0);
    assert_eq!(s.index_for_timestep(1.0).unwrap(), 24);
    let e = s.index_for_timestep(960.0).unwrap_err().to_string();
    assert!(e.contains("timestep"), "{e}");
    let device = Device::flex();
    let x = Tensor::<5>::zeros([1, 1, 1, 1, 1], &device);
    assert!(s.add_noise(x.clone(), x.clone(), 500.0).is_err());
    assert!(s.get_velocity(x.clone(), x, 500.0).is_err());
}

#[test]
fn linspace_is_fractional_and_init_sigma_depends_on_spacing() {
    let mut s = sd(TimestepSpacing::Linspace).build().unwrap();
    s.set_timesteps(25).unwrap();
    assert_eq!(s.timesteps()[0], 999.0);
    assert_eq!(s.timesteps()[1], 957.375);
    assert_eq!(s.sigmas().len(), 26);
    assert_eq!(*s.sigmas().last().unwrap(), 0.0);
    let max = s.sigmas()[0] as f64;
    assert_eq!(s.init_noise_sigma(), max);
    let mut l = sd(TimestepSpacing::Leading).build().unwrap();
    l.set_timesteps(25).unwrap();
    let max = l.sigmas()[0];
    assert_eq!(l.init_noise_sigma(), torch_sqrt(max * max + 1.0) as f64);
}

#[test]
fn zero_snr_patches_the_last_alpha() {
    let mut cfg = sd(TimestepSpacing::Trailing);
    cfg.betas.rescale_betas_zero_snr = true;
    let mut s = cfg.build().unwrap();
    assert_eq!(s.noise_schedule().alphas_cumprod[999], 2f32.powi(-24));
    s.set_timesteps(25).unwrap();
    assert!((s.init_noise_sigma() - 4096.0).abs() < 1e-3);
}

#[test]
fn karras_sigmas_and_sigma_to_t() {
    let mut cfg = sd(TimestepSpacing::Linspace);
    cfg.use_karras_sigmas = true;
    let mut s = cfg.build().unwrap();
    for t in [0usize, 1, 500, 998, 999] {
        let back = s.sigma_to_t(s.train_sigmas[t] as f64);
        // ln σ is numpy's approximate f32 log, the query's log is f64.
        assert!((back - t as f64).abs() < 1e-4, "{t} -> {back}");
    }
    s.set_timesteps(10).unwrap();
    let ts = s.timesteps();
    assert!(ts.windows(2).all(|w| w[1] < w[0]));
    assert!(ts.iter().any(|t| t.fract() != 0.0));
    assert!(s.sigmas().windows(2).all(|w| w[1] < w[0]));
}

#[test]
fn churn_draws_noise_only_inside_its_window() {
    let device = Device::flex();
    let shape = [1, 1, 1, 2, 2];
    let x = Tensor::<5>::ones(shape, &device);
    let bank = || {
        NoiseBank::from_tensors((0..10).map(|_| TensorData::new(vec![0.5f32; 4], shape.to_vec())))
    };
    let run = |s: EulerDiscrete| {
        let mut s = s;
        s.set_timesteps(5).unwrap();
        let mut noise = bank();
        let mut y = x.clone();
        for t in s.timesteps().to_vec() {
            let m = s.scale_model_input(y.clone(), t).unwrap().mul_scalar(0.1);
            y = s.step(m, t, y, &mut noise).unwrap().prev_sample;
        }
        noise.drawn()
    };
    let base = sd(TimestepSpacing::Leading).build().unwrap();
    assert_eq!(run(base.clone()), 0);
    assert_eq!(run(base.clone().with_s_churn(1.0).unwrap()), 5);
    let mut probe = base.clone();
    probe.set_timesteps(5).unwrap();
    let above_one = probe.sigmas()[..5].iter().filter(|&&s| s >= 1.0).count();
    assert!((1..5).contains(&above_one));
    let windowed = base.with_s_churn(1.0).unwrap().with_s_tmin(1.0).unwrap();
    assert_eq!(run(windowed), above_one);
    // A deterministic step never touches the source.
    let mut s = sd(TimestepSpacing::Leading).build().unwrap();
    s.set_timesteps(5).unwrap();
    let t = s.timesteps()[0];
    s.step(x.clone(), t, x, &mut NoNoise).unwrap();
    assert_eq!(s.step_index(), Some(1));
}

#[test]
fn np_log_is_within_numpys_error_bound() {
    for x in [
        1e-30f32, 0.0291675, 0.5, 0.7, 0.71, 1.0, 2.0, 25.146, 4096.0,
    ] {
        let ulps = (np_log_f32(x).to_bits() as i64 - x.ln().to_bits() as i64).abs();
        assert!(ulps <= 4, "{x}: {ulps} ulps");
    }
    assert_eq!(np_log_f32(1.0), 0.0);
    assert_eq!(np_log_f32(0.0), f32::NEG_INFINITY);
    assert!(np_log_f32(-1.0).is_nan());
    let tiny = f32::from_bits(1);
    assert!((np_log_f32(tiny) - tiny.ln()).abs() < 1e-4);
}

#[test]
fn other_sigma_schedules() {
    let n = 10;
    let mut cfg = sd(TimestepSpacing::Trailing);
    cfg.use_exponential_sigmas = true;
    cfg.final_sigmas_type = FinalSigmasType::SigmaMin;
    let mut s = cfg.build().unwrap();
    s.set_timesteps(n).unwrap();
    assert_eq!(s.sigmas().len(), n + 1);
    assert_eq!(*s.sigmas().last().unwrap(), s.train_sigmas[0]);
    let ratios: Vec<f32> = s.sigmas()[..n].windows(2).map(|w| w[1] / w[0]).collect();
    assert!(ratios.iter().all(|r| (r - ratios[0]).abs() < 1e-5));

    // log_linear: n + 1 log-spaced sigmas plus the final one (diffusers' layout).
    let mut cfg = sd(TimestepSpacing::Linspace);
    cfg.interpolation_type = InterpolationType::LogLinear;
    let mut s = cfg.build().unwrap();
    s.set_timesteps(n).unwrap();
    assert_eq!(s.timesteps().len(), n);
    assert_eq!(s.sigmas().len(), n + 2);

    // Continuous timesteps (v-prediction): 0.25·ln σ.
    let mut cfg = sd(TimestepSpacing::Linspace);
    cfg.timestep_type = TimestepType::Continuous;
    cfg.prediction_type = PredictionType::VPrediction;
    let mut s = cfg.build().unwrap();
    s.set_timesteps(n).unwrap();
    let t0 = s.timesteps()[0];
    assert_eq!(t0, (0.25f32 * s.sigmas()[0].ln()) as f64);
    assert_eq!(s.index_for_timestep(t0).unwrap(), 0);
    // sigma_min / sigma_max bound the Karras schedule.
    let mut cfg = sd(TimestepSpacing::Linspace);
    cfg.use_karras_sigmas = true;
    cfg.sigma_min = Some(0.1);
    cfg.sigma_max = Some(10.0);
    let mut s = cfg.build().unwrap();
    s.set_timesteps(n).unwrap();
    assert_eq!(s.sigmas()[0], 10.0);
    assert!((s.sigmas()[n - 1] - 0.1).abs() < 1e-6);
}

#[test]
fn np_interp_matches_numpy_rules() {
    let fp = [1.0, 3.0, 7.0];
    assert_eq!(np_interp_arange(-1.0, &fp), 1.0);
    assert_eq!(np_interp_arange(0.5, &fp), 2.0);
    assert_eq!(np_interp_arange(1.0, &fp), 3.0);
    assert_eq!(np_interp_arange(1.25, &fp), 4.0);
    assert_eq!(np_interp_arange(2.0, &fp), 7.0);
    assert_eq!(np_interp_arange(5.0, &fp), 7.0);
}
