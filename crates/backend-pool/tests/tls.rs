//! TLS to the servers (`tls = "implicit"` / `"starttls"`, `tls_ca`, `tls_name`): sessions,
//! probes and spares over TLS; a server that fails verification or the upgrade gets no
//! byte of the session and counts as a failed connect (rules B1–B4).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use postern_backend_pool::{PoolError, ServerError};
use postern_config::{BackendTls, Balance, ForwardClient, TlsMode};
use postern_metrics::ErrorChain;
use postern_proto::Protocol;
use postern_testkit::wait_for;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// A CA and what it issued, written to a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        Pki::named("postern test CA")
    }

    fn named(cn: &str) -> Pki {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
        }
    }

    fn ca_file(&self) -> PathBuf {
        let path = self.dir.path().join("ca.pem");
        std::fs::write(&path, self.ca.pem()).unwrap();
        path
    }

    /// A server configuration with a leaf for `names`.
    fn acceptor(&self, names: &[&str]) -> TlsAcceptor {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let leaf = params.signed_by(&key, &self.ca).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Implicit,
    /// `offer`: list STARTTLS; `inject`: append a fake tagged reply to the go-ahead.
    Starttls {
        offer: bool,
        inject: bool,
    },
}

/// What a fake TLS server saw, per connection.
#[derive(Debug, Default)]
struct Seen {
    /// Lines in plaintext.
    plain: Vec<String>,
    /// Lines over TLS.
    tls: Vec<String>,
    /// The first byte after the PROXY header (0x16 = a TLS ClientHello).
    first_after_proxy: Vec<u8>,
    /// Completed handshakes.
    handshakes: usize,
}

struct TlsServer {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Seen>>,
    _task: tokio::task::JoinHandle<()>,
}

impl TlsServer {
    async fn spawn(acceptor: TlsAcceptor, mode: Mode, proxy: bool) -> TlsServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let seen2 = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(
                    stream,
                    acceptor.clone(),
                    mode,
                    proxy,
                    Arc::clone(&seen2),
                ));
            }
        });
        TlsServer {
            addr,
            seen,
            _task: task,
        }
    }

    fn server_addr(&self) -> postern_config::ServerAddr {
        postern_config::ServerAddr::Tcp {
            host: "127.0.0.1".into(),
            port: self.addr.port(),
        }
    }

    fn label(&self) -> String {
        self.addr.to_string()
    }
}

async fn serve(
    mut stream: TcpStream,
    acceptor: TlsAcceptor,
    mode: Mode,
    proxy: bool,
    seen: Arc<Mutex<Seen>>,
) {
    if proxy {
        // PROXY v1: one text line.
        let mut byte = [0u8; 1];
        loop {
            if stream.read_exact(&mut byte).await.is_err() {
                return;
            }
            if byte[0] == b'\n' {
                break;
            }
        }
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await.unwrap_or(0) == 1 {
            seen.lock().unwrap().first_after_proxy.push(first[0]);
        }
    }
    match mode {
        Mode::Implicit => {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            seen.lock().unwrap().handshakes += 1;
            imap_over_tls(
                tls,
                &seen,
                b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] tls ready\r\n",
            )
            .await;
        }
        Mode::Starttls { offer, inject } => {
            let greeting: &[u8] = if offer {
                b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] plain ready\r\n"
            } else {
                b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] plain ready\r\n"
            };
            let mut reader = BufReader::new(stream);
            if reader.write_all(greeting).await.is_err() {
                return;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let line = line.trim_end().to_owned();
                seen.lock().unwrap().plain.push(line.clone());
                if line == "postern-tls STARTTLS" {
                    let reply: &[u8] = if inject {
                        b"postern-tls OK Begin TLS\r\nB OK [ALERT] injected\r\n* CAPABILITY IMAP4rev1 AUTH=EVIL\r\n"
                    } else {
                        b"postern-tls OK Begin TLS\r\n"
                    };
                    reader.write_all(reply).await.unwrap();
                    break;
                }
                let _ = reader.write_all(b"x BAD plaintext\r\n").await;
            }
            let Ok(tls) = acceptor.accept(reader.into_inner()).await else {
                return;
            };
            seen.lock().unwrap().handshakes += 1;
            imap_over_tls(tls, &seen, b"").await;
        }
    }
}

/// Sends `greeting`, then answers CAPABILITY and echoes every other line.
async fn imap_over_tls<S>(stream: S, seen: &Mutex<Seen>, greeting: &[u8])
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut stream = BufReader::new(stream);
    if stream.write_all(greeting).await.is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end().to_owned();
        seen.lock().unwrap().tls.push(line.clone());
        let reply = if line == "postern-caps CAPABILITY" {
            "* CAPABILITY IMAP4rev1 AUTH=PLAIN ID\r\npostern-caps OK done\r\n".to_owned()
        } else {
            format!("echo {line}\r\n")
        };
        if stream.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn tls_backend(
    servers: &[&TlsServer],
    mode: TlsMode,
    ca: Option<PathBuf>,
    name: Option<&str>,
) -> postern_config::BackendConfig {
    let mut cfg = backend(
        "remote",
        servers.iter().map(|s| s.server_addr()).collect(),
        Balance::RoundRobin,
    );
    cfg.tls = Some(BackendTls {
        mode,
        ca,
        name: name.map(str::to_owned),
    });
    cfg
}

