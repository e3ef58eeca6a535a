//! A holder process: opens its share of the sessions, holds them idle, and on command drops
//! them all and reconnects them at once (the reconnect storm). It talks to the orchestrator
//! with lines: commands on stdin (`storm full`, `storm resume`; EOF ends it), one JSON
//! report per phase on stdout. Several holders run side by side because one process may
//! hold only as many sockets as the open-file limit allows.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use rustls::ClientConfig;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::sync::Semaphore;
use tokio_rustls::client::TlsStream;

use crate::client::{self, Opened};
use crate::BenchError;

/// What a holder is told at start.
#[derive(Debug)]
pub(crate) struct HolderPlan {
    /// The proxy's listen addresses; session i goes to `targets[i % len]`.
    pub(crate) targets: Vec<SocketAddr>,
    /// Loopback source addresses; session i comes from `sources[i % len]`.
    pub(crate) sources: Vec<IpAddr>,
    /// Sessions to hold.
    pub(crate) count: usize,
    /// Sessions being opened at once in the first phase (a steady ramp).
    pub(crate) concurrency: usize,
    /// The bench CA (DER).
    pub(crate) ca_der: Vec<u8>,
}

/// One phase's report (JSON line on stdout).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PhaseReport {
    /// `ready` (first phase) or `storm`.
    pub(crate) event: String,
    /// `full` or `resume` for a storm.
    pub(crate) mode: String,
    /// Sessions logged in and idling at the end of the phase.
    pub(crate) held: usize,
    /// Sessions that failed (must be 0).
    pub(crate) failed: usize,
    /// The first few failures.
    pub(crate) errors: Vec<String>,
    /// From the phase's start to the last session idling.
    pub(crate) secs: f64,
    /// TCP connect + TLS handshake of each session, microseconds.
    pub(crate) handshake_us: Vec<u32>,
    /// TCP connect to `+ idling`, microseconds.
    pub(crate) total_us: Vec<u32>,
    /// Handshakes that resumed a TLS session.
    pub(crate) resumed: usize,
}

struct Slot {
    target: SocketAddr,
    source: IpAddr,
    /// This session's own ticket store (used for `storm resume`).
    resuming: Arc<ClientConfig>,
    stream: Option<TlsStream<tokio::net::TcpStream>>,
}

/// Runs the holder until stdin closes.
pub(crate) async fn run(plan: HolderPlan) -> Result<(), BenchError> {
    if plan.targets.is_empty() || plan.sources.is_empty() {
        return Err(BenchError::Setup("holder needs targets and sources".into()));
    }
    let base = client::base_config(&plan.ca_der)?;
    let mut slots: Vec<Slot> = (0..plan.count)
        .map(|i| Slot {
            target: plan.targets[i % plan.targets.len()],
            source: plan.sources[i % plan.sources.len()],
            resuming: client::resuming(&base),
            stream: None,
        })
        .collect();
    // The first phase stores tickets, so that a later `storm resume` has them.
    let report = phase(&mut slots, "ready", "full", plan.concurrency, |s| {
        Arc::clone(&s.resuming)
    })
    .await;
    emit(&report);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let (mode, resume) = match line.trim() {
            "storm full" => ("full", false),
            "storm resume" => ("resume", true),
            other => {
                eprintln!("holder: unknown command {other:?}");
                continue;
            }
        };
        // Everyone drops at once (a network blip, a client fleet restart)...
        for slot in &mut slots {
            slot.stream = None;
        }
        // ...and comes back at once: no ramp, every connect in flight together.
        let base = Arc::clone(&base);
        let report = phase(&mut slots, "storm", mode, usize::MAX, move |s| {
            if resume {
                Arc::clone(&s.resuming)
            } else {
                Arc::clone(&base)
            }
        })
        .await;
        emit(&report);
    }
    Ok(())
}

async fn phase(
    slots: &mut [Slot],
    event: &'static str,
    mode: &'static str,
    concurrency: usize,
    config: impl Fn(&Slot) -> Arc<ClientConfig>,
) -> PhaseReport {
    let gate = Arc::new(Semaphore::new(concurrency.min(Semaphore::MAX_PERMITS)));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, slot) in slots.iter().enumerate() {
        let (target, source, config) = (slot.target, slot.source, config(slot));
        let gate = Arc::clone(&gate);
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await;
            (i, client::open(target, source, config).await)
        });
    }
    let mut report = PhaseReport {
        event: event.to_string(),
        mode: mode.to_string(),
        held: 0,
        failed: 0,
        errors: Vec::new(),
        secs: 0.0,
        handshake_us: Vec::with_capacity(slots.len()),
        total_us: Vec::with_capacity(slots.len()),
        resumed: 0,
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, Ok(opened))) => {
                let Opened {
                    stream,
                    handshake,
                    total,
                    resumed,
                } = opened;
                report.held += 1;
                report.resumed += usize::from(resumed);
                report.handshake_us.push(micros(handshake));
                report.total_us.push(micros(total));
                slots[i].stream = Some(stream);
            }
            Ok((_, Err(error))) => {
                report.failed += 1;
                if report.errors.len() < 5 {
                    report.errors.push(error.to_string());
                }
            }
            Err(join) => {
                report.failed += 1;
                report.errors.push(format!("session task: {join}"));
            }
        }
    }
    report.secs = t0.elapsed().as_secs_f64();
    report
}

fn micros(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

fn emit(report: &PhaseReport) {
    match serde_json::to_string(report) {
        Ok(line) => println!("{line}"),
        Err(e) => println!("{{\"event\":\"error\",\"errors\":[\"{e}\"]}}"),
    }
}
