//! How a remote server that stops answering is noticed and cut off: a local TCP relay between
//! Burn's remote client and the server, whose connections vdm can close, and an HTTP probe of
//! the server ([`ServerWatch`], a [`ShardWatch`]).
//!
//! Why: a server process that stays alive but stops working (frozen, stopped with `SIGSTOP`,
//! deadlocked) keeps its connections open and its kernel keeps answering TCP keep-alive, so
//! Burn's client waits on its read forever. A probe tells such a server from a busy one: Burn's
//! server (axum, the remote backend's WebSocket transport) answers any HTTP request on its
//! port, here `404` for a path it does not route, from its network threads, while its model
//! work runs on a thread of its own; a frozen process answers nothing. The relay gives vdm the
//! client's end of the line: Burn's client connects to the relay, which forwards every
//! connection to the server; [`ShardWatch::cut`] closes them all, the blocked read fails (as
//! when a server's process ends) and the sharded call ends with an error naming the server.
//!
//! Hand-written on `std::net` (threads copying bytes) rather than a proxy crate: the relay is
//! a plain byte pipe whose one extra feature is closing its connections on demand, and the
//! threads it uses are few (two per connection; Burn's client opens two per server).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vdm_core::shard::ShardWatch;

/// How long [`ServerWatch`] waits for a server to answer a probe (connect, send, first byte of
/// the answer) before it counts the server as stopped: far above a working server's
/// milliseconds, even one whose cores are all busy with model work.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// Whether the HTTP server at `target` answers within `timeout`: connects, sends a `GET` of a
/// path no server routes, and waits for the first byte of any answer.
///
/// # Errors
/// Why not, in words: no connection, a connection closed without an answer, or no answer
/// within `timeout`.
pub fn probe(target: SocketAddr, timeout: Duration) -> Result<(), String> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&target, timeout)
        .map_err(|e| format!("no connection to {target}: {e}"))?;
    // What the connection left of `timeout` bounds the request and its answer (at least 1 ms:
    // a zero socket timeout is refused).
    let left = timeout
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(1));
    let silent = |e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("did not answer an HTTP probe within {timeout:?}")
        }
        _ => format!("the probe's connection failed: {e}"),
    };
    stream
        .set_read_timeout(Some(left))
        .and_then(|()| stream.set_write_timeout(Some(left)))
        .map_err(silent)?;
    let request =
        format!("GET /vdm-liveness-probe HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(silent)?;
    match stream.read(&mut [0u8; 1]) {
        Ok(0) => Err("closed the probe's connection without an answer".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(silent(e)),
    }
}

/// A relay to one server, and its probe (see the [module docs](self)): clients connect to
/// [`local_address`](Self::local_address) instead of the server.
///
/// Dropping it stops the relay and closes its connections.
#[derive(Debug)]
pub struct ServerWatch {
    target: SocketAddr,
    local: SocketAddr,
    probe_timeout: Duration,
    lines: Arc<Lines>,
}

/// The relay's open connections (each the client's and the server's stream), and whether it
/// was cut or stopped.
#[derive(Debug, Default)]
struct Lines {
    cut: AtomicBool,
    stopped: AtomicBool,
    next: AtomicU64,
    open: Mutex<HashMap<u64, [TcpStream; 2]>>,
}

impl Lines {
    /// Closes both streams of every open connection: the copying threads end, and so do the
    /// reads of whoever holds the other ends.
    fn close_all(&self) {
        let open = std::mem::take(&mut *self.open.lock().unwrap_or_else(|p| p.into_inner()));
        for stream in open.values().flatten() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl ServerWatch {
    /// A relay on a free loopback port to the server at `target`, whose probes wait at most
    /// `probe_timeout`.
    ///
    /// # Errors
    /// When no loopback port can be bound or its thread cannot start.
    pub fn start(target: SocketAddr, probe_timeout: Duration) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let local = listener.local_addr()?;
        let lines = Arc::new(Lines::default());
        let relay = lines.clone();
        std::thread::Builder::new()
            .name(format!("vdm relay to {target}"))
            .spawn(move || accept(&listener, target, probe_timeout, &relay))?;
        Ok(Self {
            target,
            local,
            probe_timeout,
            lines,
        })
    }

    /// Where clients connect to reach the server through the relay (`127.0.0.1:PORT`).
    pub fn local_address(&self) -> SocketAddr {
        self.local
    }

    /// The server's address.
    pub fn target(&self) -> SocketAddr {
        self.target
    }
}

impl ShardWatch for ServerWatch {
    /// [`probe`]s the server.
    fn check(&self) -> Result<(), String> {
        probe(self.target, self.probe_timeout)
    }

    /// Closes every relayed connection; the relay closes new ones at once from then on.
    fn cut(&self) {
        self.lines.cut.store(true, Ordering::SeqCst);
        self.lines.close_all();
    }
}

impl Drop for ServerWatch {
    fn drop(&mut self) {
        self.lines.stopped.store(true, Ordering::SeqCst);
        self.lines.close_all();
        // Wakes the accepting thread, which sees `stopped` and ends.
        let _ = TcpStream::connect_timeout(&self.local, Duration::from_secs(1));
    }
}

/// The relay's accepting loop: each client connection is forwarded to `target` until either
/// side closes it or it is cut.
fn accept(listener: &TcpListener, target: SocketAddr, timeout: Duration, lines: &Arc<Lines>) {
    for client in listener.incoming() {
        if lines.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if lines.cut.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&target, timeout) else {
            // The client sees its connection closed, as it would have seen it refused.
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        // Burn's messages are small and latency-bound (a step's operations, then a read).
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(client_read), Ok(server_read), Ok(client_kept), Ok(server_kept)) = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        let id = lines.next.fetch_add(1, Ordering::SeqCst);
        lines
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, [client_kept, server_kept]);
        // A cut between the check above and the insertion closes this line too.
        if lines.cut.load(Ordering::SeqCst) {
            lines.close_all();
            continue;
        }
        for (from, to) in [(client_read, server), (server_read, client)] {
            let lines = lines.clone();
            let _ = std::thread::Builder::new()
                .name("vdm relay line".into())
                .spawn(move || pump(from, to, id, &lines));
        }
    }
}

