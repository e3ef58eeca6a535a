//! One backend server: its address, health state, session count and metrics.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use postern_config::{HealthConfig, ServerAddr};
use postern_metrics::ServerMetrics;

use crate::error::ServerError;
use crate::warm::WarmQueue;

#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) addr: ServerAddr,
    /// Config spelling; the `server` metric label and log field.
    pub(crate) label: String,
    pub(crate) metrics: ServerMetrics,
    pub(crate) warm: WarmQueue,
    active: AtomicUsize,
    /// Mirror of `health.up`, read without the lock on every balancing decision.
    up: AtomicBool,
    health: Mutex<Health>,
}

#[derive(Debug)]
struct Health {
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

impl Server {
    pub(crate) fn new(addr: ServerAddr, metrics: ServerMetrics) -> Self {
        let label = addr.to_string();
        // Optimistic start (documented in the crate docs): serve at once, let checks correct.
        metrics.up.set(1);
        Self {
            addr,
            label,
            metrics,
            warm: WarmQueue::default(),
            active: AtomicUsize::new(0),
            up: AtomicBool::new(true),
            health: Mutex::new(Health {
                up: true,
                failures: 0,
                successes: 0,
            }),
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub(crate) fn is_full(&self, limit: usize) -> bool {
        limit != 0 && self.active() >= limit
    }

    /// Takes one of the server's session slots unless it is at `limit` (0 = unlimited).
    pub(crate) fn try_reserve(self: &Arc<Self>, limit: usize) -> Option<ServerSlot> {
        let reserved = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (limit == 0 || n < limit).then_some(n + 1)
            });
        reserved.ok()?;
        self.metrics.active.inc();
        Some(ServerSlot(Arc::clone(self)))
    }

    /// Records a success (probe or session connect).
    pub(crate) fn record_success(&self, backend: &str, cfg: &HealthConfig, source: Source) {
        let mut h = self.lock();
        h.failures = 0;
        h.successes = h.successes.saturating_add(1);
        if !h.up && h.successes >= cfg.rise {
            h.up = true;
            self.up.store(true, Ordering::Release);
            self.metrics.up.set(1);
            tracing::info!(
                backend,
                server = %self.label,
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
            self.metrics.up.set(0);
            tracing::warn!(
                backend,
                server = %self.label,
                failures = h.failures,
                source = source.as_str(),
                reason = %error,
                "backend server down"
            );
        }
    }

    fn lock(&self) -> MutexGuard<'_, Health> {
        // The counters stay consistent even if a holder panicked: each update is one step.
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One session's hold on a server's connection count; released on drop.
#[derive(Debug)]
pub(crate) struct ServerSlot(Arc<Server>);

impl Drop for ServerSlot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.active.dec();
    }
}
