//! The byte stream to a backend: TCP, a unix socket, TLS over either, or an exec child's
//! stdin/stdout.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// A connection to a backend server. Reads come from the server, writes go to it;
/// `poll_shutdown` half-closes (TCP/unix: `shutdown(SHUT_WR)`; exec: closes the child's stdin).
#[derive(Debug)]
pub enum BackendStream {
    /// A TCP connection (TCP_NODELAY and SO_KEEPALIVE on).
    Tcp(TcpStream),
    /// A unix-socket connection.
    Unix(UnixStream),
    /// An exec backend's child process (boxed: it is much larger than a socket).
    Exec(Box<ExecStream>),
    /// TLS (`tls = "implicit"` or after STARTTLS) over a TCP or unix-socket connection
    /// (boxed: the TLS state is much larger than a socket).
    Tls(Box<tokio_rustls::client::TlsStream<BackendStream>>),
}

/// An exec child's stdout (read side) and stdin (write side). Dropping it kills the child
/// (if still running) and reaps it, so no zombie is left behind.
#[derive(Debug)]
pub struct ExecStream {
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    child: Option<Child>,
}

impl ExecStream {
    pub(crate) fn new(child: Child, stdin: ChildStdin, stdout: ChildStdout) -> Self {
        Self {
            stdin: Some(stdin),
            stdout,
            child: Some(child),
        }
    }

    /// The child's process id (None once it has been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }
}

impl Drop for ExecStream {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Closing stdin first lets a well-behaved server see EOF; the kill covers the rest.
        drop(self.stdin.take());
        if let Err(error) = child.start_kill() {
            // InvalidInput: the child already exited; it still needs reaping below.
            if error.kind() != io::ErrorKind::InvalidInput {
                tracing::debug!(%error, "killing the exec child failed");
            }
        }
        // Reap now rather than relying on tokio's orphan queue, which only runs when a
        // later SIGCHLD arrives. Without a runtime, kill_on_drop and the orphan queue remain.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if tokio::time::timeout(REAP_DEADLINE, child.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        pid = child.id(),
                        "exec child not reaped within {REAP_DEADLINE:?} after SIGKILL"
                    );
                }
            });
        }
    }
}

/// SIGKILL cannot be ignored, so the child exits almost at once; this bounds the wait anyway.
const REAP_DEADLINE: Duration = Duration::from_secs(10);

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Exec(s) => Pin::new(&mut s.stdout).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Exec(s) => match s.stdin.as_mut() {
                Some(stdin) => Pin::new(stdin).poll_write(cx, buf),
                None => Poll::Ready(Err(stdin_closed())),
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Unix(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Tls(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Exec(s) => match s.stdin.as_mut() {
                Some(stdin) => Pin::new(stdin).poll_flush(cx),
                None => Poll::Ready(Ok(())),
            },
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Exec(s) => {
                if let Some(stdin) = s.stdin.as_mut() {
                    std::task::ready!(Pin::new(stdin).poll_flush(cx))?;
                }
                // Dropping the pipe's write end is the child's EOF.
                s.stdin = None;
                Poll::Ready(Ok(()))
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            BackendStream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            BackendStream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            BackendStream::Exec(s) => match s.stdin.as_mut() {
                Some(stdin) => Pin::new(stdin).poll_write_vectored(cx, bufs),
                None => Poll::Ready(Err(stdin_closed())),
            },
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            BackendStream::Tcp(s) => s.is_write_vectored(),
            BackendStream::Unix(s) => s.is_write_vectored(),
            BackendStream::Tls(s) => s.is_write_vectored(),
            BackendStream::Exec(s) => s.stdin.as_ref().is_some_and(AsyncWrite::is_write_vectored),
        }
    }
}

fn stdin_closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the exec child's stdin is already closed",
    )
}
