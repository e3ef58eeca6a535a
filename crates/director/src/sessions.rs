//! The routed sessions of this instance, across every worker thread: who is on which server,
//! and the handle that asks a session to leave (evacuation, homecoming, `ctl kick`).
//!
//! A session registers once its server is chosen and holds a [`RoutedSession`] to its end;
//! dropping it unregisters. The per-server gauges (`postern_backend_users`) move with the
//! registrations. Not on the relay's hot path: one lock per registration, kick and reconcile.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use postern_metrics::{IntGauge, Metrics};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::hrw::normalise_user;

/// One routed session, as `ctl user` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SessionInfo {
    /// Process-unique number.
    pub id: u64,
    /// The listener it came in on.
    pub listener: String,
    /// The client address.
    pub peer: SocketAddr,
    /// The backend.
    pub backend: String,
    /// The server it is relayed to.
    pub server: String,
    /// The login name as the client gave it.
    pub user: String,
    /// When it was routed (seconds since the Unix epoch).
    pub since: u64,
    /// Whether it was asked to leave already.
    pub leaving: bool,
}

/// Where a new session goes, for [`Registry::register`].
#[derive(Debug)]
pub struct Registration<'a> {
    /// The listener.
    pub listener: &'a str,
    /// The client address.
    pub peer: SocketAddr,
    /// The backend.
    pub backend: &'a str,
    /// The server label.
    pub server: &'a str,
    /// The login name as the client gave it.
    pub user: &'a str,
}

/// A session's registration; dropping it unregisters the session.
#[derive(Debug)]
pub struct RoutedSession {
    registry: Arc<Registry>,
    id: u64,
    leave: Arc<Notify>,
}

impl RoutedSession {
    /// Resolves when the director asks this session to leave (its user belongs elsewhere now,
    /// or was kicked). Cancel-safe; a request made before the first poll is not lost.
    pub async fn leave_requested(&self) {
        self.leave.notified().await;
    }

    /// The registration number.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for RoutedSession {
    fn drop(&mut self) {
        self.registry.remove(self.id);
    }
}

/// Every routed session of this instance.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    metrics: Metrics,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    sessions: HashMap<u64, Entry>,
    by_user: HashMap<String, Vec<u64>>,
    servers: HashMap<(String, String), ServerCount>,
}

#[derive(Debug)]
struct Entry {
    info: SessionInfo,
    key: String,
    started: Instant,
    leave: Arc<Notify>,
}

#[derive(Debug)]
struct ServerCount {
    sessions: usize,
    users: HashMap<String, usize>,
    gauge: IntGauge,
}

/// A session due to be asked to leave, for the reconcile loop.
#[derive(Clone, Debug)]
pub(crate) struct Routed {
    pub(crate) id: u64,
    pub(crate) backend: String,
    pub(crate) server: String,
    pub(crate) key: String,
    pub(crate) started: Instant,
    pub(crate) leaving: bool,
}

impl Registry {
    /// An empty registry whose gauges live in `metrics`.
    pub fn new(metrics: Metrics) -> Arc<Registry> {
        Arc::new(Registry {
            inner: Mutex::new(Inner::default()),
            metrics,
        })
    }

    /// Registers a session routed to `r.server`.
    pub fn register(self: &Arc<Self>, r: Registration<'_>) -> RoutedSession {
        let key = normalise_user(r.user);
        let leave = Arc::new(Notify::new());
        let mut inner = self.lock();
        inner.next += 1;
        let id = inner.next;
        let since = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let info = SessionInfo {
            id,
            listener: r.listener.to_owned(),
            peer: r.peer,
            backend: r.backend.to_owned(),
            server: r.server.to_owned(),
            user: r.user.to_owned(),
            since,
            leaving: false,
        };
        let count = inner
            .servers
            .entry((r.backend.to_owned(), r.server.to_owned()))
            .or_insert_with(|| ServerCount {
                sessions: 0,
                users: HashMap::new(),
                gauge: self.metrics.server(r.backend, r.server).users,
            });
        count.sessions += 1;
        let n = count.users.entry(key.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            count.gauge.inc();
        }
        inner.by_user.entry(key.clone()).or_default().push(id);
        inner.sessions.insert(
            id,
            Entry {
                info,
                key,
                started: Instant::now(),
                leave: Arc::clone(&leave),
            },
        );
        RoutedSession {
            registry: Arc::clone(self),
            id,
            leave,
        }
    }

    /// The sessions of `user` (any case) on this instance, oldest first.
    pub fn sessions_of(&self, user: &str) -> Vec<SessionInfo> {
        let inner = self.lock();
        let mut found: Vec<(&Entry, SessionInfo)> = inner
            .by_user
            .get(&normalise_user(user))
            .into_iter()
            .flatten()
            .filter_map(|id| inner.sessions.get(id))
            .map(|e| (e, e.info.clone()))
            .collect();
        found.sort_by_key(|(e, _)| e.started);
        found.into_iter().map(|(_, info)| info).collect()
    }

