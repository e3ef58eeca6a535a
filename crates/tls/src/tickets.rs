//! TLS session tickets (stateless resumption) with rotating keys, one ticketer per process,
//! shared by every worker and listener through their `ServerConfig`s.
//!
//! Without `tls.ticket_key_file` the process makes its own random key and rotates it every
//! [`LIFETIME`], keeping the previous one, so a ticket opens for at least one lifetime and a
//! key lives at most two (forward secrecy of resumed sessions is bounded by that).
//! With the file, its keys are used as written: the first line seals new tickets, every line
//! opens old ones, so replicas holding the same file resume each other's clients; the
//! operator rotates by prepending a new line and later dropping the last. The file is
//! re-checked at most every [`CHECK_EVERY`] from the handshake path (one `stat`; it is read
//! only when its identity changed: inode, size or mtime — a Kubernetes Secret's symlink swap
//! and an editor's rename both show), validated whole, then swapped in. A bad file is
//! logged once and the previous keys keep serving.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use postern_metrics::FileVersion;
use rustls::server::ProducesTickets;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::ticket_keys::{self, TicketKey};
use crate::TlsError;

/// Lifetime announced in each ticket; also the rotation period of per-process keys. Mail
/// clients reconnect many times a day (several connections per account, IDLE re-arms), so
/// half a day lets most reconnects resume while bounding a key's use.
pub(crate) const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// How often the handshake path looks for a changed key file (or a due rotation).
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The keys in force; `keys[0]` seals.
#[derive(Debug)]
struct KeyRing {
    keys: Vec<TicketKey>,
}

#[derive(Debug)]
enum Source {
    Random,
    File(PathBuf),
}

#[derive(Debug)]
struct RefreshState {
    /// The file version whose keys are served (or were last rejected).
    seen: Option<FileVersion>,
    /// The last failure's text, so a file that stays broken is logged once.
    last_error: Option<String>,
    rotated_at: Instant,
}

/// rustls' `ProducesTickets` over a rotating or file-backed key ring.
#[derive(Debug)]
pub(crate) struct Ticketer {
    ring: ArcSwap<KeyRing>,
    source: Source,
    check_every: Duration,
    rotate_every: Duration,
    epoch: Instant,
    /// Milliseconds after `epoch` before which no refresh is attempted (one atomic load per
    /// ticket operation is all the hot path pays).
    next_check_ms: AtomicU64,
    refresh: Mutex<RefreshState>,
}

impl Ticketer {
    /// Per-process keys (no file), or the keys of `file`, read and validated now.
    pub(crate) fn new(file: Option<&Path>) -> Result<Arc<Ticketer>, TlsError> {
        Ticketer::with_timing(file, CHECK_EVERY, LIFETIME).map(Arc::new)
    }

    fn with_timing(
        file: Option<&Path>,
        check_every: Duration,
        rotate_every: Duration,
    ) -> Result<Ticketer, TlsError> {
        let (source, keys, seen) = match file {
            None => (Source::Random, vec![TicketKey::random()?], None),
            Some(path) => {
                let (keys, identity) = read(path)?;
                info!(
                    file = %path.display(),
                    keys = keys.len(),
                    sealing = %keys[0].name_hex(),
                    "session ticket keys loaded"
                );
                (Source::File(path.to_path_buf()), keys, Some(identity))
            }
        };
        Ok(Ticketer {
            ring: ArcSwap::from_pointee(KeyRing { keys }),
            source,
            check_every,
            rotate_every,
            epoch: Instant::now(),
            next_check_ms: AtomicU64::new(millis(check_every)),
            refresh: Mutex::new(RefreshState {
                seen,
                last_error: None,
                rotated_at: Instant::now(),
            }),
        })
    }

    /// Rotates or re-reads when due. Never blocks on another thread doing the same.
    fn maybe_refresh(&self) {
        let now = millis(self.epoch.elapsed());
        if now < self.next_check_ms.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut state) = self.refresh.try_lock() else {
            return;
        };
        self.next_check_ms
            .store(now + millis(self.check_every), Ordering::Relaxed);
        match &self.source {
            Source::Random => self.rotate_if_due(&mut state),
            Source::File(path) => self.reload_if_changed(path, &mut state),
        }
    }

    fn rotate_if_due(&self, state: &mut RefreshState) {
        if state.rotated_at.elapsed() < self.rotate_every {
            return;
        }
        match TicketKey::random() {
            Ok(fresh) => {
                let old = self.ring.load();
                // Keep only the previous key: older tickets are past their lifetime.
                let previous = old.keys.first().cloned();
                let keys = std::iter::once(fresh).chain(previous).collect();
                self.ring.store(Arc::new(KeyRing { keys }));
                state.rotated_at = Instant::now();
            }
            Err(error) => {
                warn!(error = %error.chain(), "session ticket key rotation failed; the current key stays in use")
            }
        }
    }

    fn reload_if_changed(&self, path: &Path, state: &mut RefreshState) {
        let identity = match identity(path) {
            Ok(id) => id,
            Err(error) => return self.failed(path, state, error),
        };
        if state.seen == Some(identity) {
            return;
        }
        match read(path) {
            Ok((keys, identity)) => {
                info!(
                    file = %path.display(),
                    keys = keys.len(),
                    sealing = %keys[0].name_hex(),
                    "session ticket keys reloaded"
                );
                self.ring.store(Arc::new(KeyRing { keys }));
                state.seen = Some(identity);
                state.last_error = None;
            }
            Err(error) => {
                // Remember the version: it is not re-read until it changes again.
                state.seen = Some(identity);
                self.failed(path, state, error);
            }
        }
    }

    fn failed(&self, path: &Path, state: &mut RefreshState, error: TlsError) {
        let text = error.chain();
        if state.last_error.as_ref() != Some(&text) {
            warn!(file = %path.display(), error = %text, "session ticket keys not reloaded; the previous keys stay in use");
            state.last_error = Some(text);
        }
    }

    #[cfg(test)]
    fn sealing_key_name(&self) -> String {
        self.ring.load().keys[0].name_hex()
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(self.rotate_every.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.maybe_refresh();
        self.ring.load().keys.first()?.seal(plain)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        self.maybe_refresh();
        let ring = self.ring.load();
        ring.keys.iter().find(|k| k.names(ticket))?.open(ticket)
    }
}

/// `check-config`: the file's keys, or why they are unusable. Returns the number of keys.
pub(crate) fn check(path: &Path) -> Result<usize, TlsError> {
    read(path).map(|(keys, _)| keys.len())
}

fn read(path: &Path) -> Result<(Vec<TicketKey>, FileVersion), TlsError> {
    let io_error = |source| TlsError::TicketKeyRead {
        path: path.to_path_buf(),
        source,
    };
    // Identity first: a replacement racing the read is then seen as a change next time.
    let identity = identity(path)?;
    let text = std::fs::read_to_string(path).map_err(io_error)?;
    Ok((ticket_keys::parse(path, &text)?, identity))
}

fn identity(path: &Path) -> Result<FileVersion, TlsError> {
    FileVersion::of(path).map_err(|source| TlsError::TicketKeyRead {
        path: path.to_path_buf(),
        source,
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[path = "tickets/tests.rs"]
mod tests;
