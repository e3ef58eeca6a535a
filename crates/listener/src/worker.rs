//! Worker threads, accept loops, the connection limit and the drain schedule.
//!
//! Each worker is one OS thread running a current-thread tokio runtime. A worker owns one
//! SO_REUSEPORT socket per listen address, and every session it accepts stays on it: no
//! work stealing, no cross-thread wakeups on the hot path, and per-worker scratch buffers
//! (see the session crate's relay) can be plain thread-locals.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postern_metrics::ListenerMetrics;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// An accepted connection handed to a [`Handler`].
#[derive(Debug)]
pub struct Connection {
    /// The client socket.
    pub stream: TcpStream,
    /// Client address.
    pub peer: SocketAddr,
    /// Our address the client connected to.
    pub local: SocketAddr,
    /// Process-unique connection number (for spans).
    pub id: u64,
    /// Resolves when the drain asks this session to say goodbye and close.
    pub goodbye: Goodbye,
}

/// The drain's request to one session to leave at its next safe point.
#[derive(Debug, Clone)]
pub struct Goodbye(Rc<Notify>);

impl Goodbye {
    /// Waits until the drain asks this session to leave. Cancel-safe.
    pub async fn requested(&self) {
        self.0.notified().await;
    }
}

/// What a listener does with each accepted connection (implemented by the session crate).
pub trait Handler: Send + Sync + 'static {
    /// Runs one session to its end. Runs on the accepting worker's thread.
    fn handle(self: Arc<Self>, conn: Connection) -> Pin<Box<dyn Future<Output = ()>>>;
}

/// One listener's sockets and its handler, to be spread over the workers.
pub struct WorkerListener {
    /// The listener's name (for logs).
    pub name: String,
    /// `workers` sockets per listen address, as returned by [`crate::bind_reuseport`] for each
    /// address and concatenated: socket `j` goes to worker `j % workers`.
    pub sockets: Vec<std::net::TcpListener>,
    /// The session handler.
    pub handler: Arc<dyn Handler>,
    /// Pre-resolved metrics of this listener.
    pub metrics: ListenerMetrics,
}

impl std::fmt::Debug for WorkerListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerListener")
            .field("name", &self.name)
            .field("sockets", &self.sockets.len())
            .finish()
    }
}

/// The running workers and the controls the gateway uses to drain them.
#[derive(Debug)]
pub struct Workers {
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Each worker's runtime, for work that must run where the sessions run (warm spares).
    runtimes: Vec<tokio::runtime::Handle>,
    shared: Arc<Shared>,
    stop_accepting: CancellationToken,
    hard_stop: CancellationToken,
    drain: watch::Sender<Option<Duration>>,
}

#[derive(Debug)]
struct Shared {
    active: AtomicUsize,
    /// `server.max_connections`; a config reload may change it.
    max: AtomicUsize,
    next_id: AtomicU64,
    idle: Notify,
}