async fn echo(conn: &mut postern_backend_pool::BackendConn, line: &str) {
    conn.stream
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    read_until_contains(
        &mut conn.stream,
        &mut buf,
        format!("echo {line}").as_bytes(),
    )
    .await;
}

#[tokio::test]
async fn implicit_tls_verified_by_tls_ca_against_the_server_ip() {
    let pki = Pki::new();
    let server = TlsServer::spawn(pki.acceptor(&["127.0.0.1"]), Mode::Implicit, false).await;
    let cfg = tls_backend(&[&server], TlsMode::Implicit, Some(pki.ca_file()), None);
    let (pool, _m) = pool(&cfg, Protocol::Imap);
    let mut conn = pool.connect(client("192.0.2.1:1000")).await.unwrap();
    assert_eq!(
        conn.greeting,
        b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] tls ready\r\n"
    );
    assert!(matches!(
        conn.stream,
        postern_backend_pool::BackendStream::Tls(_)
    ));
    echo(&mut conn, "a1 NOOP").await;
    let seen = server.seen.lock().unwrap();
    assert_eq!(seen.handshakes, 1);
    assert_eq!(seen.tls, ["a1 NOOP"]);
}

#[tokio::test]
async fn tls_name_overrides_the_name_checked() {
    let pki = Pki::new();
    let server = TlsServer::spawn(pki.acceptor(&["imap.test"]), Mode::Implicit, false).await;
    let cfg = tls_backend(
        &[&server],
        TlsMode::Implicit,
        Some(pki.ca_file()),
        Some("imap.test"),
    );
    let (pool, _m) = pool(&cfg, Protocol::Imap);
    let mut conn = pool.connect(client("192.0.2.1:1000")).await.unwrap();
    echo(&mut conn, "a1 NOOP").await;
}

/// Connecting fails with a TLS error whose chain says `why`; the server got no line, and
/// the failure is counted.
async fn refused(cfg: &postern_config::BackendConfig, server: &TlsServer, why: &str) {
    let (pool, metrics) = pool(cfg, Protocol::Imap);
    let error = pool.connect(client("192.0.2.1:1000")).await.unwrap_err();
    let PoolError::NoServerAvailable { last_error, .. } = &error else {
        panic!("{error:?}")
    };
    assert!(
        matches!(last_error, ServerError::Tls { .. }),
        "{last_error:?}"
    );
    let chain = ErrorChain(&error).to_string();
    assert!(
        chain.contains(&server.label()) && chain.contains(why),
        "{chain}"
    );
    assert_eq!(
        metrics
            .server("remote", &server.label())
            .connect_failures
            .get(),
        1
    );
    let seen = server.seen.lock().unwrap();
    assert_eq!(seen.handshakes, 0);
    assert!(seen.tls.is_empty() && seen.plain.is_empty(), "{seen:?}");
}

// B3: a certificate for another name.
#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let pki = Pki::new();
    let server = TlsServer::spawn(pki.acceptor(&["other.test"]), Mode::Implicit, false).await;
    let cfg = tls_backend(&[&server], TlsMode::Implicit, Some(pki.ca_file()), None);
    refused(
        &cfg,
        &server,
        "certificate not valid for name \"127.0.0.1\"",
    )
    .await;
}

// B3: a certificate from another CA (here also: not in the system roots).
#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let (pki, other) = (Pki::new(), Pki::named("another CA"));
    let server = TlsServer::spawn(other.acceptor(&["127.0.0.1"]), Mode::Implicit, false).await;
    let cfg = tls_backend(&[&server], TlsMode::Implicit, Some(pki.ca_file()), None);
    refused(&cfg, &server, "UnknownIssuer").await;
    let cfg = tls_backend(&[&server], TlsMode::Implicit, None, None);
    let (pool, _m) = pool(&cfg, Protocol::Imap);
    assert!(pool.connect(client("192.0.2.1:1000")).await.is_err());
}

