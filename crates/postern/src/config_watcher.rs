//! The configuration file watcher: the same kind as the certificate watcher (notify on the
//! file's directory and, through symlinks, its target's, so an editor's rename and the
//! Kubernetes ConfigMap `..data` symlink swap are seen; a debounce; a periodic re-check for
//! file systems whose events get lost). It only says *that* the file's bytes changed; the
//! gateway's reload does the rest, as for SIGHUP.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How long the directory must be quiet before the file is read (an editor writes, renames
/// and chmods in a burst; kubelet swaps several symlinks).
const DEBOUNCE: Duration = Duration::from_millis(300);
/// The backstop re-check.
const POLL: Duration = Duration::from_secs(60);

/// Why the configuration file cannot be watched (SIGHUP still works).
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {}", .path.display())]
pub struct WatchError {
    path: PathBuf,
    #[source]
    source: notify::Error,
}

/// Watches `path` until `shutdown`; every time its contents differ from the last seen (the
/// bytes at the call, at first), one `()` arrives on the returned channel. Must run inside
/// a tokio runtime (the control runtime).
pub fn watch_config(
    path: &Path,
    shutdown: CancellationToken,
) -> Result<mpsc::Receiver<()>, WatchError> {
    let (events_tx, events) = mpsc::channel::<()>(1);
    let watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
        // An error (the kernel queue overflowed) may hide a change: look to be sure.
        if event.as_ref().map_or(true, relevant) {
            let _ = events_tx.try_send(());
        }
    })
    .map_err(|source| WatchError {
        path: path.to_path_buf(),
        source,
    })?;
    let mut dirs = Dirs {
        watcher,
        dirs: HashSet::new(),
    };
    dirs.follow(path)?;
    let (changed, rx) = mpsc::channel(1);
    let last = std::fs::read(path).ok();
    tokio::spawn(run(
        path.to_path_buf(),
        dirs,
        events,
        changed,
        last,
        shutdown,
    ));
    Ok(rx)
}

async fn run(
    path: PathBuf,
    mut dirs: Dirs,
    mut events: mpsc::Receiver<()>,
    changed: mpsc::Sender<()>,
    mut last: Option<Vec<u8>>,
    shutdown: CancellationToken,
) {
    let mut poll = tokio::time::interval_at(Instant::now() + POLL, POLL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.recv() => {
                if event.is_none() {
                    return;
                }
                if !settle(&mut events, &shutdown).await {
                    return;
                }
            }
            _ = poll.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let reading = path.clone();
        let now = match tokio::task::spawn_blocking(move || std::fs::read(reading)).await {
            Ok(Ok(bytes)) => Some(bytes),
            // Missing for a moment (a non-atomic replace): the next event or poll looks again.
            Ok(Err(error)) => {
                debug!(file = %path.display(), %error, "configuration file not readable right now");
                continue;
            }
            Err(error) => {
                warn!(%error, "configuration watcher task failed");
                continue;
            }
        };
        if now != last {
            last = now;
            if changed.send(()).await.is_err() {
                return;
            }
        }
        // The symlinks may point somewhere new (Kubernetes `..data` swap): follow them.
        if let Err(error) = dirs.follow(&path) {
            warn!(error = %postern_metrics::ErrorChain(&error), "configuration watcher could not follow the file; the periodic re-check still applies");
        }
    }
}

/// Waits until no event has arrived for [`DEBOUNCE`] (at most five times that). `false` on
/// shutdown.
async fn settle(events: &mut mpsc::Receiver<()>, shutdown: &CancellationToken) -> bool {
    let hard_deadline = Instant::now() + DEBOUNCE * 5;
    loop {
        let quiet_until = (Instant::now() + DEBOUNCE).min(hard_deadline);
        tokio::select! {
            event = events.recv() => {
                if event.is_none() || Instant::now() >= hard_deadline {
                    return true;
                }
            }
            () = tokio::time::sleep_until(quiet_until) => return true,
            () = shutdown.cancelled() => return false,
        }
    }
}

/// Our own reads open and close the file; those events must not wake the watcher.
fn relevant(event: &Event) -> bool {
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

struct Dirs {
    watcher: RecommendedWatcher,
    dirs: HashSet<PathBuf>,
}

impl std::fmt::Debug for Dirs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dirs")
            .field("dirs", &self.dirs)
            .finish_non_exhaustive()
    }
}

impl Dirs {
    /// Watches the file's directory and its resolved target's directory; drops the rest.
    fn follow(&mut self, file: &Path) -> Result<(), WatchError> {
        let mut want = HashSet::new();
        want.extend(file.parent().map(Path::to_path_buf));
        if let Ok(real) = std::fs::canonicalize(file) {
            want.extend(real.parent().map(Path::to_path_buf));
        }
        want.retain(|d| !d.as_os_str().is_empty());
        if want.is_empty() {
            want.insert(PathBuf::from("."));
        }
        for dir in self.dirs.difference(&want).cloned().collect::<Vec<_>>() {
            // A deleted directory (an old ConfigMap timestamp dir) is already unwatched.
            let _ = self.watcher.unwatch(&dir);
            self.dirs.remove(&dir);
        }
        for dir in want {
            if self.dirs.contains(&dir) {
                continue;
            }
            self.watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError {
                    path: dir.clone(),
                    source,
                })?;
            self.dirs.insert(dir);
        }
        Ok(())
    }
}
