//! The typed error shared by every vdm crate.

use thiserror::Error;

/// Result alias used across vdm.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in vdm, with the offending field, tensor or weight named.
///
/// Bad configurations, shapes and weights are reported here instead of panicking or
/// silently producing garbage.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value or call argument is out of its valid range.
    #[error("invalid `{field}`: {reason}")]
    InvalidConfig {
        /// Name of the field or parameter (as in the config file, e.g. `num_inference_steps`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A string option names a variant that does not exist.
    #[error("unknown `{field}` value {value:?}; expected one of {expected}")]
    UnknownVariant {
        /// Name of the field.
        field: String,
        /// The value that was given.
        value: String,
        /// The accepted values, comma separated.
        expected: String,
    },

    /// A tensor has the wrong rank or dimensions.
    #[error("tensor `{tensor}` has shape {actual:?}, expected {expected}")]
    Shape {
        /// Name of the tensor (argument name or layout name such as `latents`).
        tensor: String,
        /// The expected shape, described in words (e.g. `[B, C, F, H, W] with C = 4`).
        expected: String,
        /// The shape that was found.
        actual: Vec<usize>,
    },

    /// A computation would produce NaN or infinity: reported before it happens where it can be
    /// foreseen (a scheduler dividing by zero), otherwise as soon as a check sees it (the
    /// samplers' checks of model outputs and latents, the pipeline's of decoded frames; see
    /// [`crate::finite`]), naming the step, timestep and component.
    #[error("non-finite value in {what}: {reason}")]
    NonFinite {
        /// The quantity that would be non-finite.
        what: String,
        /// Why, and how to avoid it.
        reason: String,
    },

    /// A checkpoint does not match the model it is loaded into.
    #[error("checkpoint does not match the model: {}", describe_weights(.missing, .unexpected, .mismatched))]
    Weights {
        /// Keys the model needs but the file lacks.
        missing: Vec<String>,
        /// Keys in the file that the model does not use.
        unexpected: Vec<String>,
        /// Keys whose shapes differ: `(key, expected, found)`.
        mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
    },

    /// Reading, parsing or writing a file or folder failed.
    #[error("{path}: {reason}")]
    File {
        /// The file path.
        path: String,
        /// The underlying error, as text.
        reason: String,
    },

    /// A noise source ran out or was asked for a shape it cannot provide.
    #[error("noise source: {0}")]
    Noise(String),

    /// A sampling loop was cancelled by its progress callback.
    #[error("cancelled at step {step}")]
    Cancelled {
        /// The step index at which the callback asked to stop.
        step: usize,
    },

    /// The requested combination is valid in principle but not supported.
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// A compute device could not be acquired (no adapter, no driver): found by a probe before
    /// any model work (`vdm::try_device`).
    #[error("cannot use the {backend} device: {reason}; {hint}")]
    Device {
        /// The backend (`flex`, `ndarray`, `wgpu`, `cuda`).
        backend: String,
        /// What the backend reported (the first line of its panic message).
        reason: String,
        /// What to install or which feature to choose instead.
        hint: String,
    },

    /// A tensor could not be read back from its device (a GPU buffer that could not be
    /// allocated, a lost device): Burn's read-back error, in one line
    /// ([`readback`](crate::readback)).
    #[error("reading {what} back from the device failed: {reason}")]
    ReadBack {
        /// What was being read (e.g. `the latents at step 3`).
        what: String,
        /// What the backend reported.
        reason: String,
    },

    /// One shard of a model spread over several devices failed
    /// ([`ShardedDenoiser`](crate::shard::ShardedDenoiser)): its model's error, or the panic of
    /// its backend (a remote server that went away).
    #[error("shard `{shard}` failed: {reason}")]
    Shard {
        /// The shard's name (its device, e.g. `ws://10.0.0.2:3000`).
        shard: String,
        /// What went wrong there.
        reason: String,
        /// The shard model's own error, when it returned one (`None` for a panic); also
        /// [`std::error::Error::source`].
        #[source]
        source: Option<Box<Error>>,
    },
}

/// The message of a caught panic (`std::panic::catch_unwind`'s payload): its `String` or
/// `&str`, else a fixed text. For the boundaries where vdm turns a dependency's panic into an
/// [`Error`] (the device probe, the tokenizer reader) and for the fuzz harnesses.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

fn describe_weights(
    missing: &[String],
    unexpected: &[String],
    mismatched: &[(String, Vec<usize>, Vec<usize>)],
) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!(
            "{} missing [{}]",
            missing.len(),
            missing.join(", ")
        ));
    }
    if !unexpected.is_empty() {
        parts.push(format!(
            "{} unexpected [{}]",
            unexpected.len(),
            unexpected.join(", ")
        ));
    }
    if !mismatched.is_empty() {
        let list: Vec<String> = mismatched
            .iter()
            .map(|(k, e, f)| format!("{k}: expected {e:?}, found {f:?}"))
            .collect();
        parts.push(format!(
            "{} mis-shaped [{}]",
            mismatched.len(),
            list.join(", ")
        ));
    }
    parts.join("; ")
}

impl Error {
    /// Shorthand for [`Error::InvalidConfig`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::UnknownVariant`].
    pub fn unknown_variant(
        field: impl Into<String>,
        value: impl Into<String>,
        expected: &[&str],
    ) -> Self {
        Error::UnknownVariant {
            field: field.into(),
            value: value.into(),
            expected: expected.join(", "),
        }
    }

    /// Shorthand for [`Error::Shape`].
    pub fn shape(tensor: impl Into<String>, expected: impl Into<String>, actual: &[usize]) -> Self {
        Error::Shape {
            tensor: tensor.into(),
            expected: expected.into(),
            actual: actual.to_vec(),
        }
    }
}

/// Checks that `value` is finite, naming `field` otherwise.
pub fn ensure_finite(field: &str, value: f64) -> Result<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(Error::invalid(
            field,
            format!("must be finite, got {value}"),
        ))
    }
}

/// Checks that `value` is finite and strictly positive, naming `field` otherwise.
pub fn ensure_positive(field: &str, value: f64) -> Result<f64> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(Error::invalid(
            field,
            format!("must be a finite number > 0, got {value}"),
        ))
    }
}

/// Checks that `value` is finite and `>= 0`, naming `field` otherwise.
pub fn ensure_non_negative(field: &str, value: f64) -> Result<f64> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(Error::invalid(
            field,
            format!("must be a finite number >= 0, got {value}"),
        ))
    }
}
