//! The reconcile loop: whenever something that moves users changes (a server going down or
//! coming back, a `ctl server` state, a `user_map` edit, a reload), every routed session
//! whose user now belongs on another server is asked to leave, oldest first, spread evenly
//! over `server.drain_spread`, so that the clients reconnect to the new server in a trickle.
//!
//! Changes are noticed by comparing a fingerprint of every placement input (health with its
//! up/down transition count, so a server that went down and came back between two looks is
//! noticed too; states; map reloads) once a second, and at once when `ctl` or a reload wakes
//! the loop. A session routed with inputs older than a change may register after the scan
//! that followed the change, so each change is followed by a second scan [`SETTLE`] later.
//! Each scheduled goodbye is checked again when it is due: a user whose placement flipped
//! back meanwhile stays.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::director::{Backend, Director};
use crate::states::ServerState;

/// How often the placement inputs and the `user_map` files are looked at.
pub const POLL: Duration = Duration::from_secs(1);

/// After a change, a second scan this much later catches sessions that were routed with
/// the old inputs and registered after the first scan (a connect takes at most
/// 2 × `connect_timeout`; the default is 3 s).
pub const SETTLE: Duration = Duration::from_secs(8);

/// Everything placement depends on, per backend and server, besides the user.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint {
    backends: usize,
    servers: Vec<(String, bool, u64, ServerState)>,
    maps: u64,
}

impl Director {
    /// Runs the reconcile loop until `shutdown` is cancelled. Spawn it once, on the control
    /// runtime.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut maps: u64 = 0;
        let mut last = self.fingerprint(maps);
        let mut due: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
        let mut settle_at: Option<Instant> = None;
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_goodbye = due.peek().map(|Reverse((at, _))| *at);
            let wake = [next_goodbye, settle_at].into_iter().flatten().min();
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    if self.recheck_maps() {
                        maps += 1;
                    }
                }
                () = self.changed.notified() => {}
                () = sleep_until(wake), if wake.is_some() => {}
            }
            let now = Instant::now();
            let fp = self.fingerprint(maps);
            let settled = settle_at.is_some_and(|at| at <= now);
            if fp != last || settled {
                settle_at = (fp != last).then_some(now + SETTLE);
                last = fp;
                self.scan(&mut due, now);
            }
            while due.peek().is_some_and(|Reverse((at, _))| *at <= now) {
                if let Some(Reverse((_, id))) = due.pop() {
                    self.goodbye_if_still_moved(id);
                }
            }
        }
    }

    fn fingerprint(&self, maps: u64) -> Fingerprint {
        let backends = self.backends.load();
        let mut servers = Vec::new();
        for b in backends.iter().filter(|b| b.route.is_some()) {
            for s in b.pool.servers() {
                let state = self.states.get(&b.name, &s.label);
                servers.push((
                    format!("{}/{}", b.name, s.label),
                    s.up,
                    s.transitions,
                    state,
                ));
            }
        }
        Fingerprint {
            backends: Arc::as_ptr(&backends) as usize,
            servers,
            maps,
        }
    }

    /// Schedules a goodbye for every session whose user belongs elsewhere now.
    fn scan(&self, due: &mut BinaryHeap<Reverse<(Instant, u64)>>, now: Instant) {
        let mut moved = Vec::new();
        let mut placements = Placements::new(self);
        for s in self.registry.all() {
            if s.leaving {
                continue;
            }
            if placements.server_of(&s.backend, &s.key).as_deref() != Some(s.server.as_str()) {
                moved.push(s);
            }
        }
        if moved.is_empty() {
            return;
        }
        moved.sort_by_key(|s| s.started);
        let spread = self.spread();
        let n = moved.len() as u32;
        info!(
            sessions = moved.len(),
            spread_secs = spread.as_secs_f64(),
            "users moved: asking their sessions on the old servers to leave"
        );
        for (i, s) in moved.into_iter().enumerate() {
            if self.registry.mark(s.id, true) {
                due.push(Reverse((now + spread * i as u32 / n, s.id)));
            }
        }
    }

    fn goodbye_if_still_moved(&self, id: u64) {
        let Some(s) = self.registry.get(id) else {
            return;
        };
        let now = Placements::new(self).server_of(&s.backend, &s.key);
        if now.as_deref() == Some(s.server.as_str()) {
            // Placement flipped back while the goodbye waited: the session may stay.
            self.registry.mark(id, false);
        } else {
            self.registry.tell(id);
        }
    }
}

/// Placements computed once per (backend, user) during one scan.
struct Placements<'a> {
    director: &'a Director,
    backends: Arc<Vec<Arc<Backend>>>,
    servers: HashMap<String, Vec<postern_backend_pool::ServerStatus>>,
    cache: HashMap<(String, String), Option<String>>,
}

impl<'a> Placements<'a> {
    fn new(director: &'a Director) -> Self {
        Placements {
            director,
            backends: director.backends.load_full(),
            servers: HashMap::new(),
            cache: HashMap::new(),
        }
    }

    /// The server `user` (normalised) belongs on in `backend` now; None when nowhere (or the
    /// backend is gone): such a session is asked to leave too.
    fn server_of(&mut self, backend: &str, user: &str) -> Option<String> {
        let key = (backend.to_owned(), user.to_owned());
        if let Some(found) = self.cache.get(&key) {
            return found.clone();
        }
        let found = self.compute(backend, user);
        self.cache.insert(key, found.clone());
        found
    }

    fn compute(&mut self, backend: &str, user: &str) -> Option<String> {
        let b = self.backends.iter().find(|b| b.name == backend)?;
        let servers = self
            .servers
            .entry(backend.to_owned())
            .or_insert_with(|| b.pool.servers());
        let placed = self.director.placement_in(b, servers, user)?;
        Some(servers[placed.index].label.clone())
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
