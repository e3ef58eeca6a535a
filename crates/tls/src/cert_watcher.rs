//! The certificate file watcher: inotify (via notify) on the certificates' directories, a
//! debounce, and a periodic re-check for file systems whose events get lost; each wake-up
//! runs the store's reload off the runtime threads.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::load::{Source, SourceKind};
use crate::store::Store;
use crate::TlsError;

/// Timing of the certificate file watcher.
#[derive(Clone, Copy, Debug)]
pub struct CertWatcherOptions {
    /// Re-check the files this often even without events (default 60 s).
    pub poll_interval: Duration,
    /// Wait this long after the last event of a burst before reloading (default 200 ms).
    pub debounce: Duration,
}

impl Default for CertWatcherOptions {
    fn default() -> Self {
        CertWatcherOptions {
            poll_interval: crate::DEFAULT_POLL,
            debounce: crate::DEFAULT_DEBOUNCE,
        }
    }
}

pub(crate) fn spawn(
    store: Arc<Store>,
    shutdown: CancellationToken,
    options: CertWatcherOptions,
) -> Result<JoinHandle<()>, TlsError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| TlsError::NoRuntime)?;
    // The self-signed pair is postern's own and changes only at start (regeneration); after a
    // privilege drop its 0700 directory may not even be readable any more.
    if !store.watch
        || store
            .sources
            .iter()
            .all(|s| s.kind != SourceKind::Configured)
    {
        return Ok(runtime.spawn(async {}));
    }
    // Capacity 1: a pending wake-up already covers every later event of the burst.
    let (tx, rx) = mpsc::channel::<()>(1);
    let watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
        // An error (e.g. the kernel queue overflowed) may hide a change: reload to be sure.
        if event.as_ref().map_or(true, relevant) {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| TlsError::Watch {
        path: PathBuf::from("."),
        source: e,
    })?;
    let mut dirs = WatchedDirs {
        watcher,
        dirs: HashSet::new(),
    };
    dirs.update(&watch_dirs(&store.sources))?;
    Ok(runtime.spawn(run(store, dirs, rx, shutdown, options)))
}

async fn run(
    store: Arc<Store>,
    mut dirs: WatchedDirs,
    mut rx: mpsc::Receiver<()>,
    shutdown: CancellationToken,
    options: CertWatcherOptions,
) {
    let mut poll = tokio::time::interval_at(
        Instant::now() + options.poll_interval,
        options.poll_interval,
    );
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = rx.recv() => {
                if event.is_none() {
                    return; // the watcher is gone; nothing more will arrive
                }
                if !settle(&mut rx, options.debounce, &shutdown).await {
                    return;
                }
            }
            _ = poll.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let reloading = Arc::clone(&store);
        // File reads and key parsing block; keep them off the runtime's worker threads.
        match tokio::task::spawn_blocking(move || reloading.reload_logged(Some(options.debounce)))
            .await
        {
            Ok(Ok(true)) => poll.reset(),
            Ok(Ok(false)) => debug!("certificate files unchanged"),
            Ok(Err(_)) => {} // logged and counted by the store
            Err(error) => warn!(%error, "certificate reload task failed"),
        }
        store.warn_expiring();
        // Symlinks may point somewhere new (Kubernetes `..data` swap): follow them.
        if let Err(error) = dirs.update(&watch_dirs(&store.sources)) {
            warn!(error = %error.chain(), "certificate watcher could not follow the new files; the periodic re-check still applies");
        }
    }
}

/// Waits until no event has arrived for `debounce`, at most `MAX_SETTLE_FACTOR` times that
/// (a directory that never stops changing must not starve reloads). `false` on shutdown.
async fn settle(
    rx: &mut mpsc::Receiver<()>,
    debounce: Duration,
    shutdown: &CancellationToken,
) -> bool {
    let hard_deadline = Instant::now() + debounce * MAX_SETTLE_FACTOR;
    loop {
        let quiet_until = (Instant::now() + debounce).min(hard_deadline);
        tokio::select! {
            event = rx.recv() => {
                if event.is_none() || Instant::now() >= hard_deadline {
                    return true;
                }
            }
            () = tokio::time::sleep_until(quiet_until) => return true,
            () = shutdown.cancelled() => return false,
        }
    }
}

/// Our own reads open and close the files; those events must not trigger reloads.
fn relevant(event: &Event) -> bool {
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

struct WatchedDirs {
    watcher: RecommendedWatcher,
    dirs: HashSet<PathBuf>,
}

impl std::fmt::Debug for WatchedDirs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedDirs")
            .field("dirs", &self.dirs)
            .finish_non_exhaustive()
    }
}

impl WatchedDirs {
    /// Watches every directory in `want` not yet watched and drops the rest. The first
    /// directory that cannot be watched is returned as an error; the others are still tried.
    fn update(&mut self, want: &[PathBuf]) -> Result<(), TlsError> {
        let want: HashSet<PathBuf> = want.iter().cloned().collect();
        let stale: Vec<PathBuf> = self.dirs.difference(&want).cloned().collect();
        for dir in stale {
            // A deleted directory (an old Kubernetes timestamp dir) is already unwatched.
            let _ = self.watcher.unwatch(&dir);
            self.dirs.remove(&dir);
        }
        let mut first_error = None;
        for dir in want {
            if self.dirs.contains(&dir) {
                continue;
            }
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.dirs.insert(dir);
                }
                Err(e) => {
                    first_error.get_or_insert(TlsError::Watch {
                        path: dir,
                        source: e,
                    });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Directories to watch: each file's directory and, through symlinks, its target's
/// directory (Kubernetes `..data` layouts). Re-resolved after every event.
fn watch_dirs(sources: &[Source]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for source in sources {
        for file in [Some(source.cert.as_path()), source.key.as_deref()]
            .into_iter()
            .flatten()
        {
            dirs.extend(file.parent().map(Path::to_path_buf));
            if let Ok(real) = std::fs::canonicalize(file) {
                dirs.extend(real.parent().map(Path::to_path_buf));
            }
        }
    }
    let mut seen = HashSet::new();
    dirs.retain(|d| !d.as_os_str().is_empty() && seen.insert(d.clone()));
    dirs
}

/// The debounce never stretches beyond this many debounce periods.
const MAX_SETTLE_FACTOR: u32 = 5;

#[cfg(test)]
mod tests {
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
    use notify::{Event, EventKind};

    use super::relevant;

    #[test]
    fn own_reads_do_not_trigger_reloads_but_writes_and_renames_do() {
        let ignored = [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
        ];
        let wanted = [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Remove(notify::event::RemoveKind::Any),
        ];
        for kind in ignored {
            assert!(!relevant(&Event::new(kind)), "{kind:?}");
        }
        for kind in wanted {
            assert!(relevant(&Event::new(kind)), "{kind:?}");
        }
    }
}
