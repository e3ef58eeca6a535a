//! Warm connections: the queue of pre-connected, pre-greeted spares of one server, and the
//! loop that keeps it filled.
//!
//! Valid only with `forward_client = "none"`: a PROXY header must be the first byte and
//! ID/XCLIENT carry the client address, neither known before the session exists. A spare is
//! used at most [`MAX_AGE`] after its greeting (backends time out idle pre-login
//! connections, Dovecot after about a minute) and dropped when its server goes down.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
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
        let mut q = self.lock();
        while let Some(mut spare) = q.pop_back() {
            if spare.since.elapsed() < MAX_AGE && still_open(&mut spare) {
                return Some(spare);
            }
        }
        None
    }

    pub(crate) fn push(&self, spare: Spare) {
        self.lock().push_back(spare);
    }

    /// Drops stale spares; returns how many fresh ones remain.
    pub(crate) fn prune(&self) -> usize {
        let mut q = self.lock();
        q.retain(|s| s.since.elapsed() < MAX_AGE);
        q.len()
    }

    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Spare>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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

/// Keeps up to `pool.warm` fresh spares for one up server.
pub(crate) async fn warm_loop(pool: Weak<Pool>, server: Arc<Server>, shutdown: CancellationToken) {
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
            server.warm.clear();
            continue;
        }
        while server.warm.prune() < pool.warm {
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
                Ok((stream, greeting)) => server.warm.push(Spare {
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
    server.warm.clear();
}
