//! The string options of diffusers scheduler configs, as typed enums.
//!
//! Each enum parses the exact diffusers string and rejects anything else with an
//! [`Error::UnknownVariant`] that names the config field.

use vdm_core::{Error, Result};

macro_rules! string_option {
    (
        $(#[$meta:meta])*
        $name:ident, field = $field:literal, default = $default:ident,
        { $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// The config field this option is read from.
            pub const FIELD: &'static str = $field;
            /// Every accepted string, in declaration order.
            pub const VARIANTS: &'static [&'static str] = &[$($text),+];

            /// The diffusers config string.
            pub fn as_str(&self) -> &'static str {
                match self { $( Self::$variant => $text, )+ }
            }

            /// Parses the diffusers config string.
            pub fn parse(value: &str) -> Result<Self> {
                match value {
                    $( $text => Ok(Self::$variant), )+
                    other => Err(Error::unknown_variant($field, other, Self::VARIANTS)),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        const _: () = { let _ = $name::$default; };
    };
}

string_option! {
    /// How betas are laid out over the training timesteps (`beta_schedule`).
    BetaSchedule, field = "beta_schedule", default = Linear, {
        /// `linspace(beta_start, beta_end, T)`.
        #[default]
        Linear = "linear",
        /// `linspace(sqrt(beta_start), sqrt(beta_end), T)²` (Stable Diffusion; "linear" in LDM code).
        ScaledLinear = "scaled_linear",
        /// The cosine schedule of Nichol & Dhariwal (2021), betas capped at 0.999.
        SquaredcosCapV2 = "squaredcos_cap_v2",
        /// `sigmoid(linspace(-6, 6, T))·(beta_end − beta_start) + beta_start`.
        Sigmoid = "sigmoid",
    }
}

string_option! {
    /// How inference timesteps are picked from the training timesteps (`timestep_spacing`),
    /// see table 2 of Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps
    /// are Flawed".
    TimestepSpacing, field = "timestep_spacing", default = Leading, {
        /// `arange(N)·(T//N)` reversed, plus `steps_offset`.
        #[default]
        Leading = "leading",
        /// `round(arange(T, 0, −T/N)) − 1`: always includes `T − 1`.
        Trailing = "trailing",
        /// `round(linspace(0, T − 1, N))` reversed.
        Linspace = "linspace",
    }
}

string_option! {
    /// DDPM posterior variance (`variance_type`).
    VarianceType, field = "variance_type", default = FixedSmall, {
        /// `β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t`, clamped at 1e-20.
        #[default]
        FixedSmall = "fixed_small",
        /// `exp(½ log β̃_t)` as the standard deviation.
        FixedSmallLog = "fixed_small_log",
        /// `β_t`.
        FixedLarge = "fixed_large",
        /// `log β_t` as the log-variance.
        FixedLargeLog = "fixed_large_log",
        /// The model predicts the variance in its extra channels (output `[B, 2C, ...]`).
        Learned = "learned",
        /// The model predicts an interpolation frac between log β̃_t and log β_t.
        LearnedRange = "learned_range",
    }
}

string_option! {
    /// DPM-Solver algorithm (`algorithm_type`).
    AlgorithmType, field = "algorithm_type", default = DpmSolverPlusPlus, {
        /// Data-prediction multistep solver (Lu et al. 2022b), the diffusers default.
        #[default]
        DpmSolverPlusPlus = "dpmsolver++",
        /// Stochastic data-prediction solver.
        SdeDpmSolverPlusPlus = "sde-dpmsolver++",
        /// Noise-prediction multistep solver (Lu et al. 2022a).
        DpmSolver = "dpmsolver",
        /// Stochastic noise-prediction solver.
        SdeDpmSolver = "sde-dpmsolver",
    }
}

string_option! {
    /// Second-order update of DPM-Solver (`solver_type`).
    SolverType, field = "solver_type", default = Midpoint, {
        /// Midpoint rule (the default).
        #[default]
        Midpoint = "midpoint",
        /// Heun's rule.
        Heun = "heun",
    }
}

string_option! {
    /// The sigma appended after the last inference step (`final_sigmas_type`).
    FinalSigmasType, field = "final_sigmas_type", default = Zero, {
        /// σ = 0: the last step lands on the clean sample.
        #[default]
        Zero = "zero",
        /// The training schedule's smallest sigma.
        SigmaMin = "sigma_min",
    }
}

string_option! {
    /// How Euler interpolates sigmas between training timesteps (`interpolation_type`).
    InterpolationType, field = "interpolation_type", default = Linear, {
        /// Linear interpolation in sigma (`np.interp`).
        #[default]
        Linear = "linear",
        /// Log-linear interpolation.
        LogLinear = "log_linear",
    }
}

string_option! {
    /// How Euler feeds timesteps to the model (`timestep_type`).
    TimestepType, field = "timestep_type", default = Discrete, {
        /// Training-timestep values.
        #[default]
        Discrete = "discrete",
        /// `0.25·log σ` (EDM-style continuous time).
        Continuous = "continuous",
    }
}
