//! Opening a backend connection and making it ready: PROXY header, TLS, greeting, forwarding.

use std::net::SocketAddr;
use std::time::Duration;

use postern_config::{ForwardClient, ServerAddr, TlsMode};
use postern_proto::forward::{forward_command, parse_reply, ForwardReply};
use postern_proto::greeting::{parse_greeting, Greeting};
use postern_proto::Protocol;
use proxy_header::{ProxiedAddress, ProxyHeader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::error::{quote, ServerError};
use crate::pool::ClientInfo;
use crate::stream::BackendStream;
use crate::tls::TlsClient;
use crate::upgrade;

/// What to do on a fresh connection before it is handed out.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Handshake<'a> {
    pub(crate) protocol: Protocol,
    pub(crate) forward: ForwardClient,
    /// `None` for health probes and warm connections: a PROXY header then says LOCAL and no
    /// ID/XCLIENT is sent.
    pub(crate) client: Option<&'a ClientInfo>,
    pub(crate) label: &'a str,
    /// The backend's TLS (`None`: plaintext; always `None` for exec children).
    pub(crate) tls: Option<&'a TlsClient>,
    /// The host the certificate is verified against when `tls_name` is not set.
    pub(crate) host: Option<&'a str>,
}

/// Connects to `addr` and performs `hs`, all within `budget`. Returns the stream and every
/// byte read that the session should see (the greeting and anything after it).
pub(crate) async fn dial(
    addr: &ServerAddr,
    hs: Handshake<'_>,
    budget: Duration,
) -> Result<(BackendStream, Vec<u8>), ServerError> {
    let mut stage = "connect";
    let attempt = async {
        let stream = open(addr, hs.label).await?;
        prepare(stream, hs, &mut stage).await
    };
    match tokio::time::timeout(budget, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ServerError::Timeout {
            server: hs.label.to_owned(),
            stage,
            after: budget,
        }),
    }
}

/// Performs `hs` on an already open stream (exec children: never TLS), within `budget`.
pub(crate) async fn handshake_within<S>(
    stream: &mut S,
    hs: Handshake<'_>,
    budget: Duration,
) -> Result<Vec<u8>, ServerError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut stage = "greeting";
    let plain = async {
        send_proxy_header(stream, hs, &mut stage).await?;
        let (buf, len) = read_greeting(stream, hs, &mut stage).await?;
        forward(stream, hs, buf, len, &mut stage).await
    };
    match tokio::time::timeout(budget, plain).await {
        Ok(result) => result,
        Err(_) => Err(ServerError::Timeout {
            server: hs.label.to_owned(),
            stage,
            after: budget,
        }),
    }
}

/// PROXY header, TLS (implicit, or STARTTLS after the plaintext greeting), greeting,
/// forwarding exchange. The PROXY header goes first, before any TLS byte (rule B4): the
/// backend's PROXY listener reads it from the raw connection.
async fn prepare(
    mut stream: BackendStream,
    hs: Handshake<'_>,
    stage: &mut &'static str,
) -> Result<(BackendStream, Vec<u8>), ServerError> {
    send_proxy_header(&mut stream, hs, stage).await?;
    let (mut stream, buf, len) = match hs.tls {
        None => {
            let (buf, len) = read_greeting(&mut stream, hs, stage).await?;
            (stream, buf, len)
        }
        Some(tls) if tls.mode == TlsMode::Implicit => {
            let name = tls.server_name(hs.host, hs.label)?;
            *stage = "TLS handshake";
            let mut stream = tls.handshake(stream, name, hs.label).await?;
            let (buf, len) = read_greeting(&mut stream, hs, stage).await?;
            (stream, buf, len)
        }
        Some(tls) => {
            let name = tls.server_name(hs.host, hs.label)?;
            let (plain_greeting, len) = read_greeting(&mut stream, hs, stage).await?;
            let plain_greeting = &plain_greeting[..len];
            upgrade::negotiate(&mut stream, hs.protocol, plain_greeting, hs.label, stage).await?;
            *stage = "TLS handshake";
            let mut stream = tls.handshake(stream, name, hs.label).await?;
            let greeting =
                upgrade::after_tls(&mut stream, hs.protocol, plain_greeting, hs.label, stage)
                    .await?;
            let len = greeting.len();
            (stream, greeting, len)
        }
    };
    let buf = forward(&mut stream, hs, buf, len, stage).await?;
    Ok((stream, buf))
}

