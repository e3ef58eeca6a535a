//! The postern gateway as a library: wires config, certificates, backend pools, workers and
//! the admin endpoint together, and runs the drain. `main.rs` only parses the command
//! line, installs logging and signals, and maps errors to exit codes.
//!
//! # Invariants
//! - Everything that can fail because of the configuration or the host (certificates,
//!   binds, the admin address, the privilege drop) fails in [`Gateway::start`], before
//!   `ready` is logged or sent to systemd.
//! - Privileges are dropped after every socket is bound and every key is read, and before
//!   any session is accepted; the ambient and inheritable capability sets are cleared then
//!   too, so no `exec` child inherits a capability.

mod config_watcher;
mod exit;
mod live;
pub mod logfilter;
pub mod privdrop;
mod reload;
pub mod rlimit;

pub use exit::Exit;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use postern_backend_pool::Pool;
use postern_config::Config;
use postern_director::control::ControlSocket;
use postern_director::Director;
use postern_listener::{bind_reuseport, BindError, WorkerListener, Workers};
use postern_metrics::Metrics;
use postern_session::{EdgeState, SessionHandler};
use postern_tls::{Tls, TlsError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config_watcher::watch_config;
pub use reload::ReloadError;

use crate::live::Live;

/// Why the gateway could not start. [`StartError::exit_code`] maps it to the exit statuses of README.md's command-line table.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A certificate or key problem.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A listen address could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The admin address could not be bound.
    #[error(
        "cannot listen on admin.listen = {addr}: {source}; free the port or change admin.listen"
    )]
    Admin {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The privilege drop failed.
    #[error(transparent)]
    PrivDrop(#[from] privdrop::PrivDropError),
    /// A `user_map` could not be used.
    #[error(transparent)]
    Director(#[from] postern_director::DirectorError),
    /// Worker threads could not be started.
    #[error("cannot start worker threads: {0}")]
    Runtime(#[source] std::io::Error),
    /// `[tls.acme]`: `challenge_listen` could not be bound, or the CA's roots are unusable.
    #[error(transparent)]
    Acme(#[from] postern_tls::acme::AcmeError),
    /// A backend's TLS material (`tls_ca`, the system roots) does not load.
    #[error(transparent)]
    Backend(#[from] postern_backend_pool::BuildError),
}

impl StartError {
    /// 2 for problems in the configuration or the files it names, 1 for the rest.
    pub fn exit_code(&self) -> Exit {
        match self {
            StartError::Tls(_)
            | StartError::PrivDrop(_)
            | StartError::Director(_)
            | StartError::Backend(_) => Exit::BadConfig,
            StartError::Acme(e) if !e.is_bind() => Exit::BadConfig,
            StartError::Bind(_)
            | StartError::Admin { .. }
            | StartError::Runtime(_)
            | StartError::Acme(_) => Exit::Failure,
        }
    }
}

/// Applies a new `[log] level` (a tracing filter directive); set by `main.rs`, which owns
/// the subscriber. `Err` carries the filter's complaint.
pub struct LogLevelHook(pub Box<SetLevel>);

/// What a [`LogLevelHook`] calls with the new level.
pub type SetLevel = dyn Fn(&str) -> Result<(), String> + Send;

impl std::fmt::Debug for LogLevelHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogLevelHook")
    }
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// The configuration in force and its pools; replaced by [`Gateway::reload`].
    live: Live,
    /// One per running listener, in `live.config.listeners` order.
    handlers: Vec<Arc<SessionHandler>>,
    /// The pools `/readyz` looks at.
    ready_pools: Arc<ArcSwap<Vec<Arc<Pool>>>>,
    hostname: String,
    log_level: Option<LogLevelHook>,
    workers: Workers,
    draining: Arc<AtomicBool>,
    control: CancellationToken,
    bound: Vec<(String, SocketAddr)>,
    admin: SocketAddr,
    metrics: Metrics,
    /// The ACME task, for a config reload to hand it a new `[tls.acme]`.
    acme: Option<postern_tls::acme::AcmeHandle>,
    director: Arc<Director>,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy)]
pub struct DrainReport {
    /// Sessions still open when the grace ended (closed at once).
    pub left: usize,
    /// A second signal cut the drain short.
    pub interrupted: bool,
}

impl Gateway {
    /// Loads certificates, builds the pools, binds every listener and the admin endpoint,
    /// drops privileges, and starts the workers and the background tasks. Must run inside
    /// the control runtime (a tokio runtime that lives as long as the gateway).
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        check_nofile(config.server.max_connections);
        let metrics = Metrics::new(env!("CARGO_PKG_VERSION"));
        metrics.set_max_connections(config.server.max_connections as i64);
        let tls = Tls::load(&config.tls, &config.server.state_dir, metrics.tls())?;
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into());

        let control = CancellationToken::new();
        for name in &config.unused_backends {
            warn!(backend = %name, "no listener uses this backend; it is ignored");
        }

        let live = Live::build(config, &[], &metrics, &control)?;
        let config = Arc::clone(&live.config);
        // Placement, server states and routed sessions: one for the process, kept across
        // reloads (states live in state_dir).
        let director = Arc::new(Director::new(&config, &live.pool_list(), &metrics)?);

        // Bind everything before anything is served or privileges are dropped.
        let workers = config.server.workers.get();
        let mut bound = Vec::new();
        let mut worker_listeners = Vec::new();
        let mut handlers = Vec::with_capacity(config.listeners.len());
        // One per process: SO_REUSEPORT spreads an address over every worker and listener;
        // it lives in the handlers, so a reload (which swaps their policies) keeps it. Sized
        // by max_connections at start (a reload that raises it keeps the table's bound).
        let edge = EdgeState::new(config.server.max_connections);
        for (index, l) in config.listeners.iter().enumerate() {
            let mut sockets = Vec::new();
            for addr in &l.listen {
                let socks = bind_reuseport(&l.name, *addr, workers)?;
                if let Some(first) = socks.first() {
                    let actual = first.local_addr().map_err(|source| BindError::Other {
                        addr: *addr,
                        listener: l.name.clone(),
                        source,
                    })?;
                    bound.push((l.name.clone(), actual));
                }
                sockets.extend(socks);
            }
            let handler = Arc::new(SessionHandler::new(
                live.policy(index, &hostname, &director),
                tls.server_config(l.protocol.alpn()),
                metrics.listener(&l.name),
                edge.clone(),
            ));
            handlers.push(Arc::clone(&handler));
            worker_listeners.push(WorkerListener {
                name: l.name.clone(),
                sockets,
                handler,
                metrics: metrics.listener(&l.name),
            });
        }
        let admin_listener = tokio::net::TcpListener::bind(config.admin.listen)
            .await
            .map_err(|source| StartError::Admin {
                addr: config.admin.listen,
                source,
            })?;
        let admin = admin_listener
            .local_addr()
            .map_err(|source| StartError::Admin {
                addr: config.admin.listen,
                source,
            })?;

        // Port 443 or 80: bound before the privilege drop, served by the ACME task.
        let acme_sockets = config
            .tls
            .acme
            .as_ref()
            .map(postern_tls::acme::bind)
            .transpose()?;

        if let Some(user) = &config.server.user {
            if let Some(acme) = &config.tls.acme {
                // The ACME task writes state_dir/acme/ after the drop: give it to the user.
                let (uid, gid) = privdrop::resolve(user, config.server.group.as_deref())?;
                postern_tls::acme::prepare_for_user(acme, uid.as_raw(), gid.as_raw())?;
            }
            let (uid, gid) = privdrop::drop_privileges(user, config.server.group.as_deref())?;
            info!(user = %user, uid = uid.as_raw(), gid = gid.as_raw(), "dropped privileges");
        }

        drop_inheritable_capabilities();

        // After the privilege drop, so that the socket belongs to postern's own user. A new
        // instance on the same state_dir (blue/green upgrade) takes the socket over. A socket
        // that cannot be made (state_dir not writable after the drop) leaves the gateway
        // serving without `postern ctl`, loudly.
        let control_socket = match ControlSocket::bind(&config.server.state_dir) {
            Ok(socket) => Some(socket),
            Err(e) => {
                warn!(error = %postern_metrics::ErrorChain(&e), "running without the control socket: postern ctl will not reach this instance");
                None
            }
        };
        let draining = Arc::new(AtomicBool::new(false));
        tokio::spawn(Arc::clone(&director).run(control.child_token()));
        if let Some(socket) = control_socket {
            info!(path = %socket.path().display(), "control socket listening");
            tokio::spawn(socket.serve(Arc::clone(&director), control.child_token()));
        }
        if config.tls.watch {
            tls.spawn_watcher(control.child_token())?;
        }
        let acme = match (&config.tls.acme, acme_sockets) {
            (Some(acme), Some(sockets)) => {
                Some(tls.spawn_acme(acme, sockets, control.child_token())?)
            }
            _ => None,
        };
        let ready_pools = Arc::new(ArcSwap::from_pointee(live.pool_list()));
        let ready = {
            let draining = Arc::clone(&draining);
            let pools = Arc::clone(&ready_pools);
            Arc::new(move || -> Result<(), String> {
                if draining.load(Ordering::Acquire) {
                    return Err("draining".into());
                }
                match pools.load().iter().find(|p| !p.any_up()) {
                    Some(p) => Err(format!("backend {:?} has no server up", p.name())),
                    None => Ok(()),
                }
            })
        };
        tokio::spawn(postern_metrics::serve_admin(
            admin_listener,
            metrics.clone(),
            ready,
            control.child_token(),
        ));

        let workers = Workers::spawn(workers, worker_listeners, config.server.max_connections)
            .map_err(StartError::Runtime)?;
        // After the workers exist: their runtimes keep the warm spares their sessions take.
        live.start(workers.runtimes());
        for (name, addr) in &bound {
            info!(listener = %name, addr = %addr, "listening");
        }
        info!(addr = %admin, "admin listening");
        Ok(Gateway {
            live,
            handlers,
            ready_pools,
            hostname,
            log_level: None,
            workers,
            draining,
            control,
            bound,
            admin,
            metrics,
            acme,
            director,
        })
    }

    /// The ACME task, when `[tls.acme]` is on: a SIGHUP reload passes the new `[tls.acme]`
    /// to [`postern_tls::acme::AcmeHandle::update`] (`challenge_listen` needs a restart).
    pub fn acme(&self) -> Option<&postern_tls::acme::AcmeHandle> {
        self.acme.as_ref()
    }

    /// The bound address of every listen socket, by listener name (port 0 resolved).
    pub fn bound(&self) -> &[(String, SocketAddr)] {
        &self.bound
    }

    /// The admin endpoint's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Placement, server states and routed sessions.
    pub fn director(&self) -> &Arc<Director> {
        &self.director
    }

    /// Sessions open right now.
    pub fn active(&self) -> usize {
        self.workers.active()
    }

    /// Where `[log] level` goes on a reload (`main.rs` owns the subscriber). Without a hook
    /// (or with `RUST_LOG` set, which overrides the file) the level stays as started.
    pub fn set_log_level_hook(&mut self, hook: LogLevelHook) {
        self.log_level = Some(hook);
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.live.config
    }

    /// Re-reads the configuration file (README.md, Command line; SIGHUP or a change of the file) and, when it
    /// validates as `check-config` would have it, applies it to new sessions at once: the
    /// backends (servers, balance, forwarding, health, TLS), `[limits]`, each listener's
    /// access lists, timeouts and backend, `server.max_connections`, the drain timing and
    /// `[log] level`. Open sessions keep what they started with, their backend included.
    /// Keys that need a restart keep their running value and are logged. On any error the
    /// whole running configuration stays, each problem is logged, and
    /// `postern_config_reloads_total{result="error"}` counts it.
    pub async fn reload(&mut self, trigger: &'static str) -> Result<(), ReloadError> {
        let result = self.try_reload(trigger).await;
        self.metrics.config_reload(result.is_ok());
        if let Err(error) = &result {
            let file = self.live.config.source.to_string();
            for line in error.lines() {
                tracing::error!(config = %file, trigger, "{line}");
            }
            warn!(config = %file, trigger, "configuration reload failed; the running configuration stays in force");
        }
        result
    }

    async fn try_reload(&mut self, trigger: &'static str) -> Result<(), ReloadError> {
        let source = self.live.config.source.clone();
        let next = tokio::task::spawn_blocking(move || reload::load(&source))
            .await
            .map_err(ReloadError::Task)??;
        let merged = reload::merge(&self.live.config, next);
        for key in &merged.restart {
            warn!(key = %key, "configuration change needs a restart; the running value stays until then");
        }
        // Off the runtime threads: new pools read their `tls_ca` files.
        let (previous, metrics, control) = (
            self.live.pools.clone(),
            self.metrics.clone(),
            self.control.clone(),
        );
        let next = tokio::task::spawn_blocking(move || {
            Live::build(merged.config, &previous, &metrics, &control)
        })
        .await
        .map_err(ReloadError::Task)?
        .map_err(ReloadError::Backend)?;
        // The last step that can refuse (a new user_map must parse); it swaps the director's
        // routing in one store when it succeeds.
        self.director
            .update(&next.config, &next.pool_list())
            .map_err(ReloadError::Director)?;
        // Everything is built: from here on nothing fails.
        next.start(self.workers.runtimes());
        for (index, handler) in self.handlers.iter().enumerate() {
            handler.set_policy(next.policy(index, &self.hostname, &self.director));
        }
        self.ready_pools.store(Arc::new(next.pool_list()));
        let server = &next.config.server;
        self.workers.set_max_connections(server.max_connections);
        self.metrics
            .set_max_connections(server.max_connections as i64);
        if let Some(hook) = &self.log_level {
            if let Err(reason) = (hook.0)(&next.config.log.level) {
                warn!(level = %next.config.log.level, %reason, "log level not changed");
            }
        }
        if let (Some(handle), Some(acme)) = (&self.acme, &next.config.tls.acme) {
            handle.update(acme);
        }
        self.live.retire(&next);
        let changed = next.pools.iter().filter(|p| !p.reused).count();
        self.live = next;
        info!(
            config = %self.live.config.source,
            trigger,
            backends_rebuilt = changed,
            restart_needed = merged.restart.len(),
            "configuration reloaded"
        );
        Ok(())
    }

    /// The graceful drain (ARCHITECTURE.md, Shutdown): `/readyz` turns 503 and the listening sockets close
    /// at once; sessions run on for up to `server.shutdown_grace`; during the last
    /// `server.drain_spread` of it the remaining sessions are asked to leave, oldest first,
    /// spread evenly (IMAP: `* BYE [UNAVAILABLE]`, SMTP: `421`, POP3: close); whatever is still
    /// open at the end of the grace is closed. `interrupt` (a second signal) ends it at once.
    pub async fn drain(self, interrupt: impl std::future::Future<Output = ()>) -> DrainReport {
        let grace = self.live.config.server.shutdown_grace;
        let spread = self.live.config.server.drain_spread.min(grace);
        self.draining.store(true, Ordering::Release);
        self.workers.stop_accepting();
        info!(
            sessions = self.workers.active(),
            grace_secs = grace.as_secs_f64(),
            "drain started; listeners closed"
        );
        let start = tokio::time::Instant::now();
        let mut interrupt = std::pin::pin!(interrupt);
        let mut interrupted = false;
        let mut goodbyes_requested = false;
        loop {
            let goodbye_at = start + (grace - spread);
            tokio::select! {
                () = self.workers.wait_idle() => break,
                () = &mut interrupt => { interrupted = true; break; }
                () = tokio::time::sleep_until(goodbye_at), if !goodbyes_requested => {
                    goodbyes_requested = true;
                    info!(sessions = self.workers.active(), spread_secs = spread.as_secs_f64(), "asking remaining sessions to leave");
                    self.workers.request_goodbyes(spread);
                }
                () = tokio::time::sleep_until(start + grace + GOODBYE_SLACK) => break,
            }
        }
        let left = self.workers.active();
        if interrupted {
            warn!(
                sessions = left,
                "second signal: closing remaining sessions now"
            );
        } else if left > 0 {
            warn!(
                sessions = left,
                "shutdown grace elapsed; closing remaining sessions"
            );
        } else {
            info!("all sessions finished");
        }
        self.control.cancel();
        // Worker threads block while they unwind their sessions: not on the control runtime.
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || workers.shutdown()).await;
        DrainReport { left, interrupted }
    }
}

