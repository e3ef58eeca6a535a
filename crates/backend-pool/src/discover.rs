//! A pool's server list and its DNS discovery (`resolve_interval`): every host name in
//! `servers` is re-resolved on that interval by a task on the runtime that runs the pool's
//! background work (the control runtime, never a worker), and each address it resolves to is
//! a server of its own, with its own health, balancing share and metric series
//! (`server="10.1.2.3:143"`). This is how a Kubernetes headless Service is used as a pool.
//!
//! - An address that disappears is *retired*: it leaves the list (no new session picks it),
//!   its probes and spares stop, and the sessions already on it run on: each holds the
//!   server through its slot. Its metric series go once its last session ended, unless the
//!   address is back in the list by then.
//! - A resolution that fails, times out or yields no address keeps the last good set; it is
//!   logged.
//! - Until a name first resolves (and whenever the background tasks do not run, as in a bare
//!   [`crate::Pool`]), the name stands as one server labelled as written, resolved at each
//!   connect.
//!
//! Sessions read the list with one uncontended read lock and an `Arc` clone.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use postern_config::ServerAddr;
use postern_metrics::{ErrorChain, Metrics};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::pool::Pool;
use crate::server::Server;

/// One resolution may take at most this long (or the interval, if shorter).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The servers of a `servers` backend.
#[derive(Debug)]
pub(crate) struct ServerList {
    backend: String,
    metrics: Metrics,
    /// What a session balances over: every entry's current servers, in config order.
    current: RwLock<Arc<[Arc<Server>]>>,
    entries: Vec<Entry>,
    /// Servers taken out of the list that may still hold sessions.
    retired: Mutex<Vec<Arc<Server>>>,
}

#[derive(Debug)]
struct Entry {
    /// The entry as configured.
    origin: ServerAddr,
    /// `Some((host, port))` for a host name (re-resolved); `None` for an IP literal or a
    /// unix socket (one fixed server).
    name: Option<(String, u16)>,
    members: Mutex<Vec<Arc<Server>>>,
}

impl ServerList {
    pub(crate) fn new(backend: &str, addrs: &[ServerAddr], metrics: &Metrics) -> ServerList {
        let entries: Vec<Entry> = addrs
            .iter()
            .map(|addr| {
                let name = match addr {
                    ServerAddr::Tcp { host, port } if host.parse::<IpAddr>().is_err() => {
                        Some((host.clone(), *port))
                    }
                    _ => None,
                };
                let host = crate::tls::host_of(addr).map(str::to_owned);
                let server = Server::new(
                    addr.clone(),
                    addr.clone(),
                    host,
                    metrics.server(backend, &addr.to_string()),
                );
                Entry {
                    origin: addr.clone(),
                    name,
                    members: Mutex::new(vec![Arc::new(server)]),
                }
            })
            .collect();
        let list = ServerList {
            backend: backend.to_owned(),
            metrics: metrics.clone(),
            current: RwLock::new(Arc::from(Vec::new())),
            entries,
            retired: Mutex::new(Vec::new()),
        };
        list.publish();
        list
    }

    /// The servers sessions may use now.
    pub(crate) fn load(&self) -> Arc<[Arc<Server>]> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// True when some entry is a host name (the pool then runs [`resolve_loop`]).
    pub(crate) fn has_names(&self) -> bool {
        self.entries.iter().any(|e| e.name.is_some())
    }

