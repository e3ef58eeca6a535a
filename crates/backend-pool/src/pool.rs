//! [`Pool`]: one `[[backend]]`, its servers (or exec program), and the session connect.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postern_config::{BackendConfig, BackendTarget, Balance, ForwardClient, HealthConfig};
use postern_metrics::{ErrorChain, Metrics, ServerMetrics};
use postern_proto::Protocol;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::balance;
use crate::dial::{self, Handshake};
use crate::discover::{resolve_loop, ServerList};
use crate::error::{BuildError, PoolError, ServerError};
use crate::exec::ExecTarget;
use crate::health::{health_loop, Source};
use crate::server::{Server, ServerSlot};
use crate::stream::BackendStream;
use crate::tls::TlsClient;
use crate::warm::{warm_loop, Spare};

mod routed;

pub use routed::ServerStatus;

/// The client side of a session, for balancing (client-hash) and for forwarding the client address.
#[derive(Clone, Copy, Debug)]
pub struct ClientInfo {
    /// The client's address (source of the TCP connection to postern).
    pub peer: SocketAddr,
    /// The address the client connected to (postern's listening address).
    pub local: SocketAddr,
}

/// One `[[backend]]`: its servers (or exec program), health state, balancing and connection counts.
#[derive(Debug)]
pub struct Pool {
    // Read by the health and warm loops (health.rs, warm.rs).
    pub(crate) name: String,
    pub(crate) protocol: Protocol,
    target: Target,
    balance: Balance,
    pub(crate) forward: ForwardClient,
    pub(crate) connect_timeout: Duration,
    pub(crate) health: HealthConfig,
    max_per_server: usize,
    /// Spares per server; 0 unless `forward_client = "none"`.
    pub(crate) warm: usize,
    rotation: AtomicUsize,
    /// Set by `spawn_background`: only then may session failures mark a server down, since
    /// only probes can bring it back up.
    checks_running: AtomicBool,
    /// `route = "user"`: probes also learn each server's pre-login capabilities.
    pub(crate) learn_caps: bool,
    /// `tls`: sessions, probes and spares alike speak TLS to the servers.
    pub(crate) tls: Option<TlsClient>,
    /// `resolve_interval`: how often host names in `servers` are re-resolved.
    pub(crate) resolve_interval: Duration,
    /// The runtimes that keep warm spares (set by `spawn_background_on`).
    spare_runtimes: std::sync::Mutex<Vec<tokio::runtime::Handle>>,
}

#[derive(Debug)]
enum Target {
    Servers(ServerList),
    Exec {
        exec: ExecTarget,
        metrics: ServerMetrics,
    },
}

/// A ready backend connection; dropping it releases the server's connection count (and kills an exec child).
#[derive(Debug)]
pub struct BackendConn {
    /// The connection, positioned after the greeting (and after the forwarding exchange).
    pub stream: BackendStream,
    /// The greeting (all bytes read so far; may include bytes after the greeting, which belong to the session).
    /// For an implicit-TLS listener the session relays it to the client; after STARTTLS it is swallowed.
    /// With `forward_client = "protocol"` on SMTP this is the fresh `220` sent in reply to XCLIENT.
    pub greeting: Vec<u8>,
    /// The server label (config spelling, e.g. "127.0.0.1:143", "unix:/run/x", or "exec:/usr/sbin/imapd").
    pub server: String,
    // Declared after `stream` so the child is killed before its max_children permit returns.
    _hold: Hold,
}

