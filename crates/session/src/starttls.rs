//! The plaintext phase of a STARTTLS listener, driven over the raw TCP socket.
//!
//! Every write happens under the phase's deadline (a client that never reads cannot hold the
//! session past `plaintext_timeout`); the goodbyes written once the phase is over get a short
//! grace of their own.

use std::future::Future;
use std::io;
use std::time::Duration;

use postern_proto::starttls::{PlainLimits, PlainPhase, PlainStep};
use postern_proto::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

/// How the plaintext phase ended.
#[derive(Debug)]
pub(crate) enum PlainEnd {
    /// The go-ahead was sent; start TLS. `discarded` bytes that followed the command were dropped.
    Upgrade { discarded: usize },
    /// The client quit (or was refused) and has been answered.
    Closed,
    /// The phase took longer than the plaintext timeout; the client got the goodbye.
    Timeout,
    /// The drain asked us to leave; the client got the goodbye.
    Shutdown,
    /// The client disconnected or the socket failed.
    Io(io::Error),
}

/// How long a goodbye written after the phase's end may take.
const GOODBYE_GRACE: Duration = Duration::from_secs(2);

/// Runs postern's own plaintext dialogue until the client asks for TLS (or leaves).
pub(crate) async fn plaintext_phase(
    stream: &mut TcpStream,
    protocol: Protocol,
    hostname: &str,
    limits: PlainLimits,
    timeout: Duration,
    leave: impl Future<Output = ()>,
) -> PlainEnd {
    let mut phase = PlainPhase::new(protocol, hostname, limits);
    let deadline = Instant::now() + timeout;
    let mut leave = std::pin::pin!(leave);
    if let Err(end) = write_by(stream, &phase.greeting(), deadline, &phase).await {
        return end;
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        // Answer every complete command buffered so far.
        loop {
            match phase.step(&mut buf) {
                PlainStep::NeedMore => break,
                PlainStep::Reply(bytes) => {
                    if let Err(end) = write_by(stream, &bytes, deadline, &phase).await {
                        return end;
                    }
                }
                PlainStep::Upgrade { reply, discarded } => {
                    // `buf` holds nothing more: the phase dropped what followed the command.
                    debug_assert!(buf.is_empty());
                    return match write_by(stream, &reply, deadline, &phase).await {
                        Ok(()) => PlainEnd::Upgrade { discarded },
                        Err(end) => end,
                    };
                }
                PlainStep::Close(bytes) => {
                    let _ = write_by(stream, &bytes, deadline, &phase).await;
                    let _ = timeout_at(deadline, stream.shutdown()).await;
                    return PlainEnd::Closed;
                }
            }
        }
        let read = tokio::select! {
            r = stream.read(&mut chunk) => r,
            () = tokio::time::sleep_until(deadline) => {
                goodbye(stream, phase.timeout_goodbye()).await;
                return PlainEnd::Timeout;
            }
            () = &mut leave => {
                // POP3 has no unsolicited response: it just closes, as in the relay.
                let line: &[u8] = match protocol {
                    Protocol::Pop3 => b"",
                    p => p.shutdown_goodbye(),
                };
                goodbye(stream, line).await;
                return PlainEnd::Shutdown;
            }
        };
        match read {
            Ok(0) => return PlainEnd::Io(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return PlainEnd::Io(e),
        }
    }
}

/// Writes `bytes` before `deadline`; past it the client gets the timeout goodbye (within a
/// grace) and the phase ends as timed out.
async fn write_by(
    stream: &mut TcpStream,
    bytes: &[u8],
    deadline: Instant,
    phase: &PlainPhase,
) -> Result<(), PlainEnd> {
    match timeout_at(deadline, stream.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(PlainEnd::Io(e)),
        Err(_) => {
            goodbye(stream, phase.timeout_goodbye()).await;
            Err(PlainEnd::Timeout)
        }
    }
}

/// A last line and the close, within [`GOODBYE_GRACE`]: the client may not be reading.
async fn goodbye(stream: &mut TcpStream, line: &[u8]) {
    let _ = tokio::time::timeout(GOODBYE_GRACE, async {
        if !line.is_empty() {
            stream.write_all(line).await?;
        }
        stream.shutdown().await
    })
    .await;
}