// B1 + B2 over a real handshake: the greeting handed out carries the capabilities read
// over TLS, and what the server appended to its go-ahead never surfaces.
#[tokio::test]
async fn starttls_upgrades_rereads_capabilities_and_drops_injected_bytes() {
    let pki = Pki::new();
    for inject in [false, true] {
        let server = TlsServer::spawn(
            pki.acceptor(&["127.0.0.1"]),
            Mode::Starttls {
                offer: true,
                inject,
            },
            false,
        )
        .await;
        let cfg = tls_backend(&[&server], TlsMode::Starttls, Some(pki.ca_file()), None);
        let (pool, _m) = pool(&cfg, Protocol::Imap);
        let mut conn = pool.connect(client("192.0.2.1:1000")).await.unwrap();
        assert_eq!(
            conn.greeting,
            b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN ID] plain ready\r\n"
        );
        conn.stream.write_all(b"a1 NOOP\r\n").await.unwrap();
        let mut buf = Vec::new();
        read_until_contains(&mut conn.stream, &mut buf, b"echo a1 NOOP").await;
        assert_eq!(
            buf, b"echo a1 NOOP\r\n",
            "nothing injected reaches the session"
        );
        let seen = server.seen.lock().unwrap();
        assert_eq!(seen.plain, ["postern-tls STARTTLS"]);
        assert_eq!(seen.tls, ["postern-caps CAPABILITY", "a1 NOOP"]);
    }
}

// B1: no STARTTLS offered: never used in plaintext.
#[tokio::test]
async fn starttls_not_offered_is_never_used() {
    let pki = Pki::new();
    let server = TlsServer::spawn(
        pki.acceptor(&["127.0.0.1"]),
        Mode::Starttls {
            offer: false,
            inject: false,
        },
        false,
    )
    .await;
    let cfg = tls_backend(&[&server], TlsMode::Starttls, Some(pki.ca_file()), None);
    let (pool, metrics) = pool(&cfg, Protocol::Imap);
    let error = pool.connect(client("192.0.2.1:1000")).await.unwrap_err();
    let chain = ErrorChain(&error).to_string();
    assert!(chain.contains("does not offer STARTTLS"), "{chain}");
    assert_eq!(
        metrics
            .server("remote", &server.label())
            .connect_failures
            .get(),
        1
    );
    let seen = server.seen.lock().unwrap();
    assert!(seen.plain.is_empty() && seen.handshakes == 0, "{seen:?}");
}

// B4: the PROXY header first, then the ClientHello.
#[tokio::test]
async fn the_proxy_header_precedes_the_tls_handshake() {
    let pki = Pki::new();
    let server = TlsServer::spawn(pki.acceptor(&["127.0.0.1"]), Mode::Implicit, true).await;
    let mut cfg = tls_backend(&[&server], TlsMode::Implicit, Some(pki.ca_file()), None);
    cfg.forward_client = ForwardClient::ProxyV1;
    let (pool, _m) = pool(&cfg, Protocol::Imap);
    let mut conn = pool.connect(client("192.0.2.1:1000")).await.unwrap();
    echo(&mut conn, "a1 NOOP").await;
    assert_eq!(server.seen.lock().unwrap().first_after_proxy, [0x16]);
}

// Health checks use the same TLS: a server whose certificate does not verify goes down,
// one that does stays up and was probed over TLS.
#[tokio::test]
async fn health_probes_speak_tls() {
    let pki = Pki::new();
    let good = TlsServer::spawn(pki.acceptor(&["127.0.0.1"]), Mode::Implicit, false).await;
    let bad = TlsServer::spawn(pki.acceptor(&["other.test"]), Mode::Implicit, false).await;
    let mut cfg = tls_backend(&[&good, &bad], TlsMode::Implicit, Some(pki.ca_file()), None);
    cfg.health = health(50);
    let (pool, metrics) = pool(&cfg, Protocol::Imap);
    let shutdown = CancellationToken::new();
    pool.spawn_background(shutdown.clone());
    let bad_up = metrics.server("remote", &bad.label()).up;
    assert!(wait_for(Duration::from_secs(5), || bad_up.get() == 0).await);
    assert!(
        wait_for(Duration::from_secs(5), || {
            good.seen
                .lock()
                .unwrap()
                .tls
                .iter()
                .any(|l| l.contains("LOGOUT"))
        })
        .await
    );
    assert_eq!(metrics.server("remote", &good.label()).up.get(), 1);
    assert_eq!(bad.seen.lock().unwrap().handshakes, 0);
    shutdown.cancel();
}

// Warm spares are TLS too.
#[tokio::test]
async fn warm_spares_are_tls() {
    let pki = Pki::new();
    let server = TlsServer::spawn(pki.acceptor(&["127.0.0.1"]), Mode::Implicit, false).await;
    let mut cfg = tls_backend(&[&server], TlsMode::Implicit, Some(pki.ca_file()), None);
    cfg.warm = 1;
    let (pool, _m) = pool(&cfg, Protocol::Imap);
    let shutdown = CancellationToken::new();
    pool.spawn_background(shutdown.clone());
    // The probe's handshake and the spare's.
    assert!(
        wait_for(Duration::from_secs(5), || server
            .seen
            .lock()
            .unwrap()
            .handshakes
            >= 2)
        .await
    );
    let mut conn = pool.connect(client("192.0.2.1:1000")).await.unwrap();
    assert!(matches!(
        conn.stream,
        postern_backend_pool::BackendStream::Tls(_)
    ));
    echo(&mut conn, "a1 NOOP").await;
    shutdown.cancel();
}