async fn open(addr: &ServerAddr, label: &str) -> Result<BackendStream, ServerError> {
    let connect_err = |source| ServerError::Connect {
        server: label.to_owned(),
        source,
    };
    match addr {
        ServerAddr::Unix(path) => Ok(BackendStream::Unix(
            UnixStream::connect(path).await.map_err(connect_err)?,
        )),
        ServerAddr::Tcp { host, port } => {
            let mut last = None;
            for sa in tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(connect_err)?
            {
                match TcpStream::connect(sa).await {
                    Ok(stream) => {
                        // Mail commands are small and interactive: never wait for Nagle.
                        stream.set_nodelay(true).map_err(connect_err)?;
                        // Long-idle IMAP sessions must notice a backend host that vanished.
                        socket2::SockRef::from(&stream)
                            .set_keepalive(true)
                            .map_err(connect_err)?;
                        return Ok(BackendStream::Tcp(stream));
                    }
                    Err(error) => last = Some(error),
                }
            }
            Err(connect_err(last.unwrap_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("`{host}` resolved to no address"),
                )
            })))
        }
    }
}

fn io_err<'a>(
    server: &'a str,
    stage: &'static str,
) -> impl FnOnce(std::io::Error) -> ServerError + 'a {
    move |source| ServerError::Io {
        server: server.to_owned(),
        stage,
        source,
    }
}

async fn send_proxy_header<S>(
    stream: &mut S,
    hs: Handshake<'_>,
    stage: &mut &'static str,
) -> Result<(), ServerError>
where
    S: AsyncWrite + Unpin,
{
    if let Some(header) = proxy_header(hs.forward, hs.client, hs.label)? {
        *stage = "PROXY header";
        stream
            .write_all(&header)
            .await
            .map_err(io_err(hs.label, "PROXY header"))?;
    }
    Ok(())
}

/// Reads the greeting; returns every byte read and the greeting's length.
async fn read_greeting<S>(
    stream: &mut S,
    hs: Handshake<'_>,
    stage: &mut &'static str,
) -> Result<(Vec<u8>, usize), ServerError>
where
    S: AsyncRead + Unpin,
{
    let server = hs.label;
    *stage = "greeting";
    let mut buf = Vec::with_capacity(512);
    loop {
        match parse_greeting(hs.protocol, &buf) {
            Greeting::Ok { len } => return Ok((buf, len)),
            Greeting::Refused { .. } => {
                return Err(ServerError::Refused {
                    server: server.to_owned(),
                    line: quote(&buf),
                })
            }
            Greeting::Invalid => {
                return Err(ServerError::NotAGreeting {
                    server: server.to_owned(),
                    protocol: hs.protocol.as_str(),
                    start: quote(&buf),
                })
            }
            Greeting::Incomplete => read_more(stream, &mut buf, server, "greeting").await?,
        }
    }
}

/// `forward_client = "protocol"`: the ID/XCLIENT exchange after the greeting (`buf[..len]`).
/// Returns the bytes the session should see.
async fn forward<S>(
    stream: &mut S,
    hs: Handshake<'_>,
    mut buf: Vec<u8>,
    len: usize,
    stage: &mut &'static str,
) -> Result<Vec<u8>, ServerError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let server = hs.label;
    let (ForwardClient::Protocol, Some(client)) = (hs.forward, hs.client) else {
        return Ok(buf);
    };
    *stage = "forwarding command";
    let command = forward_command(hs.protocol, client.peer, client.local);
    stream
        .write_all(&command)
        .await
        .map_err(io_err(server, "forwarding command"))?;
    stream
        .flush()
        .await
        .map_err(io_err(server, "forwarding command"))?;

    *stage = "forwarding reply";
    let mut reply = buf.split_off(len);
    let reply_len = loop {
        match parse_reply(hs.protocol, &reply) {
            // Some Dovecot 2.3 releases answer an untrusted POP3 XCLIENT with
            // "+OK You are not from trusted IP - ignoring": the address would silently be
            // postern's, so it is treated like the -ERR other releases send.
            ForwardReply::Accepted { len } if !untrusted(&reply[..len]) => break len,
            ForwardReply::Accepted { .. }
            | ForwardReply::Refused { .. }
            | ForwardReply::Invalid => {
                return Err(ServerError::ForwardRefused {
                    server: server.to_owned(),
                    line: quote(&reply),
                })
            }
            ForwardReply::Incomplete => {
                read_more(stream, &mut reply, server, "forwarding reply").await?
            }
        }
    };
    // SMTP answers XCLIENT with a fresh greeting, which replaces the first one (the session
    // relays or swallows exactly one greeting). IMAP, POP3 and ManageSieve replies are dropped.
    if hs.protocol == Protocol::Smtp && reply.starts_with(b"220") {
        return Ok(reply);
    }
    buf.extend_from_slice(&reply[reply_len..]);
    Ok(buf)
}

