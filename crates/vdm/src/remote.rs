//! Devices on other machines through Burn's remote backend, over WebSocket: [`serve`] hosts
//! this machine's device for clients (the `vdm-serve` example), [`connect`] gives a client a
//! [`Device`] whose tensors live on such a server, and [`ServerProcess`] runs a server as a
//! child process (tests, benchmarks, several servers on one machine). A remote device is an ordinary Burn device:
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

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use burn::remote::RemoteHost;
use burn::server::{RemoteServer, WebSocketTransport};
use burn::tensor::Device;
use vdm_core::error::panic_message;
use vdm_core::{Error, Result};

/// Whether Burn's fusion wraps the remote client in this build (see [`connect`]).
const FUSION: bool = cfg!(any(feature = "wgpu", feature = "cuda"));

/// What a user whose server does not answer should check.
const HINT: &str = "start `cargo run --release --features remote --example vdm-serve -- --port \
                    PORT` on that machine, and check the host, the port and the firewall";

/// A device served at `url` (`ws://host:port`), connected within `timeout`.
///
/// # Errors
/// [`Error::Device`] (backend `remote`) naming `url` when it is not a `ws://` address, when
/// the server refuses or does not answer within `timeout`, or when the connection fails; and
/// in a build with the `wgpu` or `cuda` feature, whose Burn fusion breaks the remote client
/// (Burn 0.22: the server replays the client's cached operation graphs with mismatched tensor
/// kinds and panics), before connecting: such a client would fail on its first read.
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
