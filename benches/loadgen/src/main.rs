//! `postern-bench`: the load generator and synthetic backend of issue 15 (ISP scale).
//!
//! `postern-bench run --postern PATH --sessions N --workers 1,2` holds N logged-in idle
//! IMAPS sessions (TLS 1.3, greeting, LOGIN, IDLE) through a postern it starts, from several
//! holder processes and loopback source addresses to several postern listen addresses, in
//! front of synthetic backends on their own addresses; it reports postern's RSS growth per
//! session, the kernel's TCP memory, postern's CPU and wake-ups while everything is idle,
//! the time to establish them, then reconnect storms (everyone drops and reconnects at once,
//! without and with TLS resumption): time until the last is back, handshake latency
//! percentiles, failures, `ListenOverflows`/`ListenDrops`. `backend` and `hold` are the
//! sub-commands it starts itself. See benches/README.md.

// A load generator measures real elapsed time for its reports, outside any tokio runtime
// whose clock a test could pause: std's Instant is the clock it owns.
#![allow(clippy::disallowed_types)]

mod backend;
mod client;
mod holder;
mod procfs;
mod run;
mod setup;
mod stats;
mod threads;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Everything that can stop a bench run, with what it was doing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
    #[error("{0}")]
    Protocol(String),
}

impl BenchError {
    fn io(what: impl Into<String>, source: std::io::Error) -> BenchError {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "postern-bench",
    about = "postern load generator and synthetic IMAP backend"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The whole measurement: backends, postern, holders, idle, storms; JSON report.
    Run {
        /// postern binary (a release build; the default is relative to the checkout's root).
        #[arg(long, default_value = "target/release/postern")]
        postern: PathBuf,
        /// Idle sessions to hold (postern needs 2 descriptors per session).
        #[arg(long, default_value_t = 9000)]
        sessions: usize,
        /// Comma list of postern `workers` values, one run each.
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        workers: Vec<usize>,
        /// Loopback addresses postern listens on (127.0.2.1, .2, ...).
        #[arg(long, default_value_t = 4)]
        listen_addrs: usize,
        /// Sessions each holder opens at once while establishing.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds of quiet over which idle CPU and wake-ups are measured.
        #[arg(long, default_value_t = 10)]
        idle_window: u64,
        /// Comma list of storms to run in order (`full`, `resume`); empty: none.
        #[arg(long, value_delimiter = ',', default_value = "full,resume")]
        storms: Vec<String>,
        /// Write the raw results here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Keep the work directory (config, postern's stderr).
        #[arg(long)]
        keep: bool,
    },
    /// The synthetic IMAP backend (started by `run`).
    Backend {
        #[arg(long, value_delimiter = ',', required = true)]
        listen: Vec<SocketAddr>,
    },
    /// A holder process (started by `run`).
    Hold {
        #[arg(long, value_delimiter = ',', required = true)]
        targets: Vec<SocketAddr>,
        #[arg(long, value_delimiter = ',', required = true)]
        sources: Vec<IpAddr>,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// The bench certificate (PEM), the clients' only root.
        #[arg(long)]
        ca: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    procfs::raise_open_file_limit();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("postern-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Cmd::Run {
                postern,
                sessions,
                workers,
                listen_addrs,
                concurrency,
                idle_window,
                storms,
                json,
                keep,
            } => {
                run::run(run::RunPlan {
                    postern,
                    sessions,
                    workers,
                    listen_addrs,
                    concurrency,
                    idle_window: Duration::from_secs(idle_window),
                    storms: storms.into_iter().filter(|s| !s.is_empty()).collect(),
                    json,
                    keep,
                })
                .await
            }
            Cmd::Backend { listen } => backend::run(&listen).await,
            Cmd::Hold {
                targets,
                sources,
                count,
                concurrency,
                ca,
            } => {
                let ca_der = read_ca(&ca)?;
                holder::run(holder::HolderPlan {
                    targets,
                    sources,
                    count,
                    concurrency,
                    ca_der,
                })
                .await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postern-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read_ca(path: &std::path::Path) -> Result<Vec<u8>, BenchError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(path)
        .map(|c| c.to_vec())
        .map_err(|e| BenchError::Setup(format!("{}: {e}", path.display())))
}