pub(crate) async fn read_more<S>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    server: &str,
    stage: &'static str,
) -> Result<(), ServerError>
where
    S: AsyncRead + Unpin,
{
    buf.reserve(1024);
    match stream.read_buf(buf).await {
        Ok(0) => Err(ServerError::Closed {
            server: server.to_owned(),
            stage,
        }),
        Ok(_) => Ok(()),
        Err(source) => Err(ServerError::Io {
            server: server.to_owned(),
            stage,
            source,
        }),
    }
}

fn untrusted(reply: &[u8]) -> bool {
    reply
        .windows(UNTRUSTED.len())
        .any(|w| w.eq_ignore_ascii_case(UNTRUSTED))
}

const UNTRUSTED: &[u8] = b"not from trusted";

/// The PROXY header for this connection, if `forward` asks for one.
fn proxy_header(
    forward: ForwardClient,
    client: Option<&ClientInfo>,
    server: &str,
) -> Result<Option<Vec<u8>>, ServerError> {
    let header = match client {
        Some(c) => {
            let (source, destination) = same_family(c.peer, c.local);
            ProxyHeader::with_address(ProxiedAddress::stream(source, destination))
        }
        None => ProxyHeader::with_local(),
    };
    let mut out = Vec::with_capacity(64);
    let encoded = match forward {
        ForwardClient::ProxyV1 => header.encode_v1(&mut out),
        ForwardClient::ProxyV2 => header.encode_v2(&mut out),
        ForwardClient::None | ForwardClient::Protocol => return Ok(None),
    };
    encoded.map_err(|source| ServerError::ProxyHeader {
        server: server.to_owned(),
        source,
    })?;
    Ok(Some(out))
}

/// A PROXY header needs one address family for both ends: IPv4-mapped addresses become IPv4,
/// and if the families still differ the IPv4 side is written as IPv4-mapped IPv6.
fn same_family(peer: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (peer, local) = (canon(peer), canon(local));
    let to_v6 = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    };
    if peer.is_ipv4() == local.is_ipv4() {
        (peer, local)
    } else {
        (to_v6(peer), to_v6(local))
    }
}

/// A polite goodbye after a health probe, so the backend logs a clean logout.
pub(crate) fn probe_goodbye(protocol: Protocol) -> &'static [u8] {
    match protocol {
        Protocol::Imap => b"postern-probe LOGOUT\r\n",
        Protocol::Pop3 | Protocol::Smtp => b"QUIT\r\n",
        Protocol::Sieve => b"LOGOUT\r\n",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_acceptance_is_detected() {
        assert!(untrusted(b"+OK You are not from trusted IP - ignoring\r\n"));
        assert!(!untrusted(b"+OK Updated\r\n"));
    }

    #[test]
    fn mixed_families_become_v6() {
        let (p, l) = same_family(
            "192.0.2.1:5".parse().unwrap(),
            "[2001:db8::1]:993".parse().unwrap(),
        );
        assert_eq!(p, "[::ffff:192.0.2.1]:5".parse().unwrap());
        assert_eq!(l, "[2001:db8::1]:993".parse().unwrap());
        let (p, l) = same_family(
            "[::ffff:192.0.2.1]:5".parse().unwrap(),
            "127.0.0.1:993".parse().unwrap(),
        );
        assert_eq!(
            (p, l),
            (
                "192.0.2.1:5".parse().unwrap(),
                "127.0.0.1:993".parse().unwrap()
            )
        );
    }
}
