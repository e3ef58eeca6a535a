//! [`Director`]: the process-wide view of every backend that the placement, the session
//! registry, the reconcile loop and the control socket share.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use postern_backend_pool::{Pool, ServerStatus};
use postern_config::{BackendConfig, Config, Route};
use postern_metrics::Metrics;
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::error::{MapError, StateError};
use crate::placement::{self, Candidate, Placement, Why};
use crate::sessions::{Registration, Registry, RoutedSession};
use crate::states::{ServerState, StateStore};
use crate::user_map::{MapFile, Recheck, UserMap};

/// One backend as the director knows it.
#[derive(Debug)]
pub(crate) struct Backend {
    pub(crate) name: String,
    pub(crate) pool: Arc<Pool>,
    /// `None` for `route = "connection"` (listed by `ctl servers`, never placed).
    pub(crate) route: Option<UserRouting>,
}

/// A `route = "user"` backend's placement inputs besides health and states.
#[derive(Debug)]
pub(crate) struct UserRouting {
    pub(crate) config: postern_config::UserRoute,
    pub(crate) map: Option<Arc<MapFile>>,
}

/// Where a user's new session goes.
#[derive(Clone, Debug)]
pub struct Routed {
    /// The pool to connect through (the director's current one for the backend).
    pub pool: Arc<Pool>,
    /// The server label.
    pub server: String,
    /// Why this server.
    pub why: Why,
}

/// Why a backend cannot take a user's session.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// The backend is not a `route = "user"` backend of the running configuration.
    #[error("backend `{0}` does not route by user")]
    NotRouted(String),
    /// No server is up and not offline.
    #[error("backend `{0}`: no server is up and online for the user")]
    NoServer(String),
}

/// Why the director could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DirectorError {
    /// A `user_map` file could not be used.
    #[error(transparent)]
    Map(#[from] MapError),
}

/// Placement, server states and routed sessions for the whole process.
#[derive(Debug)]
pub struct Director {
    pub(crate) backends: ArcSwap<Vec<Arc<Backend>>>,
    pub(crate) states: StateStore,
    pub(crate) registry: Arc<Registry>,
    /// `server.drain_spread` in nanoseconds (reloadable).
    spread: AtomicU64,
    /// Woken on every change that may move users (a state set by `ctl`, a reload).
    pub(crate) changed: Notify,
    metrics: Metrics,
}

impl Director {
    /// Builds the director for `config`'s backends (`pools[i]` serves `config.backends[i]`):
    /// reads every `user_map` (a bad one is an error: there is no last good map yet) and the
    /// server states in `state_dir` (a damaged state file is logged and every server starts
    /// online; the next `ctl server` rewrites it).
    pub fn new(
        config: &Config,
        pools: &[Arc<Pool>],
        metrics: &Metrics,
    ) -> Result<Director, DirectorError> {
        let states = match StateStore::open(&config.server.state_dir) {
            Ok(s) => s,
            Err(e) => {
                error!(error = %postern_metrics::ErrorChain(&e), "server states not restored");
                StateStore::fresh(&config.server.state_dir)
            }
        };
        let director = Director {
            backends: ArcSwap::from_pointee(Vec::new()),
            states,
            registry: Registry::new(metrics.clone()),
            spread: AtomicU64::new(0),
            changed: Notify::new(),
            metrics: metrics.clone(),
        };
        director.update(config, pools)?;
        Ok(director)
    }

