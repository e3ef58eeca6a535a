//! A server's health: the up/down state fed by active probes and passive session results,
//! and the probe loop that runs while [`crate::Pool::spawn_background`] does.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use postern_config::HealthConfig;
use postern_metrics::{ErrorChain, IntGauge};
use tokio::io::AsyncWriteExt;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::dial::{self, Handshake};
use crate::error::ServerError;
use crate::pool::Pool;
use crate::server::Server;

/// A zero or tiny interval would turn health checks into a busy loop.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// How long a probe may take to say goodbye before the socket is simply closed.
const GOODBYE_DEADLINE: Duration = Duration::from_millis(200);

/// One server's health state; `postern_backend_up` moves with it.
#[derive(Debug)]
pub(crate) struct Health {
    /// Mirror of `counts.up`, read without the lock on every balancing decision.
    up: AtomicBool,
    counts: Mutex<Counts>,
    /// `postern_backend_up{backend,server}`.
    gauge: IntGauge,
    /// Up/down changes so far: lets a watcher that looks now and then (the director's
    /// placement) notice a server that went down and came back between two looks.
    transitions: AtomicU64,
}

#[derive(Debug)]
struct Counts {
    up: bool,
    failures: u32,
    successes: u32,
}

/// Where a health result came from, for the state-change log line.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Source {
    Probe,
    Session,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Probe => "health check",
            Source::Session => "session connect",
        }
    }
}

impl Health {
    /// Starts up (optimistic, documented in the crate docs): serve at once, let checks correct.
    pub(crate) fn new(gauge: IntGauge) -> Self {
        gauge.set(1);
        Health {
            up: AtomicBool::new(true),
            counts: Mutex::new(Counts {
                up: true,
                failures: 0,
                successes: 0,
            }),
            gauge,
            transitions: AtomicU64::new(0),
        }
    }

    /// How many times the server went up or down since the pool was built.
    pub(crate) fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Acquire)
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Records a success (probe or session connect); `rise` in a row bring the server back.
    pub(crate) fn record_success(
        &self,
        backend: &str,
        server: &str,
        cfg: &HealthConfig,
        source: Source,
    ) {
        let mut h = self.lock();
        h.failures = 0;
        h.successes = h.successes.saturating_add(1);
        if !h.up && h.successes >= cfg.rise {
            h.up = true;
            self.up.store(true, Ordering::Release);
            self.transitions.fetch_add(1, Ordering::AcqRel);
            self.gauge.set(1);
            tracing::info!(
                backend,
                server = %server,
                successes = h.successes,
                source = source.as_str(),
                "backend server up"
            );
        }
    }

    /// Records a failure (probe or session connect); `fall` in a row mark the server down.
    pub(crate) fn record_failure(
        &self,
        backend: &str,
        server: &str,
        cfg: &HealthConfig,
        source: Source,
        error: &ServerError,
    ) {
        let mut h = self.lock();
        h.successes = 0;
        h.failures = h.failures.saturating_add(1);
        if h.up && h.failures >= cfg.fall {
            h.up = false;
            self.up.store(false, Ordering::Release);
            self.transitions.fetch_add(1, Ordering::AcqRel);
            self.gauge.set(0);
            tracing::warn!(
                backend,
                server = %server,
                failures = h.failures,
                source = source.as_str(),
                reason = %error,
                "backend server down"
            );
        }
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        // The counters stay consistent even if a holder panicked: each update is one step.
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Probes one server every `health.interval` (the first probe at once) until shutdown or
/// until the pool is dropped (a reload replaced it).
pub(crate) async fn health_loop(
    pool: Weak<Pool>,
    server: Arc<Server>,
    shutdown: CancellationToken,
) {
    let Some(interval) = pool.upgrade().map(|p| p.health.interval) else {
        return;
    };
    let mut tick = tokio::time::interval(interval.max(MIN_INTERVAL));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = server.retired.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(pool) = pool.upgrade() else { return };
        // Probes send no ID/XCLIENT (there is no client) and a LOCAL PROXY header, which
        // haproxy-enabled Dovecot listeners accept for exactly this purpose.
        let hs = Handshake {
            protocol: pool.protocol,
            forward: pool.forward,
            client: None,
            label: &server.label,
            tls: pool.tls.as_ref(),
            host: server.host.as_deref(),
        };
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            () = server.retired.cancelled() => return,
            r = dial::dial(&server.addr, hs, pool.health.timeout) => r,
        };
        match result {
            Ok((mut stream, greeting)) => {
                server.health.record_success(
                    &pool.name,
                    &server.label,
                    &pool.health,
                    Source::Probe,
                );
                if pool.learn_caps {
                    let learned = tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = server.retired.cancelled() => return,
                        r = tokio::time::timeout(pool.health.timeout, crate::caps::learn(&mut stream, pool.protocol, &greeting)) => r,
                    };
                    match learned {
                        Ok(Some(caps)) => server.caps.set(caps),
                        _ => {
                            tracing::debug!(backend = %pool.name, server = %server.label, "capabilities not learned on this probe")
                        }
                    }
                }
                let goodbye = dial::probe_goodbye(pool.protocol);
                let _ = tokio::time::timeout(GOODBYE_DEADLINE, stream.write_all(goodbye)).await;
            }
            Err(error) => {
                tracing::debug!(backend = %pool.name, server = %server.label, error = %ErrorChain(&error), "health check failed");
                server.health.record_failure(
                    &pool.name,
                    &server.label,
                    &pool.health,
                    Source::Probe,
                    &error,
                );
                if !server.is_up() {
                    server.warm.clear();
                }
            }
        }
    }
}