#[derive(Debug)]
enum Hold {
    Server(#[allow(dead_code)] ServerSlot),
    Child(#[allow(dead_code)] OwnedSemaphorePermit),
}

impl Pool {
    /// Builds the pool; every server starts up (optimistic) until health checks say otherwise.
    /// `warm` is ignored (with a warning) unless `forward_client = "none"` and the backend
    /// has servers, since spares cannot carry a client address they do not know yet.
    /// With `tls` it reads `tls_ca` (or the system roots): blocking file reads, and the
    /// only way it fails.
    pub fn new(
        config: &BackendConfig,
        protocol: Protocol,
        metrics: &Metrics,
    ) -> Result<Arc<Pool>, BuildError> {
        let tls = match &config.tls {
            Some(tls) if matches!(config.target, BackendTarget::Servers(_)) => {
                Some(TlsClient::new(&config.name, tls)?)
            }
            _ => None,
        };
        let target = match &config.target {
            BackendTarget::Servers(addrs) => {
                Target::Servers(ServerList::new(&config.name, addrs, metrics))
            }
            BackendTarget::Exec { argv, max_children } => {
                let exec = ExecTarget::new(argv.clone(), *max_children);
                let metrics = metrics.server(&config.name, &exec.label);
                // A program has no health to probe: each session starts its own child.
                metrics.up.set(1);
                Target::Exec { exec, metrics }
            }
        };
        let mut warm = config.warm;
        if warm > 0
            && (config.forward_client != ForwardClient::None
                || matches!(target, Target::Exec { .. }))
        {
            tracing::warn!(
                backend = %config.name,
                warm,
                "`warm` ignored: spare connections need forward_client = \"none\" and network servers \
                 (a PROXY header or ID/XCLIENT must carry the client address, unknown before the session)"
            );
            warm = 0;
        }
        Ok(Arc::new(Pool {
            name: config.name.clone(),
            protocol,
            target,
            balance: config.balance,
            forward: config.forward_client,
            connect_timeout: config.connect_timeout,
            health: config.health,
            max_per_server: config.max_connections_per_server,
            warm,
            rotation: AtomicUsize::new(0),
            checks_running: AtomicBool::new(false),
            learn_caps: matches!(config.route, postern_config::Route::User(_)),
            tls,
            resolve_interval: config.resolve_interval,
            spare_runtimes: std::sync::Mutex::new(Vec::new()),
        }))
    }

    /// The `[[backend]]` name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts active health checks (and warm-connection refill, if configured) as tasks on the current
    /// tokio runtime until `shutdown` is cancelled or the pool is dropped. Exec backends have no
    /// health checks (always up). Until this is called, session failures only fail over and
    /// never mark a server down (nothing could bring it back). Spares are kept for sessions
    /// on this runtime: see [`Pool::spawn_background_on`].
    pub fn spawn_background(self: &Arc<Self>, shutdown: CancellationToken) {
        self.spawn_background_on(shutdown, &[tokio::runtime::Handle::current()]);
    }

    /// [`Pool::spawn_background`], with the warm spares of each server kept on each of
    /// `workers` (the runtimes whose sessions take them; each keeps `ceil(warm / workers)`):
    /// a spare is connected by, and only handed to, the runtime that drives it. Health
    /// checks and DNS re-resolution run on the current runtime.
    pub fn spawn_background_on(
        self: &Arc<Self>,
        shutdown: CancellationToken,
        workers: &[tokio::runtime::Handle],
    ) {
        let Target::Servers(list) = &self.target else {
            return;
        };
        *self
            .spare_runtimes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = workers.to_vec();
        self.checks_running.store(true, Ordering::Release);
        for server in list.load().iter() {
            self.spawn_server_tasks(server, &shutdown);
        }
        if list.has_names() {
            tokio::spawn(resolve_loop(Arc::downgrade(self), shutdown));
        }
    }

    /// One server's probes (on the current runtime) and spare refills (one per worker
    /// runtime), until shutdown or its retirement.
    pub(crate) fn spawn_server_tasks(
        self: &Arc<Self>,
        server: &Arc<Server>,
        shutdown: &CancellationToken,
    ) {
        tokio::spawn(health_loop(
            Arc::downgrade(self),
            Arc::clone(server),
            shutdown.clone(),
        ));
        if self.warm == 0 {
            return;
        }
        let workers = self
            .spare_runtimes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let keep = self.warm.div_ceil(workers.len().max(1));
        for worker in &workers {
            worker.spawn(warm_loop(
                Arc::downgrade(self),
                Arc::clone(server),
                shutdown.clone(),
                keep,
            ));
        }
    }

    /// The server list of a `servers` backend.
    pub(crate) fn server_list(&self) -> Option<&ServerList> {
        match &self.target {
            Target::Servers(list) => Some(list),
            Target::Exec { .. } => None,
        }
    }

    /// True when at least one server is up (for /readyz). Exec backends are always up.
    pub fn any_up(&self) -> bool {
        match &self.target {
            Target::Servers(list) => list.load().iter().any(|s| s.is_up()),
            Target::Exec { .. } => true,
        }
    }

    /// Picks a healthy server per `balance`, connects within `connect_timeout` (TCP_NODELAY on),
    /// sends the PROXY header first if configured, reads and checks the greeting (a refusal such
    /// as `* BYE`, `-ERR`, `421` is a failure), performs `forward_client = "protocol"` (its reply is
    /// consumed), and on any failure fails over to the next healthy server: each server at most
    /// once, the whole attempt within 2 × `connect_timeout`. Failures count toward passive health.
    pub async fn connect(&self, client: ClientInfo) -> Result<BackendConn, PoolError> {
        match &self.target {
            Target::Servers(list) => self.connect_servers(&list.load(), &client).await,
            Target::Exec { exec, metrics } => self.connect_exec(exec, metrics, &client).await,
        }
    }

    async fn connect_servers(
        &self,
        servers: &[Arc<Server>],
        client: &ClientInfo,
    ) -> Result<BackendConn, PoolError> {
        let budget = self.connect_timeout.saturating_mul(2);
        let deadline = Instant::now() + budget;
        let rotation = self.rotation.fetch_add(1, Ordering::Relaxed);
        let order = balance::order(
            self.balance,
            servers,
            self.max_per_server,
            client.peer.ip(),
            rotation,
        );
        if order.is_empty() {
            return Err(self.nothing_eligible(servers));
        }
        let mut tried = 0;
        let mut last_error = None;
        for server in order {
            let Some(slot) = server.try_reserve(self.max_per_server) else {
                continue;
            };
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            tried += 1;
            let attempt = self.connect_timeout.min(deadline - now);
            match self.connect_one(&server, client, attempt).await {
                Ok((stream, greeting)) => return Ok(self.ready(&server, stream, greeting, slot)),
                Err(error) => last_error = Some(error),
            }
        }
        Err(match last_error {
            Some(last_error) => PoolError::NoServerAvailable {
                backend: self.name.clone(),
                tried,
                last_error,
            },
            None if Instant::now() >= deadline => PoolError::Deadline {
                backend: self.name.clone(),
                after: budget,
            },
            // Every eligible server filled up between the choice and the reservation.
            None => self.nothing_eligible(servers),
        })
    }

    async fn connect_exec(
        &self,
        exec: &ExecTarget,
        metrics: &ServerMetrics,
        client: &ClientInfo,
    ) -> Result<BackendConn, PoolError> {
        let start = Instant::now();
        let (child, permit) = exec.spawn(&self.name, client)?;
        let mut stream = BackendStream::Exec(Box::new(child));
        let hs = Handshake {
            protocol: self.protocol,
            forward: self.forward,
            client: Some(client),
            label: &exec.label,
            tls: None,
            host: None,
        };
        match dial::handshake_within(&mut stream, hs, self.connect_timeout).await {
            Ok(greeting) => {
                metrics
                    .connect_duration
                    .observe(start.elapsed().as_secs_f64());
                Ok(BackendConn {
                    stream,
                    greeting,
                    server: exec.label.clone(),
                    _hold: Hold::Child(permit),
                })
            }
            Err(error) => {
                metrics.connect_failures.inc();
                tracing::warn!(backend = %self.name, server = %exec.label, error = %ErrorChain(&error), "exec backend did not greet");
                Err(PoolError::NoServerAvailable {
                    backend: self.name.clone(),
                    tried: 1,
                    last_error: error,
                })
            }
        }
    }

    /// One server, one attempt within `attempt`: a warm spare if one waits, else a dial
    /// (PROXY header, greeting, forwarding). Records the outcome in the server's metrics and,
    /// while health checks run, in its passive health; a failure is logged with the server.
    async fn connect_one(
        &self,
        server: &Server,
        client: &ClientInfo,
        attempt: Duration,
    ) -> Result<(BackendStream, Vec<u8>), ServerError> {
        let started = Instant::now();
        if let Some(spare) = self.warm_spare(server) {
            server
                .metrics
                .connect_duration
                .observe(started.elapsed().as_secs_f64());
            return Ok((spare.stream, spare.greeting));
        }
        let hs = Handshake {
            protocol: self.protocol,
            forward: self.forward,
            client: Some(client),
            label: &server.label,
            tls: self.tls.as_ref(),
            host: server.host.as_deref(),
        };
        match dial::dial(&server.addr, hs, attempt).await {
            Ok(conn) => {
                server
                    .metrics
                    .connect_duration
                    .observe(started.elapsed().as_secs_f64());
                server.health.record_success(
                    &self.name,
                    &server.label,
                    &self.health,
                    Source::Session,
                );
                Ok(conn)
            }
            Err(error) => {
                server.metrics.connect_failures.inc();
                tracing::warn!(
                    backend = %self.name,
                    server = %server.label,
                    error = %ErrorChain(&error),
                    "backend connect failed"
                );
                if self.checks_running.load(Ordering::Acquire) {
                    server.health.record_failure(
                        &self.name,
                        &server.label,
                        &self.health,
                        Source::Session,
                        &error,
                    );
                }
                Err(error)
            }
        }
    }

    fn ready(
        &self,
        server: &Server,
        stream: BackendStream,
        greeting: Vec<u8>,
        slot: ServerSlot,
    ) -> BackendConn {
        BackendConn {
            stream,
            greeting,
            server: server.label.clone(),
            _hold: Hold::Server(slot),
        }
    }

    fn warm_spare(&self, server: &Server) -> Option<Spare> {
        if self.warm == 0 {
            return None;
        }
        server.warm.take()
    }

    fn nothing_eligible(&self, servers: &[Arc<Server>]) -> PoolError {
        if servers.iter().any(|s| s.is_up()) {
            PoolError::AllFull {
                backend: self.name.clone(),
                limit: self.max_per_server,
            }
        } else {
            PoolError::AllDown {
                backend: self.name.clone(),
                servers: servers.len(),
            }
        }
    }
}