    /// Takes a new configuration (a reload): new pools, `user_map` paths, weights and
    /// `drain_spread`. Server states and routed sessions stay. A `user_map` whose path did
    /// not change keeps its last good map; a new path must parse.
    pub fn update(&self, config: &Config, pools: &[Arc<Pool>]) -> Result<(), DirectorError> {
        let old = self.backends.load_full();
        let mut backends = Vec::with_capacity(config.backends.len());
        for (b, pool) in config.backends.iter().zip(pools) {
            let route = match &b.route {
                Route::Connection => None,
                Route::User(r) => Some(UserRouting {
                    config: r.clone(),
                    map: map_for(r.user_map.as_deref(), &backends, &old)?,
                }),
            };
            let backend = Backend {
                name: b.name.clone(),
                pool: Arc::clone(pool),
                route,
            };
            warn_shared_hosts(b, &backend);
            backends.push(Arc::new(backend));
        }
        self.spread.store(
            u64::try_from(config.server.drain_spread.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Release,
        );
        self.backends.store(Arc::new(backends));
        for b in self.backends.load().iter() {
            self.publish_states(b);
            if let Some(map) = b.route.as_ref().and_then(|r| r.map.as_ref()) {
                warn_unknown_hosts(b, &map.map.load());
            }
        }
        self.changed.notify_one();
        Ok(())
    }

    /// Places `user`'s new session on a server of `backend`.
    pub fn place(&self, backend: &str, user: &str) -> Result<Routed, PlaceError> {
        let backends = self.backends.load();
        let b = backends
            .iter()
            .find(|b| b.name == backend && b.route.is_some())
            .ok_or_else(|| PlaceError::NotRouted(backend.to_owned()))?;
        let servers = b.pool.servers();
        let placed = self
            .placement_in(b, &servers, user)
            .ok_or_else(|| PlaceError::NoServer(backend.to_owned()))?;
        Ok(Routed {
            pool: Arc::clone(&b.pool),
            server: servers[placed.index].label.clone(),
            why: placed.why,
        })
    }

    /// Registers a session routed by [`Director::place`]; it stays registered (counted in
    /// `postern_backend_users`, visible to `ctl user`, reachable by `ctl kick` and by
    /// evacuation) until the returned value is dropped.
    pub fn register(&self, r: Registration<'_>) -> RoutedSession {
        self.registry.register(r)
    }

    /// The routed sessions of this instance.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The server states in force.
    pub fn states(&self) -> &StateStore {
        &self.states
    }

    /// `server.drain_spread`: the window over which moved users' sessions get the goodbye.
    pub fn spread(&self) -> Duration {
        Duration::from_nanos(self.spread.load(Ordering::Acquire))
    }

    /// Sets a server's state (`ctl server`); users move at once and the reconcile loop asks
    /// the sessions that are now on the wrong server to leave. The state is in force even
    /// when saving it failed (the error says so).
    pub fn set_state(
        &self,
        backend: &str,
        server: &str,
        state: ServerState,
    ) -> Result<(), StateError> {
        let saved = self.states.set(backend, server, state);
        if let Some(b) = self.backends.load().iter().find(|b| b.name == backend) {
            self.publish_states(b);
        }
        info!(backend, server, state = state.as_str(), "server state set");
        self.changed.notify_one();
        saved
    }

    /// Re-reads every `user_map` that changed; true when one now maps differently.
    pub(crate) fn recheck_maps(&self) -> bool {
        let mut changed = false;
        let backends = self.backends.load();
        let mut seen: Vec<&std::path::Path> = Vec::new();
        for b in backends.iter() {
            let Some(map) = b.route.as_ref().and_then(|r| r.map.as_ref()) else {
                continue;
            };
            if seen.contains(&map.path.as_path()) {
                continue;
            }
            seen.push(&map.path);
            match map.recheck() {
                Recheck::Same => {}
                Recheck::Loaded(lines) => {
                    info!(file = %map.path.display(), lines, "user_map reloaded");
                    for other in backends.iter() {
                        if other
                            .route
                            .as_ref()
                            .and_then(|r| r.map.as_ref())
                            .is_some_and(|m| Arc::ptr_eq(m, map))
                        {
                            warn_unknown_hosts(other, &map.map.load());
                        }
                    }
                    changed = true;
                }
                Recheck::Refused(e) => {
                    error!(error = %postern_metrics::ErrorChain(&e), "user_map not reloaded");
                }
            }
        }
        changed
    }

    /// The placement of `user` on `b` given `servers` (its pool's current status).
    pub(crate) fn placement_in(
        &self,
        b: &Backend,
        servers: &[ServerStatus],
        user: &str,
    ) -> Option<Placement> {
        let route = b.route.as_ref()?;
        let candidates: Vec<Candidate<'_>> = servers
            .iter()
            .map(|s| Candidate {
                label: &s.label,
                host: &s.host,
                port: s.port,
                weight: route.config.weight(&s.addr).get(),
                up: s.up,
                state: self.states.get(&b.name, &s.label),
            })
            .collect();
        let map = route.map.as_ref().map(|m| m.map.load_full());
        placement::place(user, &candidates, map.as_deref())
    }

    fn publish_states(&self, b: &Backend) {
        if b.route.is_none() {
            return;
        }
        for s in b.pool.servers() {
            let state = self.states.get(&b.name, &s.label);
            self.metrics
                .server(&b.name, &s.label)
                .set_state(state.as_str());
        }
    }
}

/// The map file for `path`: one per path for the whole process (the imap, pop3 and sieve
/// backends usually share one), kept across reloads so that its last good map stays.
fn map_for(
    path: Option<&std::path::Path>,
    building: &[Arc<Backend>],
    old: &[Arc<Backend>],
) -> Result<Option<Arc<MapFile>>, MapError> {
    let Some(path) = path else { return Ok(None) };
    let existing = building
        .iter()
        .chain(old)
        .filter_map(|b| b.route.as_ref()?.map.as_ref())
        .find(|m| m.path == path);
    match existing {
        Some(m) => Ok(Some(Arc::clone(m))),
        None => Ok(Some(Arc::new(MapFile::open(path)?))),
    }
}

/// Placement is by host: two servers of one backend on the same host get the same score, so
/// the first takes every user of that host. Say so at start and reload.
fn warn_shared_hosts(config: &BackendConfig, b: &Backend) {
    if b.route.is_none() {
        return;
    }
    let servers = b.pool.servers();
    for (i, s) in servers.iter().enumerate() {
        if let Some(first) = servers[..i]
            .iter()
            .find(|o| o.host.eq_ignore_ascii_case(&s.host))
        {
            warn!(
                backend = %config.name,
                server = %s.label,
                first = %first.label,
                "route = \"user\" places by host: {} shares its host with {}, which takes every user \
                 hashed to that host (pin users to it with user_map host:port, or give it its own address)",
                s.label,
                first.label
            );
        }
    }
}

/// `user_map` lines whose host is none of the backend's servers pin nobody there.
fn warn_unknown_hosts(b: &Backend, map: &UserMap) {
    let servers = b.pool.servers();
    for t in map.targets() {
        if !servers.iter().any(|s| s.host.eq_ignore_ascii_case(&t.host)) {
            warn!(
                backend = %b.name,
                line = t.line,
                host = %t.host,
                "user_map line names a host that is none of the backend's servers; its users are placed by hashing"
            );
        }
    }
}
