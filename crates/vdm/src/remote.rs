//! Devices on other machines through Burn's remote backend, over WebSocket: [`serve`] hosts
//! this machine's device for clients (the `vdm-serve` example), [`connect`] gives a client a
//! [`Device`] whose tensors live on such a server. A remote device is an ordinary Burn device:
//! a [`ShardedDenoiser`](vdm_core::ShardedDenoiser) (the pipeline's
//! [`with_devices`](crate::pipeline::TextToVideoPipeline::with_devices)) spreads a model over
//! several.
//!
//! WebSocket is unencrypted and this module sets no credential: serve on a trusted network
//! only. When a server goes away mid-run, the client's pending reads fail with a panic of
//! Burn's remote backend, which the sharded denoiser turns into
//! [`Error::Shard`](vdm_core::Error::Shard) naming the server: at once when the server's
//! process ends (its connection closes; tested), within about 30 s when its machine vanishes
//! (Burn's WebSocket transport sets TCP keep-alive: probes after 10 s idle, every 5 s, 4
//! unanswered drop the connection). A server process that stays alive but stops working is
//! not detected.

use std::net::TcpListener;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::time::Duration;

use burn::remote::RemoteHost;
use burn::server::{RemoteServer, WebSocketTransport};
use burn::tensor::Device;
use vdm_core::error::panic_message;
use vdm_core::{Error, Result};

/// What a user whose server does not answer should check.
const HINT: &str = "start `cargo run --release --features remote --example vdm-serve -- --port \
                    PORT` on that machine, and check the host, the port and the firewall";

/// A device served at `url` (`ws://host:port`), connected within `timeout`.
///
/// # Errors
/// [`Error::Device`] (backend `remote`) naming `url` when it is not a `ws://` address, when
/// the server refuses or does not answer within `timeout`, or when the connection fails.
pub fn connect(url: &str, timeout: Duration) -> Result<Device> {
    let error = |reason: String| Error::Device {
        backend: "remote".into(),
        reason,
        hint: HINT.into(),
    };
    if !url.starts_with("ws://") || url.len() <= "ws://".len() {
        return Err(error(format!("`{url}` is not a ws://host:port address")));
    }
    let (tx, rx) = mpsc::channel();
    let host = RemoteHost::websocket(url);
    // On its own thread, so that a server that never answers costs `timeout`, not a hang;
    // the thread ends when the connection attempt does.
    std::thread::spawn(move || {
        let outcome = catch_unwind(AssertUnwindSafe(|| Device::remote_options(&host).init()))
            .map_err(|panic| panic_message(&*panic));
        let _ = tx.send(outcome);
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(Ok(device))) => Ok(device),
        Ok(Ok(Err(e))) => Err(error(format!("{url}: {e}"))),
        Ok(Err(panic)) => Err(error(format!("{url}: {panic}"))),
        Err(_) => Err(error(format!("{url} did not answer within {timeout:?}"))),
    }
}

/// Serves `device` to remote clients on `listener` (bound by the caller, e.g. on port 0 to
/// learn the port first), blocking until the process receives Ctrl-C or `SIGTERM`.
///
/// # Errors
/// [`Error::Device`] (backend `remote server`) when serving fails.
pub fn serve(listener: TcpListener, device: Device) -> Result<()> {
    RemoteServer::new([device])
        .serve(WebSocketTransport::from_listener(listener))
        .map_err(|e| Error::Device {
            backend: "remote server".into(),
            reason: e.to_string(),
            hint: "check that the port is free".into(),
        })
}
