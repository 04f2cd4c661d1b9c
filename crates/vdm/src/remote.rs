//! Devices on other machines through Burn's remote backend, over WebSocket: [`serve`] hosts
//! this machine's device for clients (the `vdm-serve` example), [`connect`] gives a client a
//! [`Device`] whose tensors live on such a server, and [`ServerProcess`] runs a server as a
//! child process (tests, benchmarks, several servers on one machine). A remote device is an ordinary Burn device:
//! a [`ShardedDenoiser`](vdm_core::ShardedDenoiser) (the pipeline's
//! [`with_devices`](crate::pipeline::TextToVideoPipeline::with_devices)) spreads a model over
//! several.
//!
//! WebSocket is unencrypted and this module sets no credential: serve on a trusted network
//! only.
//!
//! A device from [`connect`] reaches its server through a [`ServerWatch`]: a local relay
//! whose connections vdm can close, and an HTTP probe of the server. A sharded denoiser (the
//! pipeline's `with_devices`) watches every remote shard with it ([`watch`]) while a call waits
//! on the shard. When a server goes away mid-run, the run ends with
//! [`Error::Shard`](vdm_core::Error::Shard) naming the server: at once when the server's
//! process ends (its connection closes, the client's pending read fails with a panic of
//! Burn's remote backend; tested); when its process stays alive but stops working (frozen,
//! stopped) or its machine vanishes, once a probe goes unanswered: within
//! [`WATCH_PERIOD`](vdm_core::shard::WATCH_PERIOD) + [`PROBE_TIMEOUT`] (17 s), the relay then
//! cut (tested with a stopped server).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use burn::remote::RemoteHost;
use burn::server::{RemoteServer, WebSocketTransport};
use burn::tensor::Device;
use vdm_core::error::panic_message;
use vdm_core::shard::ShardWatch;
use vdm_core::{Error, Result};

use crate::server_watch::{PROBE_TIMEOUT, ServerWatch, probe};

/// The watch of every device [`connect`] gave, for [`watch`]: each keeps its relay (and so its
/// device's connection) for the life of the process, as Burn's client keeps its own.
static WATCHES: Mutex<Vec<(Device, Arc<ServerWatch>)>> = Mutex::new(Vec::new());

/// Whether Burn's fusion wraps the remote client in this build (see [`connect`]).
const FUSION: bool = cfg!(any(feature = "wgpu", feature = "cuda"));

/// What a user whose server does not answer should check.
const HINT: &str = "start `cargo run --release --features remote --example vdm-serve -- --port \
                    PORT` on that machine, and check the host, the port and the firewall";

