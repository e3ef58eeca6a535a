//! The control socket `state_dir/control.sock` behind `postern ctl`: a unix socket of mode
//! 0600, bound after the privilege drop so that it belongs to the user postern runs as, and
//! every connection's peer checked with `SO_PEERCRED` (only that user and root are served:
//! the mode alone would leave a window between bind and chmod, and does not survive a
//! directory that others may write). One JSON request line, one JSON answer line
//! ([`protocol`]); every read and write has a deadline, and a few connections at most are
//! served at once.

pub mod client;
pub mod protocol;
mod reports;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::director::Director;
use crate::error::ControlError;
use protocol::{Request, Response, MAX_REQUEST};

/// The socket's file name in `state_dir`.
pub const SOCKET_NAME: &str = "control.sock";

/// A client gets this long to send its request and read the answer.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Connections served at once; more wait for a slot (within their deadline).
const CONCURRENT: usize = 8;

/// The socket path for a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

/// The bound control socket; removes its file when dropped.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `state_dir/control.sock` (mode 0600). A stale socket file (no one answers on
    /// it) is replaced; a live one means another postern uses this state_dir. Must run on a
    /// tokio runtime.
    pub fn bind(state_dir: &Path) -> Result<ControlSocket, ControlError> {
        let path = socket_path(state_dir);
        let bind_err = |source| ControlError::Bind {
            path: path.clone(),
            source,
        };
        // With configured certificates nothing else may have created the directory yet.
        if !state_dir.exists() {
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o700,
            )
            .create(state_dir)
            .map_err(bind_err)?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(ControlError::InUse { path });
            }
            std::fs::remove_file(&path).map_err(bind_err)?;
        }
        let listener = UnixListener::bind(&path).map_err(bind_err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_err)?;
        Ok(ControlSocket { listener, path })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves requests until `shutdown` is cancelled.
    pub async fn serve(self, director: Arc<Director>, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(CONCURRENT));
        let owner = nix::unistd::geteuid().as_raw();
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                a = self.listener.accept() => a,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!(%error, "control socket accept failed");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            };
            let director = Arc::clone(&director);
            let slots = Arc::clone(&slots);
            tokio::spawn(async move {
                let Ok(Ok(_slot)) = tokio::time::timeout(DEADLINE, slots.acquire_owned()).await
                else {
                    return;
                };
                serve_one(stream, &director, owner).await;
            });
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve_one(mut stream: UnixStream, director: &Director, owner: u32) {
    let peer = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(error) => {
            debug!(%error, "control socket: no peer credentials; closed");
            return;
        }
    };
    if peer.uid() != owner && peer.uid() != 0 {
        warn!(
            uid = peer.uid(),
            pid = peer.pid(),
            "control socket: refused a client that is neither postern's user nor root"
        );
        let answer = Response::failed(
            "permission denied: only postern's own user and root may use the control socket",
        );
        let _ = tokio::time::timeout(DEADLINE, write_answer(&mut stream, &answer)).await;
        return;
    }
    let _ = tokio::time::timeout(DEADLINE, async {
        let answer = match read_request(&mut stream).await {
            Ok(request) => reports::answer(director, request),
            Err(why) => Response::failed(why),
        };
        write_answer(&mut stream, &answer).await
    })
    .await;
}

async fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(stream).take(MAX_REQUEST as u64 + 1);
    reader
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("reading the request failed: {e}"))?;
    if line.len() > MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    serde_json::from_slice(&line).map_err(|e| format!("not a control request: {e}"))
}

async fn write_answer(stream: &mut UnixStream, answer: &Response) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(answer).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    stream.write_all(&bytes).await?;
    stream.shutdown().await
}