impl Workers {
    /// Starts `count` worker threads serving `listeners`, with at most `max_connections`
    /// sessions open at once across all of them.
    pub fn spawn(
        count: usize,
        listeners: Vec<WorkerListener>,
        max_connections: usize,
    ) -> io::Result<Workers> {
        let count = count.max(1);
        let shared = Arc::new(Shared {
            active: AtomicUsize::new(0),
            max: AtomicUsize::new(max_connections),
            next_id: AtomicU64::new(1),
            idle: Notify::new(),
        });
        let stop_accepting = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let (drain, drain_rx) = watch::channel(None);

        // Deal the sockets out to the workers before any thread starts.
        let mut per_worker: Vec<Vec<WorkerSocket>> = (0..count).map(|_| Vec::new()).collect();
        for l in listeners {
            for (j, socket) in l.sockets.into_iter().enumerate() {
                per_worker[j % count].push((
                    l.name.clone(),
                    socket,
                    Arc::clone(&l.handler),
                    l.metrics.clone(),
                ));
            }
        }

        let mut threads = Vec::with_capacity(count);
        let mut runtimes = Vec::with_capacity(count);
        for (index, sockets) in per_worker.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtimes.push(runtime.handle().clone());
            let ctx = WorkerCtx {
                shared: Arc::clone(&shared),
                stop_accepting: stop_accepting.clone(),
                hard_stop: hard_stop.clone(),
                drain: drain_rx.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("postern-w{index}"))
                .spawn(move || run_worker(runtime, sockets, ctx))?;
            threads.push(thread);
        }
        Ok(Workers {
            threads,
            runtimes,
            shared,
            stop_accepting,
            hard_stop,
            drain,
        })
    }

    /// Each worker's runtime. A task spawned on one runs on that worker's thread, between
    /// its sessions' tasks, and every socket it opens is driven by that worker's reactor.
    pub fn runtimes(&self) -> &[tokio::runtime::Handle] {
        &self.runtimes
    }

    /// Sessions open right now, across all workers.
    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::Acquire)
    }

    /// Changes `server.max_connections` for connections accepted from now on (a config
    /// reload); sessions already open are never closed for it.
    pub fn set_max_connections(&self, max: usize) {
        self.shared.max.store(max, Ordering::Release);
    }

    /// Closes every listening socket: from now on the kernel refuses new connections.
    pub fn stop_accepting(&self) {
        self.stop_accepting.cancel();
    }

    /// Asks every open session to say goodbye and close, oldest first, spread evenly over
    /// `spread` (per worker) so that clients do not all reconnect in the same second.
    pub fn request_goodbyes(&self, spread: Duration) {
        self.drain.send_replace(Some(spread));
    }

    /// Waits until no session is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.shared.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Ends every remaining session at once and joins the worker threads.
    pub fn shutdown(self) {
        self.stop_accepting.cancel();
        self.hard_stop.cancel();
        for t in self.threads {
            if t.join().is_err() {
                warn!("a worker thread panicked during shutdown");
            }
        }
    }
}

struct WorkerCtx {
    shared: Arc<Shared>,
    stop_accepting: CancellationToken,
    hard_stop: CancellationToken,
    drain: watch::Receiver<Option<Duration>>,
}

/// Sessions open on this worker, for the drain schedule.
type Registry = Rc<RefCell<HashMap<u64, (Instant, Rc<Notify>)>>>;

/// One listening socket as dealt to a worker: listener name, socket, handler, metrics.
type WorkerSocket = (
    String,
    std::net::TcpListener,
    Arc<dyn Handler>,
    ListenerMetrics,
);

fn run_worker(runtime: tokio::runtime::Runtime, sockets: Vec<WorkerSocket>, ctx: WorkerCtx) {
    let local = tokio::task::LocalSet::new();
    let registry: Registry = Rc::default();
    let hard_stop = ctx.hard_stop.clone();
    local.block_on(&runtime, async move {
        for (name, socket, handler, metrics) in sockets {
            let listener = match tokio::net::TcpListener::from_std(socket) {
                Ok(l) => l,
                Err(error) => {
                    warn!(listener = %name, %error, "cannot register listening socket with the runtime");
                    continue;
                }
            };
            tokio::task::spawn_local(accept_loop(
                name,
                listener,
                handler,
                metrics,
                Arc::clone(&ctx.shared),
                Rc::clone(&registry),
                ctx.stop_accepting.clone(),
            ));
        }
        tokio::task::spawn_local(drain_schedule(ctx.drain, Rc::clone(&registry)));
        hard_stop.cancelled().await;
    });
    // Dropping the LocalSet drops every remaining session (sockets close); inside the
    // runtime's context so that their I/O deregisters cleanly. A blocking task still in
    // flight (a DNS lookup) must not hold the process: give it a second at most.
    {
        let _guard = runtime.enter();
        drop(local);
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
}

async fn accept_loop(
    name: String,
    listener: tokio::net::TcpListener,
    handler: Arc<dyn Handler>,
    metrics: ListenerMetrics,
    shared: Arc<Shared>,
    registry: Registry,
    stop: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => {
                backoff = BACKOFF_MIN;
                conn
            }
            Err(error) if is_per_connection(&error) => {
                // The connection that failed is gone; the next one is served at once.
                metrics.accept_errors.inc();
                debug!(listener = %name, %error, "accept: pending connection failed");
                continue;
            }
            Err(error) => {
                // EMFILE/ENFILE/ENOBUFS/ENOMEM persist while the socket stays readable:
                // without a pause this loop would spin (tokio-rs/tokio#3529). Never exit on
                // them. An error of no known kind pauses too, rather than risk a spin.
                metrics.accept_errors.inc();
                warn!(listener = %name, %error, pause_ms = backoff.as_millis() as u64, "accept failed; pausing this acceptor");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        metrics.accepted.inc();
        let Some(permit) = Permit::acquire(&shared) else {
            metrics.rejected_limit.inc();
            debug!(listener = %name, %peer, "connection refused: server.max_connections reached");
            drop(stream);
            continue;
        };
        let local = stream.local_addr().unwrap_or(peer);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Rc::new(Notify::new());
        registry
            .borrow_mut()
            .insert(id, (Instant::now(), Rc::clone(&notify)));
        let entry = RegistryEntry {
            registry: Rc::clone(&registry),
            id,
        };
        let active = ActiveGauge::new(&metrics);
        let conn = Connection {
            stream,
            peer,
            local,
            id,
            goodbye: Goodbye(notify),
        };
        let fut = Arc::clone(&handler).handle(conn);
        tokio::task::spawn_local(async move {
            let _permit = permit;
            let _entry = entry;
            let _active = active;
            fut.await;
        });
    }
    debug!(listener = %name, "acceptor stopped; listening socket closed");
}

/// Errors that concern one pending connection, not the listening socket: the kernel
/// reports a connection's network error from `accept` (accept(2): "Linux accept() passes
/// already-pending network errors on the new socket as an error code"), and a firewall
/// verdict as EPERM. Only resource exhaustion (EMFILE, ENFILE, ENOBUFS, ENOMEM) and errors
/// of no known kind are worth a pause.
fn is_per_connection(e: &io::Error) -> bool {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) {
        return true;
    }
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EPROTO
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
                | libc::EPERM
                | libc::ETIMEDOUT
        )
    )
}

