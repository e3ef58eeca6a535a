//! The plaintext phase of a STARTTLS listener, driven over the raw TCP socket.

use std::io;
use std::time::Duration;

use postern_proto::starttls::{PlainLimits, PlainPhase, PlainStep};
use postern_proto::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

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

/// Runs postern's own plaintext dialogue until the client asks for TLS (or leaves).
pub(crate) async fn plaintext_phase(
    stream: &mut TcpStream,
    protocol: Protocol,
    hostname: &str,
    limits: PlainLimits,
    timeout: Duration,
    leave: impl std::future::Future<Output = ()>,
) -> PlainEnd {
    let mut phase = PlainPhase::new(protocol, hostname, limits);
    let deadline = Instant::now() + timeout;
    let mut leave = std::pin::pin!(leave);
    if let Err(e) = stream.write_all(&phase.greeting()).await {
        return PlainEnd::Io(e);
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        // Answer every complete command buffered so far.
        loop {
            match phase.step(&mut buf) {
                PlainStep::NeedMore => break,
                PlainStep::Reply(bytes) => {
                    if let Err(e) = stream.write_all(&bytes).await {
                        return PlainEnd::Io(e);
                    }
                }
                PlainStep::Upgrade { reply, discarded } => {
                    // `buf` holds nothing more: the phase dropped what followed the command.
                    debug_assert!(buf.is_empty());
                    return match stream.write_all(&reply).await {
                        Ok(()) => PlainEnd::Upgrade { discarded },
                        Err(e) => PlainEnd::Io(e),
                    };
                }
                PlainStep::Close(bytes) => {
                    let _ = stream.write_all(&bytes).await;
                    let _ = stream.shutdown().await;
                    return PlainEnd::Closed;
                }
            }
        }
        let read = tokio::select! {
            r = stream.read(&mut chunk) => r,
            () = tokio::time::sleep_until(deadline) => {
                let _ = stream.write_all(phase.timeout_goodbye()).await;
                let _ = stream.shutdown().await;
                return PlainEnd::Timeout;
            }
            () = &mut leave => {
                // POP3 has no unsolicited response: it just closes, as in the relay.
                if protocol != Protocol::Pop3 {
                    let _ = stream.write_all(protocol.shutdown_goodbye()).await;
                }
                let _ = stream.shutdown().await;
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
