//! `tls = "starttls"` towards a backend (docs/starttls.md, rules B1–B4): the plaintext part
//! before the TLS handshake and the re-reading after it.
//!
//! - B1, fail closed: a server that greets with PREAUTH, does not list STARTTLS (POP3:
//!   STLS) among its capabilities, or answers the command with anything but its go-ahead
//!   is an error; nothing of the client's session has been sent, and nothing will be.
//! - B2: bytes read after the go-ahead (and after the capability reply) are dropped, never
//!   passed on; the TLS engine reads only what arrives after them. Capabilities are asked
//!   again over TLS (IMAP: the greeting handed to the session carries the post-TLS
//!   `CAPABILITY` code; POP3 and SMTP have no greeting after the upgrade, and their
//!   clients' `CAPA`/`EHLO`, like the capability probe of `route = "user"`, run over TLS;
//!   a ManageSieve server lists its capabilities again, unasked (RFC 5804), and that list
//!   is the greeting the session gets).
//! - B3 is the certificate check in [`crate::tls`]; B4 (the PROXY header before any
//!   protocol byte) is the order in [`crate::dial`].

use postern_proto::capabilities::{self, Capabilities, Probe, Reply, MAX_REPLY};
use postern_proto::greeting::{parse_greeting, Greeting};
use postern_proto::lex::starts_with_ci;
use postern_proto::Protocol;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::dial::read_more;
use crate::error::{quote, ServerError};

/// The tag of postern's IMAP `STARTTLS`.
const TAG: &[u8] = b"postern-tls";

/// After the plaintext `greeting`: checks that the server offers the upgrade, asks for
/// it and reads the go-ahead. Any bytes after the go-ahead are dropped (B2).
pub(crate) async fn negotiate<S>(
    stream: &mut S,
    protocol: Protocol,
    greeting: &[u8],
    server: &str,
    stage: &mut &'static str,
) -> Result<(), ServerError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if protocol == Protocol::Imap && starts_with_ci(greeting, b"* PREAUTH") {
        return Err(ServerError::StarttlsRefused {
            server: server.to_owned(),
            line: quote(greeting),
        });
    }
    *stage = "capabilities before STARTTLS";
    let command_name = match protocol {
        Protocol::Pop3 => "STLS",
        Protocol::Imap | Protocol::Smtp | Protocol::Sieve => "STARTTLS",
    };
    let offered = match capabilities::probe(protocol, greeting) {
        Probe::Known(caps) => Some(caps),
        Probe::Ask(command) => {
            ask(
                stream,
                protocol,
                command,
                server,
                "capabilities before STARTTLS",
            )
            .await?
        }
    };
    if !offered.is_some_and(|caps| caps.has(command_name)) {
        return Err(ServerError::StarttlsNotOffered {
            server: server.to_owned(),
            command: command_name,
        });
    }

    *stage = "STARTTLS";
    let command: &[u8] = match protocol {
        Protocol::Imap => b"postern-tls STARTTLS\r\n",
        Protocol::Pop3 => b"STLS\r\n",
        Protocol::Smtp | Protocol::Sieve => b"STARTTLS\r\n",
    };
    send(stream, command, server, "STARTTLS").await?;
    let mut buf = Vec::with_capacity(256);
    loop {
        match go_ahead(protocol, &buf) {
            GoAhead::Yes { len } => {
                if buf.len() > len {
                    // Response injection (libetpan #386): whatever follows the go-ahead in
                    // plaintext is the server's or an attacker's, never the session's.
                    tracing::warn!(
                        server,
                        bytes = buf.len() - len,
                        "bytes after the backend's STARTTLS go-ahead discarded"
                    );
                }
                return Ok(());
            }
            GoAhead::No => {
                return Err(ServerError::StarttlsRefused {
                    server: server.to_owned(),
                    line: quote(last_line(&buf)),
                })
            }
            GoAhead::Incomplete if buf.len() >= MAX_REPLY => {
                return Err(ServerError::StarttlsRefused {
                    server: server.to_owned(),
                    line: quote(&buf),
                })
            }
            GoAhead::Incomplete => read_more(stream, &mut buf, server, "STARTTLS reply").await?,
        }
    }
}

