//! Following files on disk through renames and symlink swaps: notify (inotify) on each file's
//! directory and, through symlinks, its target's directory, so certbot's renames and the
//! Kubernetes `..data` symlink swap (Secrets, ConfigMaps) are seen. [`FileEvents::changed`]
//! returns once a burst of events has settled, or when the periodic re-check is due (file
//! systems whose events get lost: NFS, some overlay set-ups).
//!
//! Used by the certificate watcher here and by postern's configuration watcher: one place
//! that knows which events matter, how to debounce them and when to look anyway. It lives in
//! this crate because the certificate watcher was its first user and postern already
//! depends on it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// A burst never stretches the wait beyond this many debounce periods (a directory that never
/// stops changing must not starve the reader).
const MAX_SETTLE_FACTOR: u32 = 5;

/// A directory that could not be watched.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {}", .path.display())]
pub struct FollowError {
    /// The directory.
    pub path: PathBuf,
    /// notify's complaint (inotify limits, a missing directory, ...).
    #[source]
    pub source: notify::Error,
}

/// Wake-ups for changes to a set of files.
pub struct FileEvents {
    watcher: RecommendedWatcher,
    dirs: HashSet<PathBuf>,
    // Capacity 1: a pending wake-up already covers every later event of the burst.
    rx: mpsc::Receiver<()>,
    debounce: Duration,
    poll: Interval,
}

impl std::fmt::Debug for FileEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileEvents")
            .field("dirs", &self.dirs)
            .finish_non_exhaustive()
    }
}

impl FileEvents {
    /// Starts notify; nothing is watched until [`FileEvents::follow`]. A burst of events
    /// counts once it has been quiet for `debounce`; without events, [`FileEvents::changed`]
    /// returns every `poll_interval` anyway. Must be called inside a tokio runtime with its
    /// timer enabled (the re-check is a tokio interval).
    pub fn new(debounce: Duration, poll_interval: Duration) -> Result<Self, FollowError> {
        let (tx, rx) = mpsc::channel::<()>(1);
        let watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
            // An error (e.g. the kernel queue overflowed) may hide a change: wake up to be sure.
            if event.as_ref().map_or(true, relevant) {
                let _ = tx.try_send(());
            }
        })
        .map_err(|source| FollowError {
            path: PathBuf::from("."),
            source,
        })?;
        let mut poll = tokio::time::interval_at(Instant::now() + poll_interval, poll_interval);
        // A re-check missed while a reload ran is not worth catching up on.
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(FileEvents {
            watcher,
            dirs: HashSet::new(),
            rx,
            debounce,
            poll,
        })
    }

    /// Watches the directories of `files` and of their symlink targets, and stops watching
    /// the others. Call again after each change: a symlink may point somewhere new. The first
    /// directory that cannot be watched is returned; the others are still tried.
    pub fn follow<'a>(
        &mut self,
        files: impl IntoIterator<Item = &'a Path>,
    ) -> Result<(), FollowError> {
        let want = dirs_of(files);
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
                Err(source) => {
                    first_error.get_or_insert(FollowError { path: dir, source });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Waits until the files may have changed: a burst of events has settled, or the
    /// periodic re-check is due. `false` on shutdown (or if notify is gone, which cannot
    /// happen while `self` lives).
    pub async fn changed(&mut self, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            event = self.rx.recv() => event.is_some() && self.settle(shutdown).await,
            _ = self.poll.tick() => true,
            () = shutdown.cancelled() => false,
        }
    }

    /// Pushes the next periodic re-check a whole interval away (the caller just looked).
    pub fn reset_poll(&mut self) {
        self.poll.reset();
    }

    /// After a wake-up: waits until no event has arrived for the debounce (at most
    /// `MAX_SETTLE_FACTOR` × the debounce in all). `false` on shutdown.
    async fn settle(&mut self, shutdown: &CancellationToken) -> bool {
        let hard_deadline = Instant::now() + self.debounce * MAX_SETTLE_FACTOR;
        loop {
            let quiet_until = (Instant::now() + self.debounce).min(hard_deadline);
            tokio::select! {
                event = self.rx.recv() => {
                    if event.is_none() || Instant::now() >= hard_deadline {
                        return true;
                    }
                }
                () = tokio::time::sleep_until(quiet_until) => return true,
                () = shutdown.cancelled() => return false,
            }
        }
    }
}

/// Each file's directory and, through symlinks, its target's directory.
fn dirs_of<'a>(files: impl IntoIterator<Item = &'a Path>) -> HashSet<PathBuf> {
    let mut dirs = HashSet::new();
    for file in files {
        dirs.extend(file.parent().map(Path::to_path_buf));
        if let Ok(real) = std::fs::canonicalize(file) {
            dirs.extend(real.parent().map(Path::to_path_buf));
        }
    }
    dirs.retain(|d| !d.as_os_str().is_empty());
    if dirs.is_empty() {
        // A bare file name: its directory is the working directory.
        dirs.insert(PathBuf::from("."));
    }
    dirs
}

/// Our own reads open and close the files; those events must not wake anyone.
fn relevant(event: &Event) -> bool {
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests;
