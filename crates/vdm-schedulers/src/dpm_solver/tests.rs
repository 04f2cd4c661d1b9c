//! Tests of the multistep DPM-Solver: configuration checks, reference timesteps and sigma
//! schedules, the JSON round trip, independent clones and the order-1 variants.

use super::*;
use crate::options::{AlgorithmType, SolverType};
use crate::schedule::BetaConfig;
use burn::tensor::{Device, TensorData};
use vdm_core::noise::{NoNoise, SeededNoise};

fn field_of(err: Error) -> String {
    match err {
        Error::InvalidConfig { field, .. } | Error::UnknownVariant { field, .. } => field,
        Error::Unsupported(msg) => msg,
        other => panic!("unexpected error {other}"),
    }
}

fn sd() -> DpmSolverMultistepConfig {
    DpmSolverMultistepConfig {
        betas: BetaConfig::sd(BetaSchedule::ScaledLinear),
        ..DpmSolverMultistepConfig::default()
    }
}

fn tensor(values: &[f32]) -> Tensor<5> {
    Tensor::from_data(
        TensorData::new(values.to_vec(), [1, 1, 1, 1, values.len()]),
        &Device::flex(),
    )
}

fn host(t: &Tensor<5>) -> Vec<f32> {
    t.to_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// A stand-in model: `0.1·x + t/1000 + offset`.
fn model(x: &Tensor<5>, t: f64, offset: f32) -> Tensor<5> {
    x.clone()
        .mul_scalar(0.1)
        .add_scalar((t / 1000.0) as f32 + offset)
}

#[test]
fn bad_configs_name_the_field() {
    let cases: Vec<(DpmSolverMultistepConfig, &str)> = vec![
        (
            DpmSolverMultistepConfig {
                solver_order: 0,
                ..sd()
            },
            "solver_order",
        ),
        (
            DpmSolverMultistepConfig {
                solver_order: 4,
                ..sd()
            },
            "solver_order",
        ),
        (
            DpmSolverMultistepConfig {
                dynamic_thresholding_ratio: 1.5,
                ..sd()
            },
            "dynamic_thresholding_ratio",
        ),
        (
            DpmSolverMultistepConfig {
                sample_max_value: -1.0,
                ..sd()
            },
            "sample_max_value",
        ),
        (
            DpmSolverMultistepConfig {
                lambda_min_clipped: f64::NAN,
                ..sd()
            },
            "lambda_min_clipped",
        ),
        (
            DpmSolverMultistepConfig {
                flow_shift: 0.0,
                ..sd()
            },
            "flow_shift",
        ),
        (
            DpmSolverMultistepConfig {
                algorithm_type: AlgorithmType::DpmSolver,
                ..sd()
            },
            "final_sigmas_type",
        ),
        (
            DpmSolverMultistepConfig {
                use_karras_sigmas: true,
                use_exponential_sigmas: true,
                ..sd()
            },
            "use_exponential_sigmas",
        ),
        (
            DpmSolverMultistepConfig {
                use_karras_sigmas: true,
                use_lu_lambdas: true,
                ..sd()
            },
            "use_lu_lambdas",
        ),
        (
            DpmSolverMultistepConfig {
                use_karras_sigmas: true,
                use_beta_sigmas: true,
                ..sd()
            },
            "use_beta_sigmas",
        ),
        (
            DpmSolverMultistepConfig {
                use_flow_sigmas: true,
                ..sd()
            },
            "use_flow_sigmas",
        ),
        (
            DpmSolverMultistepConfig {
                use_dynamic_shifting: true,
                ..sd()
            },
            "use_dynamic_shifting",
        ),
        (
            DpmSolverMultistepConfig {
                variance_type: Some("learned".into()),
                ..sd()
            },
            "variance_type",
        ),
        (
            DpmSolverMultistepConfig {
                variance_type: Some("fixed".into()),
                ..sd()
            },
            "variance_type",
        ),
        (
            DpmSolverMultistepConfig {
                time_shift_type: "linear".into(),
                ..sd()
            },
            "time_shift_type",
        ),
        (
            DpmSolverMultistepConfig {
                betas: BetaConfig::sd(BetaSchedule::Sigmoid),
                ..sd()
            },
            "beta_schedule",
        ),
        (
            DpmSolverMultistepConfig {
                betas: BetaConfig {
                    beta_end: f64::NAN,
                    ..BetaConfig::default()
                },
                ..sd()
            },
            "beta_end",
        ),
        (
            DpmSolverMultistepConfig {
                algorithm_type: AlgorithmType::SdeDpmSolver,
                final_sigmas_type: FinalSigmasType::SigmaMin,
                solver_order: 3,
                ..sd()
            },
            "solver_order",
        ),
    ];
    for (cfg, field) in cases {
        let err = cfg.build().expect_err(field);
        let named = field_of(err);
        assert!(
            named.contains(field),
            "expected `{field}` to be named, got {named:?}"
        );
    }
}

#[test]
fn bad_step_counts_and_timesteps_name_the_field() {
    let mut s = sd().build().unwrap();
    assert_eq!(
        field_of(s.set_timesteps(0).unwrap_err()),
        "num_inference_steps"
    );
    assert_eq!(
        field_of(s.set_timesteps(1001).unwrap_err()),
        "num_inference_steps"
    );
    let mut lead = DpmSolverMultistepConfig {
        timestep_spacing: TimestepSpacing::Leading,
        ..sd()
    }
    .build()
    .unwrap();
    assert_eq!(
        field_of(lead.set_timesteps(1000).unwrap_err()),
        "num_inference_steps"
    );

    let x = tensor(&[0.5, -0.5]);
    // Before set_timesteps.
    assert!(s.add_noise(x.clone(), x.clone(), 999.0).is_err());
    s.set_timesteps(10).unwrap();
    let t0 = s.timesteps()[0];
    assert_eq!(
        field_of(s.add_noise(x.clone(), x.clone(), 501.0).unwrap_err()),
        "timestep"
    );
    assert_eq!(
        field_of(s.add_noise(x.clone(), x.clone(), t0 + 0.5).unwrap_err()),
        "timestep"
    );
    s.step(x.clone(), t0, x.clone(), &mut NoNoise).unwrap();
    // The next step must be at the next timestep of the schedule.
    assert_eq!(
        field_of(s.step(x.clone(), t0, x.clone(), &mut NoNoise).unwrap_err()),
        "timestep"
    );
    let wrong_shape = tensor(&[0.5, -0.5, 1.0]);
    assert!(
        s.step(wrong_shape, s.timesteps()[1], x, &mut NoNoise)
            .is_err()
    );
}

#[test]
fn reference_timesteps() {
    // shared/oracle gotcha 7: leading uses T // (n + 1) and drops the last point.
    let mut s = DpmSolverMultistepConfig {
        timestep_spacing: TimestepSpacing::Leading,
        steps_offset: 1,
        ..sd()
    }
    .build()
    .unwrap();
    s.set_timesteps(10).unwrap();
    assert_eq!(
        s.timesteps(),
        [901., 811., 721., 631., 541., 451., 361., 271., 181., 91.]
    );
    assert_eq!(s.sigmas().len(), 11);
    assert_eq!(s.sigmas()[10], 0.0);
    // Trailing with an inexact T/N: numpy's extra element (timestep −1) is dropped.
    let mut s = DpmSolverMultistepConfig {
        timestep_spacing: TimestepSpacing::Trailing,
        ..sd()
    }
    .build()
    .unwrap();
    s.set_timesteps(227).unwrap();
    assert_eq!(s.timesteps().len(), 227);
    assert_eq!(s.timesteps()[0], 999.0);
    assert!(s.timesteps().iter().all(|&t| t >= 0.0));
    // lambda_min_clipped shortens the usable range (linspace stops below the clipped end).
    let mut s = DpmSolverMultistepConfig {
        betas: BetaConfig {
            beta_schedule: BetaSchedule::SquaredcosCapV2,
            ..BetaConfig::default()
        },
        lambda_min_clipped: -5.1,
        ..DpmSolverMultistepConfig::default()
    }
    .build()
    .unwrap();
    s.set_timesteps(20).unwrap();
    assert!(s.timesteps()[0] < 999.0);
}

#[test]
fn custom_sigma_schedules_are_monotone() {
    for (karras, lu, exponential) in [
        (true, false, false),
        (false, true, false),
        (false, false, true),
    ] {
        let mut s = DpmSolverMultistepConfig {
            use_karras_sigmas: karras,
            use_lu_lambdas: lu,
            use_exponential_sigmas: exponential,
            ..sd()
        }
        .build()
        .unwrap();
        s.set_timesteps(20).unwrap();
        let sig = s.sigmas();
        assert_eq!(sig.len(), 21);
        assert!(sig.windows(2).all(|w| w[1] < w[0]), "{sig:?}");
        assert!((sig[0] - s.train_sigmas[999]).abs() / sig[0] < 1e-6);
        assert!((sig[19] - s.train_sigmas[0]).abs() / sig[19] < 1e-5);
        let ts = s.timesteps();
        assert!(ts.windows(2).all(|w| w[1] <= w[0]), "{ts:?}");
        assert!(ts[0] >= 998.0 && ts[19] <= 1.0, "{ts:?}");
    }
}

#[test]
fn config_json_round_trip() {
    let cfg: DpmSolverMultistepConfig = serde_json::from_str(
        r#"{"lambda_min_clipped": "-inf", "solver_order": 3, "algorithm_type": "sde-dpmsolver++",
            "variance_type": null, "beta_schedule": "scaled_linear"}"#,
    )
    .unwrap();
    assert_eq!(cfg.lambda_min_clipped, f64::NEG_INFINITY);
    assert_eq!(cfg.solver_order, 3);
    let back: DpmSolverMultistepConfig =
        serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
    let clipped: DpmSolverMultistepConfig =
        serde_json::from_str(r#"{"lambda_min_clipped": -5.1}"#).unwrap();
    assert_eq!(clipped.lambda_min_clipped, -5.1);
    assert!(serde_json::from_str::<DpmSolverMultistepConfig>(r#"{"solver_type": "bh2"}"#).is_err());
}

/// Cloning per frame window: two clones stepped independently (interleaved) give exactly
/// what one scheduler gives when it is stepped alone.
#[test]
fn clones_keep_independent_state() {
    for order in 1..=3 {
        let mut base = DpmSolverMultistepConfig {
            solver_order: order,
            ..sd()
        }
        .build()
        .unwrap();
        base.set_timesteps(12).unwrap();
        let mut solo = base.clone();
        let mut a = base.clone();
        let mut b = base.clone();
        let init_a = tensor(&[0.3, -1.2, 0.7, 2.0]);
        let init_b = tensor(&[-0.9, 0.1, 1.5, -0.4]);
        let (mut xs, mut xa, mut xb) = (init_a.clone(), init_a, init_b);
        for t in base.timesteps().to_vec() {
            xa = a
                .step(model(&xa, t, 0.2), t, xa, &mut NoNoise)
                .unwrap()
                .prev_sample;
            xb = b
                .step(model(&xb, t, -0.3), t, xb, &mut NoNoise)
                .unwrap()
                .prev_sample;
            xs = solo
                .step(model(&xs, t, 0.2), t, xs, &mut NoNoise)
                .unwrap()
                .prev_sample;
            assert_eq!(host(&xa), host(&xs), "order {order}, t = {t}");
        }
        assert_ne!(host(&xa), host(&xb));
        assert_eq!(a.lower_order_nums(), order);
        assert_eq!(a.step_index(), Some(12));
        // The original was never stepped.
        assert_eq!(base.step_index(), None);
    }
}

/// With a constant data prediction `x̂₀ = c` every DPM-Solver++ update is exact, so the
/// last step (to σ = 0) lands on `c` whatever the order, rule or noise.
#[test]
fn constant_data_prediction_lands_on_it() {
    let c = [0.25f32, -0.5, 1.0, 0.0];
    for algorithm_type in [
        AlgorithmType::DpmSolverPlusPlus,
        AlgorithmType::SdeDpmSolverPlusPlus,
    ] {
        for solver_type in [SolverType::Midpoint, SolverType::Heun] {
            for solver_order in 1..=3 {
                let mut s = DpmSolverMultistepConfig {
                    algorithm_type,
                    solver_type,
                    solver_order,
                    prediction_type: PredictionType::Sample,
                    ..sd()
                }
                .build()
                .unwrap();
                s.set_timesteps(20).unwrap();
                let mut noise = SeededNoise::new(7);
                let mut x = tensor(&[1.0, -2.0, 0.5, 0.3]);
                for t in s.timesteps().to_vec() {
                    x = s.step(tensor(&c), t, x, &mut noise).unwrap().prev_sample;
                }
                let out = host(&x);
                for (o, e) in out.iter().zip(c) {
                    assert!(
                        (o - e).abs() < 1e-5,
                        "{algorithm_type} {solver_type} {solver_order}: {out:?}"
                    );
                }
            }
        }
    }
}

/// DPM-Solver (noise prediction) and DPM-Solver++ (data prediction) are both DDIM at first
/// order; their trajectories agree up to float rounding, and the SDE variants draw one
/// noise tensor per step.
#[test]
fn first_order_variants_agree_and_sde_draws_each_step() {
    let run = |algorithm_type, noise: &mut dyn NoiseSource| {
        let mut s = DpmSolverMultistepConfig {
            algorithm_type,
            solver_order: 1,
            final_sigmas_type: FinalSigmasType::SigmaMin,
            ..sd()
        }
        .build()
        .unwrap();
        s.set_timesteps(15).unwrap();
        let mut x = tensor(&[1.0, -2.0, 0.5, 0.3]);
        for t in s.timesteps().to_vec() {
            x = s.step(model(&x, t, 0.1), t, x, noise).unwrap().prev_sample;
        }
        host(&x)
    };
    let pp = run(AlgorithmType::DpmSolverPlusPlus, &mut NoNoise);
    let eps = run(AlgorithmType::DpmSolver, &mut NoNoise);
    for (a, b) in pp.iter().zip(&eps) {
        assert!((a - b).abs() < 1e-4, "{pp:?} vs {eps:?}");
    }
    for sde in [
        AlgorithmType::SdeDpmSolverPlusPlus,
        AlgorithmType::SdeDpmSolver,
    ] {
        let mut bank = vdm_core::noise::NoiseBank::new();
        for _ in 0..15 {
            bank.push_tensor(TensorData::new(vec![0.0f32; 4], [1, 1, 1, 1, 4]));
        }
        let out = run(sde, &mut bank);
        assert_eq!(bank.drawn(), 15);
        assert!(out.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn zero_snr_patches_the_last_alpha() {
    let mut s = DpmSolverMultistepConfig {
        betas: BetaConfig {
            rescale_betas_zero_snr: true,
            ..BetaConfig::sd(BetaSchedule::ScaledLinear)
        },
        timestep_spacing: TimestepSpacing::Trailing,
        ..DpmSolverMultistepConfig::default()
    }
    .build()
    .unwrap();
    assert_eq!(s.noise_schedule().alphas_cumprod[999], 2f32.powi(-24));
    s.set_timesteps(25).unwrap();
    assert!((s.sigmas()[0] - 4096.0).abs() < 1e-3);
}
