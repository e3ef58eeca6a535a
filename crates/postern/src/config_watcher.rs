//! The configuration file watcher: the same kind as the certificate watcher, on the same
//! [`postern_tls::file_events`] (the file's directory and, through symlinks, its target's, so
//! an editor's rename and the Kubernetes ConfigMap `..data` symlink swap are seen; a
//! debounce; a periodic re-check for file systems whose events get lost). It only says
//! *that* the file's bytes changed; the gateway's reload does the rest, as for SIGHUP.

use std::path::{Path, PathBuf};
use std::time::Duration;

use postern_tls::file_events::{FileEvents, FollowError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How long the directory must be quiet before the file is read (an editor writes, renames
/// and chmods in a burst; kubelet swaps several symlinks).
const DEBOUNCE: Duration = Duration::from_millis(300);
/// The backstop re-check.
const POLL: Duration = Duration::from_secs(60);

/// Watches `path` until `shutdown`; every time its contents differ from the last seen (the
/// bytes at the call, at first), one `()` arrives on the returned channel. Must run inside
/// a tokio runtime (the control runtime). An error means the file cannot be watched; SIGHUP
/// still works.
pub fn watch_config(
    path: &Path,
    shutdown: CancellationToken,
) -> Result<mpsc::Receiver<()>, FollowError> {
    let mut events = FileEvents::new(DEBOUNCE, POLL)?;
    events.follow([path])?;
    let (changed, rx) = mpsc::channel(1);
    let last = std::fs::read(path).ok();
    tokio::spawn(run(path.to_path_buf(), events, changed, last, shutdown));
    Ok(rx)
}

async fn run(
    path: PathBuf,
    mut events: FileEvents,
    changed: mpsc::Sender<()>,
    mut last: Option<Vec<u8>>,
    shutdown: CancellationToken,
) {
    while events.changed(&shutdown).await {
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
        if let Err(error) = events.follow([path.as_path()]) {
            warn!(error = %postern_metrics::ErrorChain(&error), "configuration watcher could not follow the file; the periodic re-check still applies");
        }
    }
}