    fn publish(&self) {
        let mut all: Vec<Arc<Server>> = Vec::new();
        for entry in &self.entries {
            all.extend(lock(&entry.members).iter().cloned());
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::from(all);
    }

    /// Replaces entry `index`'s servers by one per address of `resolved` (kept when already
    /// there). Returns the servers that are new, for their probes and spares to start.
    fn apply(&self, index: usize, resolved: &BTreeSet<SocketAddr>) -> Vec<Arc<Server>> {
        let entry = &self.entries[index];
        let Some((host, _)) = &entry.name else {
            return Vec::new();
        };
        // An address another entry already has stays that entry's (one series per label).
        let taken: BTreeSet<String> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .flat_map(|(_, e)| {
                lock(&e.members)
                    .iter()
                    .map(|s| s.label.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut members = lock(&entry.members);
        let mut next = Vec::with_capacity(resolved.len());
        let mut added = Vec::new();
        for sa in resolved {
            let addr = ServerAddr::Tcp {
                host: sa.ip().to_string(),
                port: sa.port(),
            };
            let label = addr.to_string();
            if taken.contains(&label) {
                continue;
            }
            if let Some(kept) = members.iter().find(|s| s.addr == addr) {
                next.push(Arc::clone(kept));
                continue;
            }
            let server = Arc::new(Server::new(
                addr,
                entry.origin.clone(),
                Some(host.clone()),
                self.metrics.server(&self.backend, &label),
            ));
            tracing::info!(backend = %self.backend, name = %entry.origin, server = %label, "backend server added (DNS)");
            next.push(Arc::clone(&server));
            added.push(server);
        }
        if next.is_empty() {
            // Every address belongs to another entry: keep what there is.
            return Vec::new();
        }
        let gone: Vec<Arc<Server>> = members
            .iter()
            .filter(|s| !next.iter().any(|n| Arc::ptr_eq(n, s)))
            .cloned()
            .collect();
        *members = next;
        drop(members);
        if !gone.is_empty() || !added.is_empty() {
            self.publish();
        }
        let mut retired = lock(&self.retired);
        for server in gone {
            tracing::info!(
                backend = %self.backend,
                name = %entry.origin,
                server = %server.label,
                sessions = server.active(),
                "backend server removed (DNS): no new sessions, open ones run on"
            );
            server.retire();
            retired.push(server);
        }
        added
    }

    /// Drops the retired servers whose last session ended, and their metric series (unless
    /// the address is back in the list).
    fn reap(&self) {
        let current = self.load();
        lock(&self.retired).retain(|s| {
            // This list's reference and the probe or spare task that may not have seen the
            // retirement yet: anything more is a session.
            if Arc::strong_count(s) > 1 || s.active() > 0 {
                return true;
            }
            if !current.iter().any(|c| c.label == s.label) {
                self.metrics.remove_server(&self.backend, &s.label);
            }
            false
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each update is one assignment: consistent even if a holder panicked.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Re-resolves every host name of the pool every `resolve_interval` (the first time at
/// once) until shutdown or until the pool is dropped.
pub(crate) async fn resolve_loop(pool: Weak<Pool>, shutdown: CancellationToken) {
    let Some(interval) = pool.upgrade().map(|p| p.resolve_interval) else {
        return;
    };
    let mut tick = tokio::time::interval(interval.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(pool) = pool.upgrade() else { return };
        let Some(list) = pool.server_list() else {
            return;
        };
        for (index, entry) in list.entries.iter().enumerate() {
            let Some((host, port)) = &entry.name else {
                continue;
            };
            let lookup = tokio::net::lookup_host((host.as_str(), *port));
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                r = tokio::time::timeout(RESOLVE_TIMEOUT.min(interval), lookup) => r,
            };
            let resolved: BTreeSet<SocketAddr> = match result {
                Ok(Ok(addrs)) => addrs
                    .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
                    .collect(),
                Ok(Err(error)) => {
                    tracing::warn!(backend = %list.backend, name = %entry.origin, error = %ErrorChain(&error), "backend name did not resolve; keeping the last good set");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(backend = %list.backend, name = %entry.origin, "backend name did not resolve within {:?}; keeping the last good set", RESOLVE_TIMEOUT.min(interval));
                    continue;
                }
            };
            if resolved.is_empty() {
                tracing::warn!(backend = %list.backend, name = %entry.origin, "backend name resolved to no address; keeping the last good set");
                continue;
            }
            for server in list.apply(index, &resolved) {
                pool.spawn_server_tasks(&server, &shutdown);
            }
        }
        list.reap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> ServerAddr {
        ServerAddr::Tcp {
            host: host.into(),
            port,
        }
    }

    fn set(addrs: &[&str]) -> BTreeSet<SocketAddr> {
        addrs.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn labels(list: &ServerList) -> Vec<String> {
        list.load().iter().map(|s| s.label.clone()).collect()
    }

    #[test]
    fn each_address_is_a_server_and_a_gone_one_keeps_its_sessions() {
        let metrics = Metrics::new("test");
        let list = ServerList::new(
            "k8s",
            &[tcp("10.0.0.9", 143), tcp("imap.mail.svc", 143)],
            &metrics,
        );
        // Before the first resolution the name is one server, resolved at connect.
        assert_eq!(labels(&list), ["10.0.0.9:143", "imap.mail.svc:143"]);
        assert!(list.has_names());
        let fallback = Arc::clone(&list.load()[1]);

        assert_eq!(
            list.apply(1, &set(&["10.0.0.1:143", "10.0.0.2:143"])).len(),
            2
        );
        assert_eq!(
            labels(&list),
            ["10.0.0.9:143", "10.0.0.1:143", "10.0.0.2:143"]
        );
        let first = Arc::clone(&list.load()[1]);
        assert_eq!(
            first.host.as_deref(),
            Some("imap.mail.svc"),
            "TLS checks the name"
        );
        assert_eq!(first.origin, tcp("imap.mail.svc", 143), "weights key");
        assert!(fallback.retired.is_cancelled());
        drop(fallback);

        // Unchanged: nothing new, the same servers (health and counts go on).
        assert!(list
            .apply(1, &set(&["10.0.0.2:143", "10.0.0.1:143"]))
            .is_empty());
        assert!(Arc::ptr_eq(&list.load()[1], &first));

        // 10.0.0.1 leaves while a session holds it.
        let slot = first.try_reserve(0).unwrap();
        assert_eq!(
            list.apply(1, &set(&["10.0.0.2:143", "10.0.0.3:143"])).len(),
            1
        );
        assert_eq!(
            labels(&list),
            ["10.0.0.9:143", "10.0.0.2:143", "10.0.0.3:143"]
        );
        assert!(first.retired.is_cancelled());
        drop(first);
        list.reap();
        assert!(metrics.encode().contains("server=\"10.0.0.1:143\""));
        assert_eq!(lock(&list.retired).len(), 1, "kept while its session runs");
        drop(slot);
        list.reap();
        assert!(lock(&list.retired).is_empty());
        let text = metrics.encode();
        assert!(!text.contains("server=\"10.0.0.1:143\""), "{text}");
        assert!(!text.contains("server=\"imap.mail.svc:143\""), "{text}");
        assert!(text.contains("server=\"10.0.0.3:143\""), "{text}");
    }

    #[test]
    fn an_address_of_another_entry_stays_that_entrys() {
        let metrics = Metrics::new("test");
        let list = ServerList::new("dup", &[tcp("10.0.0.9", 143), tcp("a.test", 143)], &metrics);
        list.apply(1, &set(&["10.0.0.9:143", "10.0.0.5:143"]));
        assert_eq!(labels(&list), ["10.0.0.9:143", "10.0.0.5:143"]);
        // Only addresses another entry has: the last good set stays.
        list.apply(1, &set(&["10.0.0.9:143"]));
        assert_eq!(labels(&list), ["10.0.0.9:143", "10.0.0.5:143"]);
    }
}
