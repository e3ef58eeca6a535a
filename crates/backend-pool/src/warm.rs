//! Warm connections: pre-connected, pre-greeted spares of one server.
//!
//! Valid only with `forward_client = "none"`: a PROXY header must be the first byte and
//! ID/XCLIENT carry the client address, neither known before the session exists. A spare is
//! used at most [`MAX_AGE`] after its greeting (backends time out idle pre-login
//! connections, Dovecot after about a minute) and dropped when its server goes down.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::stream::BackendStream;

/// Spares older than this are closed instead of handed out.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(30);

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
        while let Some(spare) = q.pop_back() {
            if spare.since.elapsed() < MAX_AGE && still_open(&spare) {
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
/// a non-blocking read must find nothing to read.
fn still_open(spare: &Spare) -> bool {
    let mut chunk = [0u8; 512];
    let read = match &spare.stream {
        BackendStream::Tcp(s) => s.try_read(&mut chunk),
        BackendStream::Unix(s) => s.try_read(&mut chunk),
        BackendStream::Exec(_) => return false,
    };
    match read {
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    }
}