/// After the TLS handshake: the greeting the session gets. IMAP: the plaintext greeting's
/// text with the capabilities asked again over TLS as its `CAPABILITY` code (the pre-TLS
/// ones, STARTTLS and LOGINDISABLED among them, are forgotten); POP3 and SMTP: the
/// plaintext greeting (they have no other).
pub(crate) async fn after_tls<S>(
    stream: &mut S,
    protocol: Protocol,
    plain_greeting: &[u8],
    server: &str,
    stage: &mut &'static str,
) -> Result<Vec<u8>, ServerError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if protocol == Protocol::Sieve {
        *stage = "capabilities after STARTTLS";
        let mut buf = Vec::with_capacity(1024);
        loop {
            match parse_greeting(protocol, &buf) {
                Greeting::Ok { len } => {
                    buf.truncate(len);
                    return Ok(buf);
                }
                Greeting::Refused { .. } | Greeting::Invalid => {
                    return Err(ServerError::StarttlsRefused {
                        server: server.to_owned(),
                        line: quote(last_line(&buf)),
                    })
                }
                Greeting::Incomplete => read_more(stream, &mut buf, server, stage).await?,
            }
        }
    }
    if protocol != Protocol::Imap {
        return Ok(plain_greeting.to_vec());
    }
    *stage = "capabilities after STARTTLS";
    let caps = ask(
        stream,
        protocol,
        b"postern-caps CAPABILITY\r\n",
        server,
        stage,
    )
    .await?
    .ok_or_else(|| ServerError::NoCapabilities {
        server: server.to_owned(),
    })?;
    Ok(imap_greeting(&caps, plain_greeting))
}

/// `* OK [CAPABILITY <caps>] <the text of the plaintext greeting>`.
fn imap_greeting(caps: &Capabilities, plain_greeting: &[u8]) -> Vec<u8> {
    let line = plain_greeting.strip_suffix(b"\n").unwrap_or(plain_greeting);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut text = line.get(4..).unwrap_or(b"").trim_ascii_start();
    if text.first() == Some(&b'[') {
        let close = text
            .iter()
            .position(|&b| b == b']')
            .map_or(text.len(), |i| i + 1);
        text = text[close..].trim_ascii_start();
    }
    let mut out = b"* OK [CAPABILITY ".to_vec();
    out.extend_from_slice(caps.items().join(" ").as_bytes());
    out.extend_from_slice(b"] ");
    out.extend_from_slice(if text.is_empty() { b"ready" } else { text });
    out.extend_from_slice(b"\r\n");
    out
}

/// Sends `command` and reads the capability reply; `None` when the server refused it.
/// Bytes after the reply are dropped.
async fn ask<S>(
    stream: &mut S,
    protocol: Protocol,
    command: &[u8],
    server: &str,
    stage: &'static str,
) -> Result<Option<Capabilities>, ServerError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    send(stream, command, server, stage).await?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        match capabilities::parse_reply(protocol, &buf) {
            Reply::Done(caps) => return Ok(Some(caps)),
            Reply::Refused => return Ok(None),
            Reply::Incomplete if buf.len() >= MAX_REPLY => return Ok(None),
            Reply::Incomplete => read_more(stream, &mut buf, server, stage).await?,
        }
    }
}

async fn send<S>(
    stream: &mut S,
    bytes: &[u8],
    server: &str,
    stage: &'static str,
) -> Result<(), ServerError>
where
    S: AsyncWrite + Unpin,
{
    let io = |source| ServerError::Io {
        server: server.to_owned(),
        stage,
        source,
    };
    stream.write_all(bytes).await.map_err(io)?;
    stream.flush().await.map_err(io)
}

#[derive(Debug, PartialEq, Eq)]
enum GoAhead {
    Incomplete,
    /// The go-ahead ends at `len`.
    Yes {
        len: usize,
    },
    No,
}

/// The reply to STARTTLS/STLS: IMAP `postern-tls OK` (untagged lines before it are
/// skipped), POP3 `+OK`, SMTP `220` (multi-line allowed), ManageSieve `OK`.
fn go_ahead(protocol: Protocol, buf: &[u8]) -> GoAhead {
    let mut pos = 0;
    while let Some(rel) = buf[pos..].iter().position(|&b| b == b'\n') {
        let line = &buf[pos..pos + rel + 1];
        pos += rel + 1;
        match protocol {
            Protocol::Imap => {
                if line.starts_with(b"* ") {
                    continue;
                }
                let ok = line
                    .strip_prefix(TAG)
                    .and_then(|rest| rest.strip_prefix(b" "))
                    .is_some_and(|status| starts_with_ci(status, b"OK"));
                return if ok {
                    GoAhead::Yes { len: pos }
                } else {
                    GoAhead::No
                };
            }
            Protocol::Sieve => {
                return if postern_proto::greeting::is_sieve_ok(line) {
                    GoAhead::Yes { len: pos }
                } else {
                    GoAhead::No
                };
            }
            Protocol::Pop3 => {
                return if line.starts_with(b"+OK") {
                    GoAhead::Yes { len: pos }
                } else {
                    GoAhead::No
                };
            }
            Protocol::Smtp => {
                if !line.starts_with(b"220") {
                    return GoAhead::No;
                }
                if line.get(3) != Some(&b'-') {
                    return GoAhead::Yes { len: pos };
                }
            }
        }
    }
    GoAhead::Incomplete
}

