//! The PROXY protocol header a load balancer sends in front of a client's first byte
//! (listener `proxy_protocol`, `proxy_from`; docs/configuration.md).
//!
//! The header is read with `MSG_PEEK` and consumed exactly: bytes after it (a TLS
//! ClientHello, a pipelined IMAP command) stay in the socket for the TLS engine or the
//! plaintext phase, so none is lost and none is read twice. A peek that shows only part of
//! a header consumes what it shows (every one of those bytes belongs to the header) and
//! waits for more; the header is bounded by [`MAX_HEADER`].

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use postern_config::{ProxyConfig, ProxyVersion};
use proxy_header::{ParseConfig, ProxyHeader};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A header longer than this is refused. v1 headers are at most 107 bytes; v2 headers from
/// real load balancers (AWS NLB with its VPC-endpoint TLV, HAProxy with SSL TLVs) stay
/// well under 1 KiB.
pub(crate) const MAX_HEADER: usize = 4096;

/// The addresses of a connection as the session must see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Addresses {
    /// The real client: from the header, or the TCP peer for a `LOCAL` header (the load
    /// balancer's own health check) and for listeners without PROXY protocol.
    pub(crate) client: SocketAddr,
    /// The address the client connected to (the load balancer's, from the header).
    pub(crate) local: SocketAddr,
}

/// Why a connection was refused for the PROXY protocol (reason `proxy`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyRefusal {
    /// The peer is not in `proxy_from`.
    #[error("peer is not in proxy_from")]
    Untrusted,
    /// No complete header within the deadline.
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    /// The first bytes are not a PROXY header of an accepted version.
    #[error("not a valid PROXY {0} header")]
    Invalid(&'static str),
    /// The peer closed the connection before the header was complete.
    #[error("connection closed before the PROXY header was complete")]
    Closed,
    /// Reading the socket failed.
    #[error("reading the PROXY header failed")]
    Io(#[source] io::Error),
}

/// Reads the header `config` asks for from `stream`, within `deadline`, and returns the
/// addresses it carries. `peer` and `local` are the TCP connection's own.
pub(crate) async fn read_header(
    stream: &mut TcpStream,
    config: &ProxyConfig,
    peer: SocketAddr,
    local: SocketAddr,
    deadline: Duration,
) -> Result<Addresses, ProxyRefusal> {
    if !config.from.contains(peer.ip()) {
        return Err(ProxyRefusal::Untrusted);
    }
    match tokio::time::timeout(deadline, read(stream, config.version, peer, local)).await {
        Ok(result) => result,
        Err(_) => Err(ProxyRefusal::Timeout(deadline)),
    }
}

async fn read(
    stream: &mut TcpStream,
    version: ProxyVersion,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<Addresses, ProxyRefusal> {
    let parse = ParseConfig {
        include_tlvs: false,
        allow_v1: version != ProxyVersion::V2,
        allow_v2: version != ProxyVersion::V1,
    };
    let label = match version {
        ProxyVersion::V1 => "v1",
        ProxyVersion::V2 => "v2",
        ProxyVersion::Any => "v1 or v2",
    };
    // `consumed` holds the header bytes already taken off the socket.
    let mut consumed: Vec<u8> = Vec::with_capacity(128);
    let mut peeked = [0u8; 512];
    loop {
        let n = stream.peek(&mut peeked).await.map_err(ProxyRefusal::Io)?;
        if n == 0 {
            return Err(ProxyRefusal::Closed);
        }
        let mut buf = consumed.clone();
        buf.extend_from_slice(&peeked[..n]);
        match ProxyHeader::parse(&buf, parse) {
            Ok((header, len)) => {
                // A header shorter than what an earlier, incomplete parse already took would
                // mean the parser changed its mind about a prefix; never hand on such bytes.
                let rest = len
                    .checked_sub(consumed.len())
                    .ok_or(ProxyRefusal::Invalid(label))?;
                let addresses = match header.proxied_address() {
                    Some(addr) => Addresses {
                        client: addr.source,
                        local: addr.destination,
                    },
                    None => Addresses {
                        client: peer,
                        local,
                    },
                };
                take(stream, rest).await?;
                return Ok(addresses);
            }
            Err(proxy_header::Error::BufferTooShort) if buf.len() < MAX_HEADER => {
                // Everything peeked is part of the (incomplete) header: take it and wait
                // for the rest, so the next peek blocks instead of returning the same bytes.
                take(stream, n).await?;
                consumed = buf;
            }
            Err(_) => return Err(ProxyRefusal::Invalid(label)),
        }
    }
}

/// Consumes exactly `n` bytes that a peek has shown to be there.
async fn take(stream: &mut TcpStream, n: usize) -> Result<(), ProxyRefusal> {
    let mut sink = [0u8; 512];
    let mut left = n;
    while left > 0 {
        let chunk = left.min(sink.len());
        stream
            .read_exact(&mut sink[..chunk])
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => ProxyRefusal::Closed,
                _ => ProxyRefusal::Io(e),
            })?;
        left -= chunk;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
