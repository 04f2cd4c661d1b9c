//! Scheduler configs whose missing keys take the scheduler's own defaults, as diffusers'
//! `register_to_config` fills them (the `Serialize` / `Deserialize` glue of the configs that
//! flatten shared sub-configs).

use serde::Serialize;

/// The given config keys laid over the serialized `defaults`.
///
/// `#[serde(default)]` alone would fill a missing key of a `#[serde(flatten)]`ed sub-config
/// (`clip_sample`, `beta_schedule`, …) from the sub-config's own `Default`, not from the
/// scheduler's (DDIM / DDPM: `clip_sample = true`; LCM: `scaled_linear` betas).
pub(crate) fn over_defaults<T: Serialize, E: serde::de::Error>(
    defaults: &T,
    given: serde_json::Map<String, serde_json::Value>,
) -> std::result::Result<serde_json::Value, E> {
    let mut merged = match serde_json::to_value(defaults).map_err(E::custom)? {
        serde_json::Value::Object(map) => map,
        other => return Err(E::custom(format!("config serialized to {other}"))),
    };
    merged.extend(given);
    Ok(serde_json::Value::Object(merged))
}

/// Implements `Serialize` / `Deserialize` for a scheduler config declared with
/// `#[serde(default, remote = "Self")]`, so that missing keys take the scheduler's own defaults
/// (see [`over_defaults`]).
macro_rules! serde_over_defaults {
    ($ty:ident) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(
                &self,
                serializer: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                $ty::serialize(self, serializer)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(
                deserializer: D,
            ) -> std::result::Result<Self, D::Error> {
                let given = <serde_json::Map<String, serde_json::Value> as serde::Deserialize>::deserialize(deserializer)?;
                let merged = $crate::serde_defaults::over_defaults(&Self::default(), given)?;
                $ty::deserialize(merged).map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_over_defaults;