fn last_line(buf: &[u8]) -> &[u8] {
    let body = buf.strip_suffix(b"\n").unwrap_or(buf);
    match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => &buf[i + 1..],
        None => buf,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, DuplexStream};

    /// A scripted server on the other end of a duplex pipe: for each expected line it
    /// reads exactly that line, then writes the reply. Returns everything it read.
    fn scripted(
        script: Vec<(&'static [u8], &'static [u8])>,
    ) -> (DuplexStream, tokio::task::JoinHandle<Vec<u8>>) {
        let (client, mut server) = duplex(64 * 1024);
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for (expect, reply) in script {
                let mut line = vec![0u8; expect.len()];
                if server.read_exact(&mut line).await.is_err() {
                    break;
                }
                assert_eq!(line, expect, "the client sent something else");
                seen.extend_from_slice(&line);
                server.write_all(reply).await.unwrap();
            }
            // Whatever the client sends afterwards (it must send nothing more).
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(
                std::time::Duration::from_millis(200),
                server.read_to_end(&mut rest),
            )
            .await;
            seen.extend_from_slice(&rest);
            seen
        });
        (client, task)
    }

    async fn run(
        protocol: Protocol,
        greeting: &[u8],
        script: Vec<(&'static [u8], &'static [u8])>,
    ) -> (Result<(), ServerError>, Vec<u8>, DuplexStream) {
        let (mut client, task) = scripted(script);
        let mut stage = "greeting";
        let result = negotiate(&mut client, protocol, greeting, "s:1", &mut stage).await;
        client.shutdown().await.unwrap();
        let seen = task.await.unwrap();
        (result, seen, client)
    }

    // B1: no STARTTLS in the capabilities: nothing but the capability question is sent.
    #[tokio::test]
    async fn imap_without_starttls_fails_closed() {
        let (r, seen, _) = run(
            Protocol::Imap,
            b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n",
            vec![],
        )
        .await;
        assert!(
            matches!(
                r,
                Err(ServerError::StarttlsNotOffered {
                    command: "STARTTLS",
                    ..
                })
            ),
            "{r:?}"
        );
        assert_eq!(seen, b"");
        let (r, seen, _) = run(
            Protocol::Imap,
            b"* OK ready\r\n",
            vec![(
                b"postern-caps CAPABILITY\r\n",
                b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\npostern-caps OK\r\n",
            )],
        )
        .await;
        assert!(
            matches!(r, Err(ServerError::StarttlsNotOffered { .. })),
            "{r:?}"
        );
        assert_eq!(seen, b"postern-caps CAPABILITY\r\n");
    }

    #[tokio::test]
    async fn pop3_and_smtp_without_the_upgrade_fail_closed() {
        let (r, seen, _) = run(
            Protocol::Pop3,
            b"+OK ready\r\n",
            vec![(b"CAPA\r\n", b"+OK\r\nUSER\r\nSASL PLAIN\r\n.\r\n")],
        )
        .await;
        assert!(
            matches!(
                r,
                Err(ServerError::StarttlsNotOffered {
                    command: "STLS",
                    ..
                })
            ),
            "{r:?}"
        );
        assert_eq!(seen, b"CAPA\r\n");
        // CAPA refused: also no plaintext fallback.
        let (r, _, _) = run(
            Protocol::Pop3,
            b"+OK ready\r\n",
            vec![(b"CAPA\r\n", b"-ERR no\r\n")],
        )
        .await;
        assert!(
            matches!(r, Err(ServerError::StarttlsNotOffered { .. })),
            "{r:?}"
        );
        let (r, seen, _) = run(
            Protocol::Smtp,
            b"220 mx ESMTP\r\n",
            vec![(b"EHLO postern.invalid\r\n", b"250-mx\r\n250 AUTH PLAIN\r\n")],
        )
        .await;
        assert!(
            matches!(r, Err(ServerError::StarttlsNotOffered { .. })),
            "{r:?}"
        );
        assert_eq!(seen, b"EHLO postern.invalid\r\n");
    }

    // B1: PREAUTH would start the session authenticated in plaintext.
    #[tokio::test]
    async fn preauth_is_refused() {
        let (r, seen, _) = run(
            Protocol::Imap,
            b"* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n",
            vec![],
        )
        .await;
        assert!(
            matches!(r, Err(ServerError::StarttlsRefused { .. })),
            "{r:?}"
        );
        assert_eq!(seen, b"");
    }

    // B1: the upgrade is refused.
    #[tokio::test]
    async fn a_refused_upgrade_fails() {
        for (protocol, greeting, script) in [
            (
                Protocol::Imap,
                &b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n"[..],
                vec![(
                    &b"postern-tls STARTTLS\r\n"[..],
                    &b"* OK still here\r\npostern-tls NO not now\r\n"[..],
                )],
            ),
            (
                Protocol::Pop3,
                b"+OK ready\r\n",
                vec![
                    (&b"CAPA\r\n"[..], &b"+OK\r\nSTLS\r\n.\r\n"[..]),
                    (b"STLS\r\n", b"-ERR no\r\n"),
                ],
            ),
            (
                Protocol::Smtp,
                b"220 mx ESMTP\r\n",
                vec![
                    (
                        &b"EHLO postern.invalid\r\n"[..],
                        &b"250-mx\r\n250 STARTTLS\r\n"[..],
                    ),
                    (b"STARTTLS\r\n", b"454 4.7.0 TLS not available\r\n"),
                ],
            ),
        ] {
            let (r, _, _) = run(protocol, greeting, script).await;
            assert!(
                matches!(r, Err(ServerError::StarttlsRefused { .. })),
                "{protocol:?}: {r:?}"
            );
        }
    }

    // B2: what follows the go-ahead is dropped: the next read on the stream (the TLS
    // engine's) sees only what the server sends afterwards.
    #[tokio::test]
    async fn bytes_after_the_go_ahead_are_discarded() {
        let (mut client, mut server) = duplex(64 * 1024);
        let srv = tokio::spawn(async move {
            let mut line = vec![0u8; b"postern-tls STARTTLS\r\n".len()];
            server.read_exact(&mut line).await.unwrap();
            assert_eq!(line, b"postern-tls STARTTLS\r\n");
            server
                .write_all(b"postern-tls OK Begin TLS\r\nB OK fake\r\n* 1 EXISTS\r\n")
                .await
                .unwrap();
            // The client's first byte after the go-ahead (a ClientHello would start so);
            // only then what its TLS engine should read.
            let mut hello = [0u8; 1];
            server.read_exact(&mut hello).await.unwrap();
            assert_eq!(hello, [0x16]);
            server.write_all(b"\x16after").await.unwrap();
            server
        });
        let mut stage = "greeting";
        negotiate(
            &mut client,
            Protocol::Imap,
            b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] ready\r\n",
            "s:1",
            &mut stage,
        )
        .await
        .unwrap();
        client.write_all(&[0x16]).await.unwrap();
        let _server = srv.await.unwrap();
        let mut next = [0u8; 6];
        client.read_exact(&mut next).await.unwrap();
        assert_eq!(&next, b"\x16after");
    }

    // B2: the IMAP greeting handed on carries the post-TLS capabilities only.
    #[tokio::test]
    async fn imap_capabilities_are_read_again_after_tls() {
        let (mut client, task) = scripted(vec![(
            b"postern-caps CAPABILITY\r\n",
            b"* CAPABILITY IMAP4rev1 AUTH=PLAIN ID\r\npostern-caps OK\r\n",
        )]);
        let mut stage = "TLS handshake";
        let greeting = after_tls(
            &mut client,
            Protocol::Imap,
            b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] Dovecot ready.\r\n",
            "s:1",
            &mut stage,
        )
        .await
        .unwrap();
        assert_eq!(
            greeting,
            b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN ID] Dovecot ready.\r\n"
        );
        client.shutdown().await.unwrap();
        task.await.unwrap();
        // POP3 and SMTP: the plaintext greeting, nothing sent.
        let (mut client, task) = scripted(vec![]);
        let g = after_tls(
            &mut client,
            Protocol::Pop3,
            b"+OK ready\r\n",
            "s:1",
            &mut stage,
        )
        .await
        .unwrap();
        assert_eq!(g, b"+OK ready\r\n");
        client.shutdown().await.unwrap();
        assert_eq!(task.await.unwrap(), b"");
    }

    #[test]
    fn go_ahead_grammar() {
        assert_eq!(
            go_ahead(Protocol::Imap, b"postern-tls OK"),
            GoAhead::Incomplete
        );
        assert_eq!(
            go_ahead(Protocol::Imap, b"* OK x\r\npostern-tls ok go\r\n"),
            GoAhead::Yes { len: 27 }
        );
        assert_eq!(go_ahead(Protocol::Imap, b"other OK go\r\n"), GoAhead::No);
        assert_eq!(go_ahead(Protocol::Imap, b"postern-tlsOK\r\n"), GoAhead::No);
        assert_eq!(
            go_ahead(Protocol::Smtp, b"220-a\r\n220 go\r\nX"),
            GoAhead::Yes { len: 15 }
        );
        assert_eq!(
            go_ahead(Protocol::Smtp, b"220-a\r\n454 no\r\n"),
            GoAhead::No
        );
        assert_eq!(
            go_ahead(Protocol::Pop3, b"+OK go\r\n"),
            GoAhead::Yes { len: 8 }
        );
        assert_eq!(go_ahead(Protocol::Pop3, b"-ERR\r\n"), GoAhead::No);
    }
}