/// Clears the ambient and inheritable capability sets of this thread, before the worker
/// threads (which copy them) exist: with systemd's `AmbientCapabilities=CAP_NET_BIND_SERVICE`
/// the ambient set would otherwise pass on to every `exec` child. The sockets are bound by
/// now, so postern itself needs no capability from here on.
fn drop_inheritable_capabilities() {
    use caps::CapSet;
    for set in [CapSet::Ambient, CapSet::Inheritable] {
        if let Err(error) = caps::clear(None, set) {
            warn!(%error, set = ?set, "cannot clear a capability set; exec children may inherit it");
        }
    }
}

/// Raises the open-file soft limit to the hard one and warns when even that is short of
/// what `max_connections` sessions need (accepts would then fail with EMFILE first).
fn check_nofile(max_connections: usize) {
    match rlimit::raise_nofile() {
        Ok(l) if rlimit::short_of(l.soft, max_connections) => warn!(
            limit = l.soft,
            needed = rlimit::needed(max_connections),
            max_connections,
            "the open-file limit (RLIMIT_NOFILE) is below what server.max_connections needs (2 per session + slack); raise it (systemd: LimitNOFILE=) or lower server.max_connections"
        ),
        Ok(l) if l.before < l.soft => {
            info!(from = l.before, to = l.soft, "raised the open-file soft limit to the hard limit")
        }
        Ok(_) => {}
        Err(error) => warn!(%error, "cannot read or raise the open-file limit (RLIMIT_NOFILE)"),
    }
}

/// Time after the grace for goodbyes sent at its very end to reach the wire.
const GOODBYE_SLACK: Duration = Duration::from_millis(500);
