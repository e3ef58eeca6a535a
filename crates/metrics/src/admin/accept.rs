//! The accept loop of postern's small side listeners: the admin endpoint here and the ACME
//! challenge responder (tls crate). Neither carries mail, so both want the same few rules:
//! a bound on connections served at once (over it, a new connection is closed at once), one
//! task per connection, and a pause instead of a busy loop when `accept` fails (usually
//! EMFILE, which needs time to clear). The mail listeners have their own acceptors
//! (listener crate), with a backoff and per-connection error handling of their own.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long the loop waits after a failed `accept`.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accepts on `listener` until `shutdown`, running `serve(stream)` on a task for each
/// connection that gets one of `permits` (held until that task ends); a connection that
/// finds none is closed at once. `what` names the listener in the log lines ("admin
/// endpoint"). Returns the closed tracker of the connection tasks still running: wait on it
/// (with a deadline) or drop it.
pub async fn accept_bounded<F, Fut>(
    what: &'static str,
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    shutdown: &CancellationToken,
    mut serve: F,
) -> TaskTracker
where
    F: FnMut(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "{what}: accept failed; pausing");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        let Ok(permit) = Arc::clone(permits).try_acquire_owned() else {
            tracing::debug!(%peer, "{what}: too many connections; closing");
            continue;
        };
        let connection = serve(stream);
        tracker.spawn(async move {
            let _permit = permit;
            connection.await;
        });
    }
    tracker.close();
    tracker
}