/// A device served at `url` (`ws://host:port`), connected within `timeout` through a
/// [`ServerWatch`] (see the [module docs](self); [`watch`] gives it).
///
/// # Errors
/// [`Error::Device`] (backend `remote`) naming `url` when it is not a `ws://` address, when
/// its host does not resolve, when the server refuses or does not answer within `timeout`
/// (its probe and Burn's handshake together), or when the connection fails; and in a build
/// with the `wgpu` or `cuda` feature, whose Burn fusion breaks the remote client (Burn 0.22:
/// the server replays the client's cached operation graphs with mismatched tensor kinds and
/// panics), before connecting: such a client would fail on its first read.
pub fn connect(url: &str, timeout: Duration) -> Result<Device> {
    let error = |reason: String| Error::Device {
        backend: "remote".into(),
        reason,
        hint: HINT.into(),
    };
    if !url.starts_with("ws://") || url.len() <= "ws://".len() {
        return Err(error(format!("`{url}` is not a ws://host:port address")));
    }
    if FUSION {
        return Err(Error::Device {
            backend: "remote".into(),
            reason: format!(
                "{url}: this build has Burn's fusion (turned on by the `wgpu` and `cuda` \
                 features), and Burn 0.22's fused remote client makes servers replay cached \
                 operation graphs with mismatched tensors (the server panics: \"Expected int \
                 handle, got float\")"
            ),
            hint: "build the client with `--features remote` and without `wgpu` / `cuda` (a \
                   server may have them: `vdm-serve --features remote,wgpu`)"
                .into(),
        });
    }
    let started = Instant::now();
    let target = resolve(url).map_err(|reason| error(format!("{url}: {reason}")))?;
    // The server answers HTTP before Burn's handshake is tried: a clear error for a port where
    // nothing (or something else) listens.
    probe(target, timeout).map_err(|reason| error(format!("{url}: {reason}")))?;
    let watch = ServerWatch::start(target, PROBE_TIMEOUT)
        .map_err(|e| error(format!("{url}: no local relay: {e}")))?;
    let (tx, rx) = mpsc::channel();
    let host = RemoteHost::websocket(&format!("ws://{}", watch.local_address()));
    // On its own thread, so that a server that never answers costs `timeout`, not a hang;
    // the thread ends when the connection attempt does.
    std::thread::spawn(move || {
        let outcome = catch_unwind(AssertUnwindSafe(|| Device::remote_options(&host).init()))
            .map_err(|panic| panic_message(&*panic));
        let _ = tx.send(outcome);
    });
    // The handshake has what the probe left of `timeout`.
    let device = match rx.recv_timeout(timeout.saturating_sub(started.elapsed())) {
        Ok(Ok(Ok(device))) => device,
        Ok(Ok(Err(e))) => return Err(error(format!("{url}: {e}"))),
        Ok(Err(panic)) => return Err(error(format!("{url}: {panic}"))),
        Err(_) => return Err(error(format!("{url} did not answer within {timeout:?}"))),
    };
    WATCHES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((device.clone(), Arc::new(watch)));
    Ok(device)
}

/// The watch of a device [`connect`] gave (its relay and probe), for
/// [`Shard::with_watch`](vdm_core::Shard::with_watch); `None` for any other device.
pub fn watch(device: &Device) -> Option<Arc<dyn ShardWatch>> {
    WATCHES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(d, _)| d == device)
        .map(|(_, w)| w.clone() as Arc<dyn ShardWatch>)
}

/// The socket address of `url`'s `host:port` (its first, when the host has several).
fn resolve(url: &str) -> std::result::Result<SocketAddr, String> {
    let authority = url["ws://".len()..].split('/').next().unwrap_or_default();
    authority
        .to_socket_addrs()
        .map_err(|e| format!("`{authority}` is not a reachable host:port ({e})"))?
        .next()
        .ok_or_else(|| format!("`{authority}` resolves to no address"))
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

/// A server in a child process of this one (tests, benchmarks, one-machine setups), killed and
/// reaped when dropped, so that none outlives its owner's failure.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    address: String,
}

impl ServerProcess {
    /// Runs `command`, a program that serves and prints a line holding its `ws://` address
    /// on stdout (as `vdm-serve` does: `serving flex on ws://127.0.0.1:PORT`), and waits at
    /// most `timeout` for that line. Its stdout is read to its end on a thread of its own;
    /// its stderr is discarded.
    ///
    /// # Errors
    /// [`Error::Device`] (backend `remote server`) when `command` does not start, or exits or
    /// stays silent for `timeout` before printing an address (then it is killed).
    pub fn spawn(mut command: Command, timeout: Duration) -> Result<Self> {
        let program = command.get_program().to_string_lossy().into_owned();
        let error = |reason: String| Error::Device {
            backend: "remote server".into(),
            reason: format!("{program}: {reason}"),
            hint: "run the server command by hand to see what it says".into(),
        };
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| error(e.to_string()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut server = Self {
            child,
            address: String::new(),
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(address) = line.split_whitespace().find(|w| w.starts_with("ws://"))
                    && !sent
                {
                    sent = tx.send(address.to_string()).is_ok();
                }
            }
        });
        server.address = rx.recv_timeout(timeout).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => error(format!("no address within {timeout:?}")),
            mpsc::RecvTimeoutError::Disconnected => error(match server.child.try_wait() {
                Ok(Some(status)) => format!("exited ({status}) before printing an address"),
                _ => "closed its stdout before printing an address".into(),
            }),
        })?;
        Ok(server)
    }

    /// The address it serves on (`ws://host:port`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Its operating-system process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