async fn drain_schedule(mut drain: watch::Receiver<Option<Duration>>, registry: Registry) {
    let spread = loop {
        if let Some(spread) = *drain.borrow_and_update() {
            break spread;
        }
        if drain.changed().await.is_err() {
            return;
        }
    };
    let mut sessions: Vec<(Instant, Rc<Notify>)> = registry.borrow().values().cloned().collect();
    sessions.sort_by_key(|(started, _)| *started); // oldest first
    let start = Instant::now();
    let n = sessions.len().max(1) as u32;
    for (i, (_, notify)) in sessions.into_iter().enumerate() {
        tokio::time::sleep_until(start + spread * i as u32 / n).await;
        notify.notify_one();
    }
}

/// One slot under `server.max_connections`; released on drop.
struct Permit(Arc<Shared>);

impl Permit {
    fn acquire(shared: &Arc<Shared>) -> Option<Permit> {
        let mut current = shared.active.load(Ordering::Relaxed);
        let max = shared.max.load(Ordering::Acquire);
        loop {
            if current >= max {
                return None;
            }
            match shared.active.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Permit(Arc::clone(shared))),
                Err(seen) => current = seen,
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

struct RegistryEntry {
    registry: Registry,
    id: u64,
}

impl Drop for RegistryEntry {
    fn drop(&mut self) {
        self.registry.borrow_mut().remove(&self.id);
    }
}

struct ActiveGauge(postern_metrics::IntGauge);

impl ActiveGauge {
    fn new(m: &ListenerMetrics) -> Self {
        m.active.inc();
        ActiveGauge(m.active.clone())
    }
}

impl Drop for ActiveGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_resource_exhaustion_pauses_the_acceptor() {
        let os = io::Error::from_raw_os_error;
        for errno in [
            libc::ECONNABORTED,
            libc::EPROTO,
            libc::ENETUNREACH,
            libc::EHOSTUNREACH,
            libc::EPERM,
            libc::ENETDOWN,
            libc::ENOPROTOOPT,
            libc::EHOSTDOWN,
            libc::ENONET,
            libc::EOPNOTSUPP,
            libc::ETIMEDOUT,
            libc::EINTR,
            libc::EAGAIN,
            libc::ECONNRESET,
        ] {
            assert!(
                is_per_connection(&os(errno)),
                "errno {errno} must not pause"
            );
        }
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EBADF,
        ] {
            assert!(!is_per_connection(&os(errno)), "errno {errno} pauses");
        }
    }
}