    /// Asks every session of `user` to leave now; returns how many were asked.
    pub fn kick(&self, user: &str) -> usize {
        let ids: Vec<u64> = self
            .lock()
            .by_user
            .get(&normalise_user(user))
            .cloned()
            .unwrap_or_default();
        ids.into_iter().filter(|id| self.tell(*id)).count()
    }

    /// Sessions and distinct users on one server.
    pub fn counts(&self, backend: &str, server: &str) -> (usize, usize) {
        self.lock()
            .servers
            .get(&(backend.to_owned(), server.to_owned()))
            .map_or((0, 0), |c| (c.sessions, c.users.len()))
    }

    /// Routed sessions open now.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// True when no routed session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every session, for the reconcile loop.
    pub(crate) fn all(&self) -> Vec<Routed> {
        self.lock()
            .sessions
            .iter()
            .map(|(id, e)| Routed {
                id: *id,
                backend: e.info.backend.clone(),
                server: e.info.server.clone(),
                key: e.key.clone(),
                started: e.started,
                leaving: e.info.leaving,
            })
            .collect()
    }

    /// Marks a session as about to be asked to leave (or no longer, with `false`), so that
    /// the reconcile loop schedules it once. False when the session is gone.
    pub(crate) fn mark(&self, id: u64, leaving: bool) -> bool {
        match self.lock().sessions.get_mut(&id) {
            Some(e) => {
                e.info.leaving = leaving;
                true
            }
            None => false,
        }
    }

    /// Where a session is now, if it is still open.
    pub(crate) fn get(&self, id: u64) -> Option<Routed> {
        self.lock().sessions.get(&id).map(|e| Routed {
            id,
            backend: e.info.backend.clone(),
            server: e.info.server.clone(),
            key: e.key.clone(),
            started: e.started,
            leaving: e.info.leaving,
        })
    }

    /// Asks one session to leave now. False when it is gone.
    pub(crate) fn tell(&self, id: u64) -> bool {
        let mut inner = self.lock();
        let Some(e) = inner.sessions.get_mut(&id) else {
            return false;
        };
        e.info.leaving = true;
        // notify_one keeps a permit when nobody waits yet: the request is not lost.
        e.leave.notify_one();
        true
    }

    fn remove(&self, id: u64) {
        let mut inner = self.lock();
        let Some(e) = inner.sessions.remove(&id) else {
            return;
        };
        if let Some(ids) = inner.by_user.get_mut(&e.key) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                inner.by_user.remove(&e.key);
            }
        }
        let server = (e.info.backend, e.info.server);
        if let Some(count) = inner.servers.get_mut(&server) {
            count.sessions -= 1;
            if let Some(n) = count.users.get_mut(&e.key) {
                *n -= 1;
                if *n == 0 {
                    count.users.remove(&e.key);
                    count.gauge.dec();
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is complete before the guard drops; a panic elsewhere cannot leave
        // the maps half-changed.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg<'a>(user: &'a str, server: &'a str) -> Registration<'a> {
        Registration {
            listener: "imaps",
            peer: "127.0.0.2:5000".parse().unwrap(),
            backend: "imap",
            server,
            user,
        }
    }

    #[tokio::test]
    async fn counts_gauges_and_kick() {
        let metrics = Metrics::new("test");
        let registry = Registry::new(metrics.clone());
        let a1 = registry.register(reg("Alice", "s1"));
        let a2 = registry.register(reg("alice", "s1"));
        let b = registry.register(reg("bob", "s1"));
        let c = registry.register(reg("carol", "s2"));
        assert_eq!(registry.counts("imap", "s1"), (3, 2));
        assert_eq!(metrics.server("imap", "s1").users.get(), 2);
        assert_eq!(registry.sessions_of("ALICE").len(), 2);
        assert_eq!(registry.kick("alice"), 2);
        // Requested before anyone waited: still seen.
        tokio::time::timeout(Duration::from_secs(1), a1.leave_requested())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), a2.leave_requested())
            .await
            .unwrap();
        assert!(registry.sessions_of("alice").iter().all(|s| s.leaving));
        drop((a1, a2));
        assert_eq!(registry.counts("imap", "s1"), (1, 1));
        assert_eq!(metrics.server("imap", "s1").users.get(), 1);
        assert_eq!(registry.kick("alice"), 0);
        drop((b, c));
        assert!(registry.is_empty());
        assert_eq!(metrics.server("imap", "s2").users.get(), 0);
    }
}
