//! One IMAPS client session as a mail client opens it: TCP from a chosen loopback source
//! address, TLS 1.3 (X25519, the server's certificate verified against the bench's own
//! root), the greeting, `LOGIN`, `IDLE`; then it sits there.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::BenchError;

/// The name the bench certificate is issued for and every client sends as SNI.
pub(crate) const SNI: &str = "mail.bench.test";
/// Deadline for one session to be logged in and idling (a storm may need SYN retries).
pub(crate) const SESSION_DEADLINE: Duration = Duration::from_secs(60);

/// TLS 1.3 only, X25519 only (the setup), no resumption: the base every session
/// config is cloned from.
pub(crate) fn base_config(ca_der: &[u8]) -> Result<Arc<ClientConfig>, BenchError> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .kx_groups
        .retain(|g| g.name() == rustls::NamedGroup::X25519);
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .map_err(|e| BenchError::Setup(format!("bench CA rejected: {e}")))?;
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| BenchError::Setup(format!("TLS 1.3 client: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// A config for one session that keeps that session's own tickets: a mail client resumes
/// with the ticket of its previous connection, not with a ticket another client got.
pub(crate) fn resuming(base: &ClientConfig) -> Arc<ClientConfig> {
    let mut config = base.clone();
    config.resumption = Resumption::in_memory_sessions(1);
    Arc::new(config)
}

/// A logged-in session in IDLE and how it got there.
#[derive(Debug)]
pub(crate) struct Opened {
    /// The connection; dropping it closes the session.
    pub(crate) stream: TlsStream<TcpStream>,
    /// From `connect()` to the end of the TLS handshake.
    pub(crate) handshake: Duration,
    /// From `connect()` to the `+ idling` continuation.
    pub(crate) total: Duration,
    /// Whether the TLS handshake resumed a session.
    pub(crate) resumed: bool,
}

/// Opens one session from `source` to `target` within [`SESSION_DEADLINE`].
pub(crate) async fn open(
    target: SocketAddr,
    source: IpAddr,
    config: Arc<ClientConfig>,
) -> Result<Opened, BenchError> {
    tokio::time::timeout(SESSION_DEADLINE, open_inner(target, source, config))
        .await
        .map_err(|_| {
            BenchError::Protocol(format!("{source} -> {target}: no IDLE within the deadline"))
        })?
}

async fn open_inner(
    target: SocketAddr,
    source: IpAddr,
    config: Arc<ClientConfig>,
) -> Result<Opened, BenchError> {
    let t0 = Instant::now();
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| BenchError::io("socket", e))?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| BenchError::io(format!("bind {source}"), e))?;
    let tcp = socket
        .connect(target)
        .await
        .map_err(|e| BenchError::io(format!("connect {source} -> {target}"), e))?;
    tcp.set_nodelay(true)
        .map_err(|e| BenchError::io("TCP_NODELAY", e))?;
    let name = ServerName::try_from(SNI).map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut stream = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| BenchError::io(format!("TLS handshake with {target}"), e))?;
    let handshake = t0.elapsed();
    let resumed = stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    expect(&mut stream, b"* OK").await?;
    stream
        .write_all(b"a LOGIN bench secret\r\n")
        .await
        .map_err(|e| BenchError::io("send LOGIN", e))?;
    expect(&mut stream, b"a OK").await?;
    stream
        .write_all(b"b IDLE\r\n")
        .await
        .map_err(|e| BenchError::io("send IDLE", e))?;
    expect(&mut stream, b"+ ").await?;
    Ok(Opened {
        stream,
        handshake,
        total: t0.elapsed(),
        resumed,
    })
}

/// Reads lines until one starts with `prefix` (untagged lines before it are skipped).
async fn expect(stream: &mut TlsStream<TcpStream>, prefix: &[u8]) -> Result<(), BenchError> {
    let mut buf = [0u8; 512];
    let mut line: Vec<u8> = Vec::with_capacity(128);
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| BenchError::io("read reply", e))?;
        if n == 0 {
            return Err(BenchError::Protocol(format!(
                "closed while waiting for {:?}",
                String::from_utf8_lossy(prefix)
            )));
        }
        line.extend_from_slice(&buf[..n]);
        while let Some(end) = line.iter().position(|b| *b == b'\n') {
            if line.starts_with(prefix) {
                return Ok(());
            }
            if line.starts_with(b"* BYE") || !line.starts_with(b"*") {
                return Err(BenchError::Protocol(format!(
                    "expected {:?}, got {:?}",
                    String::from_utf8_lossy(prefix),
                    String::from_utf8_lossy(&line[..end])
                )));
            }
            line.drain(..=end);
        }
        if line.len() > 4096 {
            return Err(BenchError::Protocol("reply line over 4 KiB".into()));
        }
    }
}
