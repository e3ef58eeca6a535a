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

use std::os::unix::fs::{MetadataExt, PermissionsExt};
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

/// The bound control socket; removes its file when dropped, unless a newer instance has
/// taken the path over.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file this instance bound.
    file: (u64, u64),
}

impl ControlSocket {
    /// Binds `state_dir/control.sock` (mode 0600). The socket is bound under a temporary
    /// name and renamed into place, so the path always names a working socket: a stale file
    /// is replaced, and a live one (the old instance of a blue/green upgrade on the same
    /// state_dir, deploy/README.md) is taken over, so that `postern ctl` reaches the newest
    /// instance; the old one keeps serving its accepted connections and, when it exits,
    /// leaves the path alone because the file is no longer its own. Must run on a tokio
    /// runtime.
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
        let live = std::os::unix::net::UnixStream::connect(&path).is_ok();
        let tmp = state_dir.join(format!(".{SOCKET_NAME}.{}", std::process::id()));
        // A leftover of a crashed start with the same pid; nothing else uses this name.
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(bind_err)?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .and_then(|()| std::fs::metadata(&path));
        let meta = match placed {
            Ok(meta) => meta,
            Err(source) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(bind_err(source));
            }
        };
        if live {
            warn!(
                path = %path.display(),
                "control socket taken over from another postern on this state_dir (an upgrade \
                 handover?): postern ctl now reaches this instance"
            );
        }
        Ok(ControlSocket {
            listener,
            path,
            file: (meta.dev(), meta.ino()),
        })
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
        let ours = std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.file);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A blue/green upgrade on one state_dir: the new instance takes the socket over, the
    /// old one's exit leaves it in place, and the new one's exit removes it.
    #[tokio::test]
    async fn a_second_instance_takes_the_socket_over_and_the_first_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        let blue = ControlSocket::bind(dir.path()).unwrap();
        let green = ControlSocket::bind(dir.path()).unwrap();
        drop(blue);
        assert!(
            path.exists(),
            "the old instance removed the new one's socket"
        );
        std::os::unix::net::UnixStream::connect(&path).expect("the new socket answers");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(green);
        assert!(!path.exists());
        // No temporary name is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
