//! `vdm-serve`: serves this machine's device to vdm clients over Burn's remote backend
//! (WebSocket), so that `generate --devices ws://HOST:PORT,...` can spread a model over
//! several machines.
//!
//! ```sh
//! cargo run --release --features remote --example vdm-serve -- --port 3000
//! # elsewhere:
//! cargo run --release --features remote --example generate -- \
//!     --prompt "a red circle moving right" --devices ws://HOST:3000,ws://OTHER:3000
//! ```
//!
//! It prints `serving <backend> on ws://ADDRESS` once it listens, and serves until Ctrl-C or
//! `SIGTERM`. WebSocket is unencrypted and unauthenticated here: a trusted network only.

use std::net::TcpListener;
use std::process::ExitCode;

use clap::Parser;

/// vdm's programs run on mimalloc: it keeps freed activation buffers for the next step where
/// glibc's `malloc` hands them back to the kernel and page-faults them in again (a VAE decode
/// about a third faster; docs/benchmarks.md, "The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Serve this machine's device to vdm clients (Burn remote, WebSocket).
#[derive(Debug, Parser)]
#[command(name = "vdm-serve", version)]
struct Args {
    /// TCP port (0: any free port, printed).
    #[arg(long, default_value_t = 3000)]
    port: u16,

    /// The address to listen on (`0.0.0.0`: every interface).
    #[arg(long, default_value = "0.0.0.0")]
    bind: String,

    /// The device to serve: `flex`, `ndarray`, `wgpu`, `wgpu:N` or `cuda:N` (as the backend
    /// features of this build allow).
    #[arg(long, default_value = "flex")]
    device: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    if args.device.starts_with("ws://") {
        return Err("--device: serve a local device, not a remote one".into());
    }
    let device = vdm::devices::parse_device(&args.device, vdm::devices::CONNECT_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let listener = TcpListener::bind((args.bind.as_str(), args.port))
        .map_err(|e| format!("--port: cannot listen on {}:{}: {e}", args.bind, args.port))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    println!("serving {} on ws://{address}", args.device);
    vdm::remote::serve(listener, device).map_err(|e| e.to_string())
}
