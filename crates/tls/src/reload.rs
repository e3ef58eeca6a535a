//! The retrying reload: read every file, skip when nothing changed, re-check a failure for a
//! replacement still being written, and report a failure once, not on every re-check.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::fingerprint::fingerprint;
use crate::store::Store;
use crate::TlsError;

/// Serialises reloads and remembers the last failure (the rejected files' fingerprint, or
/// the read error's text), so the periodic re-check of a still-broken file does not log and
/// count the same failure every minute.
#[derive(Debug, Default)]
pub(crate) struct Reloader {
    last_failed: Mutex<Option<Vec<u8>>>,
}

impl Reloader {
    /// Reloads every source of `store`; `Ok(false)` when the bytes on disk are what is already
    /// served. On failure, also tells whether it repeats the previous one (same bytes), in
    /// which case it was neither logged nor counted again. With `settle`, a failure is first
    /// re-checked after that long (blocking): if the files changed meanwhile, the read caught
    /// a replacement half-way (new key, old certificate) and is retried, unreported.
    pub(crate) fn reload(
        &self,
        store: &Store,
        settle: Option<Duration>,
    ) -> Result<bool, (TlsError, bool)> {
        let mut last_failed = self.lock();
        reload_locked(&mut last_failed, store, settle)
    }

    /// Runs `write`, then reloads, holding the reload lock throughout. A failed `write` is
    /// returned as is and nothing is reloaded.
    pub(crate) fn write_then_reload<E>(
        &self,
        store: &Store,
        write: impl FnOnce() -> Result<(), E>,
    ) -> Result<Result<bool, TlsError>, E> {
        let mut last_failed = self.lock();
        write()?;
        Ok(reload_locked(&mut last_failed, store, None).map_err(|(error, _)| error))
    }

    fn lock(&self) -> MutexGuard<'_, Option<Vec<u8>>> {
        match self.last_failed.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

fn reload_locked(
    last_failed: &mut Option<Vec<u8>>,
    store: &Store,
    settle: Option<Duration>,
) -> Result<bool, (TlsError, bool)> {
    let mut retries = if settle.is_some() {
        TORN_READ_RETRIES
    } else {
        0
    };
    loop {
        let (snapshot, result) = match store.read_snapshot() {
            Ok(snapshot) => {
                if store.current_fingerprint() == fingerprint(&snapshot.files) {
                    *last_failed = None;
                    return Ok(false);
                }
                let built = store.build(&snapshot);
                (Some(snapshot), built)
            }
            Err(error) => (None, Err(error)),
        };
        let error = match result {
            Ok((set, warnings)) => {
                *last_failed = None;
                store.publish(set, &warnings);
                return Ok(true);
            }
            Err(error) => error,
        };
        if let Some(wait) = settle {
            // Wait for the writer to finish: poll for changed bytes a few times.
            let wait = wait.max(TORN_READ_MIN_WAIT);
            let mut changed = false;
            while retries > 0 && !changed {
                retries -= 1;
                // The watcher runs this on a spawn_blocking thread (cert_watcher.rs), where
                // blocking is the point; Tls::reload callers accept the settle wait.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(wait);
                changed = store.read_snapshot().ok() != snapshot;
            }
            if changed {
                continue;
            }
        }
        // The same bytes failing again (or the same file unreadable for the same reason,
        // e.g. after a privilege drop) is one failure, not one per minute.
        let failed = match &snapshot {
            Some(snapshot) => fingerprint(&snapshot.files),
            None => error.chain().into_bytes(),
        };
        let repeated = last_failed.as_ref() == Some(&failed);
        if !repeated {
            store.reject(&error);
            *last_failed = Some(failed);
        }
        return Err((error, repeated));
    }
}

/// How often, and how far apart at least, a failed reload under the watcher is re-checked for
/// a replacement still being written (a failure is reported after ~0.3 s of unchanged files).
const TORN_READ_RETRIES: u32 = 3;
const TORN_READ_MIN_WAIT: Duration = Duration::from_millis(100);
