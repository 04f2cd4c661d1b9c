//! Device lists written as text, as `generate --devices` takes them: `flex`, `ndarray`,
//! `wgpu` (the best adapter) or `wgpu:N` (discrete GPU `N`), `cuda:N`, and `ws://host:port`
//! (a `vdm-serve` server, with the `remote` feature). Every device is probed before any model
//! work ([`probe_device`](crate::probe_device); remote ones by their connection handshake), so
//! a missing driver, feature or server is a typed error naming the entry.

use std::time::Duration;

use burn::tensor::Device;
use vdm_core::{Error, Result};

use crate::backend::probe_device;

/// How long [`parse_devices`] waits for a remote server to answer by default.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// The devices of a comma-separated list (see the [module docs](self)), each with its entry as
/// its name; remote ones wait at most `connect_timeout` for their server.
///
/// # Errors
/// [`Error::InvalidConfig`] (`devices`) for an empty list, a repeated entry, an unknown entry
/// or one whose backend feature is not enabled; [`Error::Device`] for a device that does not
/// start or a server that does not answer.
pub fn parse_devices(list: &str, connect_timeout: Duration) -> Result<Vec<(String, Device)>> {
    let entries: Vec<&str> = list.split(',').map(str::trim).collect();
    if entries.iter().any(|e| e.is_empty()) {
        return Err(invalid(format!("`{list}` has an empty entry")));
    }
    // The whole list is checked before any device is probed (a remote one costs a handshake).
    if let Some((_, entry)) = entries
        .iter()
        .enumerate()
        .find(|(i, e)| entries[..*i].contains(e))
    {
        return Err(invalid(format!(
            "`{entry}` is listed twice (a device holds one replica)"
        )));
    }
    entries
        .into_iter()
        .map(|entry| Ok((entry.to_string(), parse_device(entry, connect_timeout)?)))
        .collect()
}

/// The device of one entry of [`parse_devices`]' list, probed.
///
/// # Errors
/// As [`parse_devices`].
pub fn parse_device(entry: &str, connect_timeout: Duration) -> Result<Device> {
    let (backend, index) = match entry.split_once(':') {
        Some((b, i)) if !entry.contains("://") => (b, Some(i)),
        _ => (entry, None),
    };
    let index = index
        .map(|i| {
            i.parse::<usize>()
                .map_err(|_| invalid(format!("`{entry}`: `{i}` is not a device index")))
        })
        .transpose()?;
    // Unused where every backend feature is enabled.
    #[allow(unused_variables)]
    let unsupported = |feature: &str| {
        invalid(format!(
            "`{entry}` needs vdm's `{feature}` feature (e.g. `--features {feature}`)"
        ))
    };
    let no_index = |device: fn() -> Device| match index {
        None => Ok(device),
        Some(_) => Err(invalid(format!("`{backend}` takes no device index"))),
    };
    #[cfg(not(feature = "remote"))]
    let _ = connect_timeout;
    match backend {
        "flex" => {
            #[cfg(feature = "flex")]
            return probe_device("flex", no_index(Device::flex)?);
            #[cfg(not(feature = "flex"))]
            return Err(unsupported("flex"));
        }
        "ndarray" => {
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            return probe_device("ndarray", no_index(Device::ndarray)?);
            #[cfg(not(feature = "ndarray"))]
            return Err(unsupported("ndarray"));
        }
        "wgpu" => {
            #[cfg(feature = "wgpu")]
            return probe_device("wgpu", || {
                Device::wgpu(match index {
                    Some(i) => burn::tensor::DeviceKind::DiscreteGpu(i),
                    None => burn::tensor::DeviceKind::DefaultDevice,
                })
            });
            #[cfg(not(feature = "wgpu"))]
            return Err(unsupported("wgpu"));
        }
        "cuda" => {
            #[cfg(feature = "cuda")]
            return probe_device("cuda", || Device::cuda(index.unwrap_or(0)));
            #[cfg(not(feature = "cuda"))]
            return Err(unsupported("cuda"));
        }
        url if url.starts_with("ws://") => {
            #[cfg(feature = "remote")]
            return crate::remote::connect(url, connect_timeout);
            #[cfg(not(feature = "remote"))]
            return Err(unsupported("remote"));
        }
        _ => Err(invalid(format!(
            "unknown device `{entry}`; expected flex, ndarray, wgpu, wgpu:N, cuda:N or \
             ws://host:port"
        ))),
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidConfig {
        field: "devices".into(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_entries_give_probed_devices_named_by_their_entry() {
        let devices = parse_devices("flex", CONNECT_TIMEOUT).unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].0, "flex");
        assert_eq!(devices[0].1, Device::flex());
    }

    #[test]
    fn bad_lists_are_errors_naming_the_entry() {
        for (list, needle) in [
            ("", "empty entry"),
            ("flex,,flex", "empty entry"),
            ("flex, flex", "listed twice"),
            // Repeats are found before any entry is probed or connected to.
            ("tpu, tpu", "listed twice"),
            ("ws://127.0.0.1:1,ws://127.0.0.1:1", "listed twice"),
            ("tpu", "unknown device `tpu`"),
            ("cuda:x", "`x` is not a device index"),
            ("flex:1", "takes no device index"),
        ] {
            let err = parse_devices(list, CONNECT_TIMEOUT).unwrap_err();
            let message = err.to_string();
            assert!(message.contains("devices"), "{list}: {message}");
            assert!(message.contains(needle), "{list}: {message}");
        }
    }

    #[cfg(not(feature = "remote"))]
    #[test]
    fn a_remote_entry_without_the_feature_names_it() {
        let err = parse_devices("ws://127.0.0.1:1", CONNECT_TIMEOUT).unwrap_err();
        assert!(err.to_string().contains("`remote` feature"), "{err}");
    }
}
