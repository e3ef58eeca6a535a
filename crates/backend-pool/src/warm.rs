//! Warm connections: the pre-connected, pre-greeted spares of one server, one queue per
//! worker, and the loop that keeps each filled.
//!
//! Each worker's spares are connected by a task on that worker's own runtime and taken only
//! by sessions on that worker (matched by thread): a spare's socket is registered with the
//! reactor of the runtime that drives it, so its readiness events never cross threads. The
//! `warm` spares of a server are shared out over the workers (each keeps
//! `ceil(warm / workers)`).
//!
//! Valid only with `forward_client = "none"`: a PROXY header must be the first byte and
//! ID/XCLIENT carry the client address, neither known before the session exists. A spare is
//! used at most [`MAX_AGE`] after its greeting (backends time out idle pre-login
//! connections, Dovecot after about a minute) and dropped when its server goes down.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::ThreadId;
use std::time::Duration;

use postern_config::ForwardClient;
use postern_metrics::ErrorChain;
use tokio::io::AsyncRead;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::dial::{self, Handshake};
use crate::pool::Pool;
use crate::server::Server;
use crate::stream::BackendStream;

/// Spares older than this are closed instead of handed out.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(30);
/// How often spares are topped up.
const WARM_REFILL: Duration = Duration::from_millis(100);

/// One server's spares: a queue per worker thread that keeps some.
#[derive(Debug, Default)]
pub(crate) struct Spares(Mutex<Vec<(ThreadId, Arc<WarmQueue>)>>);

impl Spares {
    /// A fresh spare connected on this thread's runtime, if one waits.
    pub(crate) fn take(&self) -> Option<Spare> {
        let me = std::thread::current().id();
        let queue = lock(&self.0)
            .iter()
            .find(|(t, _)| *t == me)
            .map(|(_, q)| Arc::clone(q))?;
        queue.take()
    }

    /// This thread's queue (made on first use).
    fn register(&self) -> Arc<WarmQueue> {
        let me = std::thread::current().id();
        let mut queues = lock(&self.0);
        if let Some((_, q)) = queues.iter().find(|(t, _)| *t == me) {
            return Arc::clone(q);
        }
        let queue = Arc::new(WarmQueue::default());
        queues.push((me, Arc::clone(&queue)));
        queue
    }

    /// Closes every worker's spares (the server went down or left the pool).
    pub(crate) fn clear(&self) {
        for (_, q) in lock(&self.0).iter() {
            q.clear();
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct WarmQueue(Mutex<VecDeque<Spare>>);

#[derive(Debug)]
pub(crate) struct Spare {
    pub(crate) stream: BackendStream,
    pub(crate) greeting: Vec<u8>,
    pub(crate) since: Instant,
}

impl WarmQueue {
    /// The newest spare that is still fresh and still open; stale ones are dropped.
    pub(crate) fn take(&self) -> Option<Spare> {
        let mut q = lock(&self.0);
        while let Some(mut spare) = q.pop_back() {
            if spare.since.elapsed() < MAX_AGE && still_open(&mut spare) {
                return Some(spare);
            }
        }
        None
    }

    pub(crate) fn push(&self, spare: Spare) {
        lock(&self.0).push_back(spare);
    }

    /// Drops stale spares; returns how many fresh ones remain.
    pub(crate) fn prune(&self) -> usize {
        let mut q = lock(&self.0);
        q.retain(|s| s.since.elapsed() < MAX_AGE);
        q.len()
    }

    pub(crate) fn clear(&self) {
        lock(&self.0).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each update is one push, pop or clear: consistent even if a holder panicked.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A spare whose server closed it, or spoke unasked (an idle `* BYE`), is not handed out:
/// a read that must not wait must find nothing to read. Over TLS a record that carries no
/// application data (a session ticket) is taken in by rustls and still counts as nothing.
fn still_open(spare: &mut Spare) -> bool {
    let mut chunk = [0u8; 512];
    let mut buf = tokio::io::ReadBuf::new(&mut chunk);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    // Pending: nothing to read; data, EOF or an error all mean "do not use".
    std::pin::Pin::new(&mut spare.stream)
        .poll_read(&mut cx, &mut buf)
        .is_pending()
}

/// Keeps up to `keep` fresh spares of one up server in this thread's queue. Runs on the
/// runtime of the worker whose sessions take them.
pub(crate) async fn warm_loop(
    pool: Weak<Pool>,
    server: Arc<Server>,
    shutdown: CancellationToken,
    keep: usize,
) {
    let queue = server.warm.register();
    let mut tick = tokio::time::interval(WARM_REFILL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = server.retired.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Some(pool) = pool.upgrade() else { break };
        if !server.is_up() {
            queue.clear();
            continue;
        }
        while queue.prune() < keep {
            let hs = Handshake {
                protocol: pool.protocol,
                forward: ForwardClient::None,
                client: None,
                label: &server.label,
                tls: pool.tls.as_ref(),
                host: server.host.as_deref(),
            };
            let result = tokio::select! {
                () = shutdown.cancelled() => break,
                () = server.retired.cancelled() => break,
                r = dial::dial(&server.addr, hs, pool.connect_timeout) => r,
            };
            match result {
                Ok((stream, greeting)) => queue.push(Spare {
                    stream,
                    greeting,
                    since: Instant::now(),
                }),
                Err(error) => {
                    tracing::debug!(backend = %pool.name, server = %server.label, error = %ErrorChain(&error), "warm connect failed");
                    break;
                }
            }
        }
    }
    queue.clear();
}
