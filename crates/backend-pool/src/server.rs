//! One backend server: its address, session count and metrics, and the places its health
//! ([`crate::health`]) and spares ([`crate::warm`]) are kept.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use postern_config::ServerAddr;
use postern_metrics::ServerMetrics;
use tokio_util::sync::CancellationToken;

use crate::caps::LearnedCaps;
use crate::health::Health;
use crate::warm::Spares;

#[derive(Debug)]
pub(crate) struct Server {
    /// Where to connect: the configured address, or one address a configured host name
    /// resolved to (`crate::discover`).
    pub(crate) addr: ServerAddr,
    /// The `servers` entry it comes from (the same as `addr` unless DNS-discovered).
    pub(crate) origin: ServerAddr,
    /// The host a certificate is verified against when `tls_name` is not set: the host as
    /// written in `servers` (for a discovered address, the name, not the address).
    pub(crate) host: Option<String>,
    /// `addr` spelled as in the config; the `server` metric label and log field.
    pub(crate) label: String,
    /// Cancelled when a DNS change takes the server out of its pool: its probes and spares
    /// stop, its open sessions run on.
    pub(crate) retired: CancellationToken,
    pub(crate) metrics: ServerMetrics,
    pub(crate) warm: Spares,
    pub(crate) health: Health,
    /// `route = "user"`: what the server offers before login, from its health probes.
    pub(crate) caps: LearnedCaps,
    active: AtomicUsize,
}

impl Server {
    pub(crate) fn new(
        addr: ServerAddr,
        origin: ServerAddr,
        host: Option<String>,
        metrics: ServerMetrics,
    ) -> Self {
        let label = addr.to_string();
        Self {
            addr,
            origin,
            host,
            label,
            retired: CancellationToken::new(),
            health: Health::new(metrics.up.clone()),
            metrics,
            warm: Spares::default(),
            caps: LearnedCaps::default(),
            active: AtomicUsize::new(0),
        }
    }

    /// Takes the server out of service (see `retired`); its spares are closed.
    pub(crate) fn retire(&self) {
        self.retired.cancel();
        self.warm.clear();
    }

    pub(crate) fn is_up(&self) -> bool {
        self.health.is_up()
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