/// Copies `from` to `to` until either ends, then closes both (so the other direction ends too)
/// and forgets the connection.
fn pump(mut from: TcpStream, mut to: TcpStream, id: u64, lines: &Lines) {
    let _ = io::copy(&mut from, &mut to);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    lines
        .open
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server echoing every connection's bytes back, on a thread of its own.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut read = stream.try_clone().unwrap();
                    let mut write = stream;
                    let _ = io::copy(&mut read, &mut write);
                });
            }
        });
        address
    }

    /// A connection to `watch`'s relay, its reads bounded by `limit`.
    fn client(watch: &ServerWatch, limit: Duration) -> TcpStream {
        let stream = TcpStream::connect(watch.local_address()).unwrap();
        stream.set_read_timeout(Some(limit)).unwrap();
        stream
    }

    #[test]
    fn the_relay_forwards_both_ways_and_a_cut_ends_blocked_reads() {
        let watch = ServerWatch::start(echo_server(), Duration::from_secs(5)).unwrap();
        let limit = Duration::from_secs(20);
        let mut a = client(&watch, limit);
        a.write_all(b"hello through the relay").unwrap();
        let mut echoed = [0u8; 23];
        a.read_exact(&mut echoed).unwrap();
        assert_eq!(&echoed, b"hello through the relay");
        // A second line, its client blocked on a read the server will never answer.
        let mut b = client(&watch, limit);
        b.write_all(b"x").unwrap();
        b.read_exact(&mut [0u8; 1]).unwrap();
        let blocked = std::thread::spawn(move || {
            let started = Instant::now();
            (b.read(&mut [0u8; 1]), started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(300));
        watch.cut();
        let (read, waited) = blocked.join().unwrap();
        // Ended by the cut (end of stream or a reset), long before the read's own limit.
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(!matches!(&read, Err(e) if e.kind() == io::ErrorKind::WouldBlock));
        assert!(waited < limit / 2, "{waited:?}");
        assert_eq!(
            a.read(&mut [0u8; 1]).unwrap_or(0),
            0,
            "the first line is cut too"
        );
        // New connections are closed at once after a cut.
        let mut c = client(&watch, limit);
        let _ = c.write_all(b"y");
        assert_eq!(c.read(&mut [0u8; 1]).unwrap_or(0), 0);
    }

    #[test]
    fn a_server_that_answers_passes_the_probe_and_a_silent_one_fails_it() {
        // Answers like Burn's server on a path it does not route.
        let answering = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let target = answering.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut stream in answering.incoming().flatten() {
                let _ = stream.read(&mut [0u8; 512]);
                let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
            }
        });
        let watch = ServerWatch::start(target, Duration::from_secs(5)).unwrap();
        assert_eq!(watch.check(), Ok(()));
        assert_eq!(watch.target(), target);

        // Bound and listening but never accepting: the kernel completes the connection, as
        // it does for a stopped process, and nothing answers.
        let silent = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let timeout = Duration::from_millis(500);
        let started = Instant::now();
        let err = probe(silent.local_addr().unwrap(), timeout).unwrap_err();
        let waited = started.elapsed();
        assert!(err.contains("did not answer an HTTP probe"), "{err}");
        assert!(waited >= timeout && waited < timeout * 10, "{waited:?}");

        // Closed: nothing listens.
        let closed = silent.local_addr().unwrap();
        drop(silent);
        let err = probe(closed, timeout).unwrap_err();
        assert!(err.contains("no connection"), "{err}");
    }

    #[test]
    fn a_relay_whose_server_is_gone_closes_its_clients() {
        let gone = TcpListener::bind(("127.0.0.1", 0))
            .unwrap()
            .local_addr()
            .unwrap();
        let watch = ServerWatch::start(gone, Duration::from_secs(1)).unwrap();
        let mut c = client(&watch, Duration::from_secs(20));
        assert_eq!(c.read(&mut [0u8; 1]).unwrap_or(0), 0);
    }
}
