//! The certificate file watcher: inotify (via notify) on the certificates' directories, a
//! debounce, and a periodic re-check for file systems whose events get lost; each wake-up
//! runs the store's reload off the runtime threads.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::file_events::{FileEvents, FollowError};
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
    let mut events =
        FileEvents::new(options.debounce, options.poll_interval).map_err(watch_error)?;
    events.follow(files(&store.sources)).map_err(watch_error)?;
    Ok(runtime.spawn(run(store, events, shutdown, options)))
}

async fn run(
    store: Arc<Store>,
    mut events: FileEvents,
    shutdown: CancellationToken,
    options: CertWatcherOptions,
) {
    while events.changed(&shutdown).await {
        let reloading = Arc::clone(&store);
        // File reads and key parsing block; keep them off the runtime's worker threads.
        match tokio::task::spawn_blocking(move || reloading.reload_logged(Some(options.debounce)))
            .await
        {
            Ok(Ok(true)) => events.reset_poll(),
            Ok(Ok(false)) => debug!("certificate files unchanged"),
            Ok(Err(_)) => {} // logged and counted by the store
            Err(error) => warn!(%error, "certificate reload task failed"),
        }
        store.warn_expiring();
        // Symlinks may point somewhere new (Kubernetes `..data` swap): follow them.
        if let Err(error) = events.follow(files(&store.sources)).map_err(watch_error) {
            warn!(error = %error.chain(), "certificate watcher could not follow the new files; the periodic re-check still applies");
        }
    }
}

/// Every certificate and key file of `sources`.
fn files(sources: &[Source]) -> impl Iterator<Item = &Path> {
    sources
        .iter()
        .flat_map(|source| [Some(source.cert.as_path()), source.key.as_deref()])
        .flatten()
}

fn watch_error(error: FollowError) -> TlsError {
    TlsError::Watch {
        path: error.path,
        source: error.source,
    }
}
