//! The unbuffered TLS stream against a real rustls client (tokio-rustls) over in-memory
//! pipes small enough to cut records and writes anywhere.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, RootCertStore, ServerConfig};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::timeout;
use tokio_rustls::client::TlsStream as ClientStream;
use tokio_rustls::TlsConnector;

use super::*;

const DEADLINE: Duration = Duration::from_secs(20);

struct Pki {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

fn pki() -> Pki {
    pki_with(&[&rustls::version::TLS13, &rustls::version::TLS12])
}

/// The client speaks only `versions`.
fn pki_with(versions: &[&'static rustls::SupportedProtocolVersion]) -> Pki {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["mail.example".into()]).unwrap();
    let der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let server = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(der).unwrap();
    let client = ClientConfig::builder_with_protocol_versions(versions)
        .with_root_certificates(roots)
        .with_no_client_auth();
    Pki {
        server: recording_sni(Arc::new(server)),
        client: Arc::new(client),
    }
}

/// A handshake over a pipe of `pipe` bytes; `early`: what the client writes right after it.
async fn pair(
    pki: &Pki,
    pipe: usize,
    early: &[u8],
) -> (ClientTls<DuplexStream>, ClientStream<DuplexStream>) {
    let (s, c) = duplex(pipe);
    let connector = TlsConnector::from(pki.client.clone());
    let early = early.to_vec();
    let client = async move {
        let name = ServerName::try_from("mail.example").unwrap();
        let mut tls = connector.connect(name, c).await.unwrap();
        tls.write_all(&early).await.unwrap();
        tls.flush().await.unwrap();
        tls
    };
    let (server, client) = timeout(DEADLINE, async {
        tokio::join!(accept(s, pki.server.clone()), client)
    })
    .await
    .unwrap();
    (server.unwrap(), client)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn a_megabyte_each_way_through_a_tight_pipe() {
    let pki = pki();
    let (mut server, client) = pair(&pki, 997, b"").await;
    assert_eq!(server.server_name(), Some("mail.example"));
    let data = pattern(1 << 20);
    let (mut cr, mut cw) = tokio::io::split(client);
    let sent = data.clone();
    let echo = async {
        let mut buf = vec![0u8; 3000];
        let mut total = 0;
        while total < sent.len() {
            let n = server.read(&mut buf).await.unwrap();
            assert!(n > 0, "early EOF at {total}");
            server.write_all(&buf[..n]).await.unwrap();
            total += n;
        }
        server.flush().await.unwrap();
        server
    };
    let write = async {
        cw.write_all(&sent).await.unwrap();
        cw.flush().await.unwrap();
    };
    let read = async {
        let mut back = vec![0u8; sent.len()];
        cr.read_exact(&mut back).await.unwrap();
        back
    };
    let (server, (), back) = timeout(DEADLINE, async { tokio::join!(echo, write, read) })
        .await
        .unwrap();
    assert!(back == data, "echoed bytes differ");
    // Quiet again: the session holds no buffer of its own.
    assert_eq!(server.held_bytes(), 0, "{server:?}");
}

#[tokio::test]
async fn bytes_the_client_sends_with_its_finished_are_read() {
    let pki = pki();
    let (mut server, _client) = pair(&pki, 64 * 1024, b"a1 CAPABILITY\r\n").await;
    let mut buf = [0u8; 64];
    let n = timeout(DEADLINE, server.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"a1 CAPABILITY\r\n");
    assert_eq!(server.held_bytes(), 0, "{server:?}");
}

#[tokio::test]
async fn a_reader_with_a_one_byte_buffer_gets_every_byte() {
    let pki = pki();
    let (mut server, mut client) = pair(&pki, 64 * 1024, b"").await;
    let data = pattern(40_000);
    client.write_all(&data).await.unwrap();
    client.flush().await.unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while got.len() < data.len() {
        let n = timeout(DEADLINE, server.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1);
        got.push(byte[0]);
    }
    assert!(got == data);
    assert_eq!(server.held_bytes(), 0, "{server:?}");
}

#[tokio::test]
async fn close_notify_reads_as_eof() {
    let pki = pki();
    let (mut server, mut client) = pair(&pki, 4096, b"last\r\n").await;
    client.shutdown().await.unwrap();
    let mut all = Vec::new();
    timeout(DEADLINE, server.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(all, b"last\r\n");
    // The other direction still works after the client's close_notify.
    server.write_all(b"* BYE\r\n").await.unwrap();
    server.shutdown().await.unwrap();
    let mut back = Vec::new();
    timeout(DEADLINE, client.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"* BYE\r\n");
}

#[tokio::test]
async fn tcp_eof_without_close_notify_is_unexpected_eof() {
    let pki = pki();
    let (mut server, client) = pair(&pki, 4096, b"").await;
    drop(client);
    let mut buf = [0u8; 16];
    let err = timeout(DEADLINE, server.read(&mut buf))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn shutdown_sends_close_notify_after_the_data() {
    let pki = pki();
    let (mut server, mut client) = pair(&pki, 512, b"").await;
    let data = pattern(100_000);
    let write = async {
        server.write_all(&data).await.unwrap();
        server.shutdown().await.unwrap();
    };
    let read = async {
        let mut back = Vec::new();
        // read_to_end succeeds only on a close_notify (a bare EOF is an error).
        client.read_to_end(&mut back).await.unwrap();
        back
    };
    let ((), back) = timeout(DEADLINE, async { tokio::join!(write, read) })
        .await
        .unwrap();
    assert!(back == data);
}

#[tokio::test]
async fn a_plaintext_client_gets_an_alert_and_the_handshake_fails() {
    let pki = pki();
    let (s, mut c) = duplex(4096);
    c.write_all(b"a001 LOGIN user pass\r\n").await.unwrap();
    let err = timeout(DEADLINE, accept(s, pki.server.clone()))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err
        .get_ref()
        .unwrap()
        .downcast_ref::<rustls::Error>()
        .is_some());
    let mut alert = [0u8; 7];
    timeout(DEADLINE, c.read_exact(&mut alert))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alert[0], 0x15, "a TLS alert record: {alert:?}");
}

#[tokio::test]
async fn eof_during_the_handshake_is_unexpected_eof() {
    let pki = pki();
    let (s, c) = duplex(4096);
    drop(c);
    let err = timeout(DEADLINE, accept(s, pki.server.clone()))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn a_second_connection_resumes_and_names_its_server_again() {
    let pki = pki();
    for kind in [HandshakeKind::Full, HandshakeKind::Resumed] {
        let (mut server, mut client) = pair(&pki, 64 * 1024, b"").await;
        // The client takes its ticket with the first server bytes.
        server.write_all(b"* OK\r\n").await.unwrap();
        server.flush().await.unwrap();
        let mut buf = [0u8; 6];
        timeout(DEADLINE, client.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(client.get_ref().1.handshake_kind(), Some(kind));
        assert_eq!(server.server_name(), Some("mail.example"));
        assert_eq!(server.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    }
}

#[tokio::test]
async fn key_updates_from_the_client_are_followed() {
    let pki = pki();
    let (mut server, mut client) = pair(&pki, 8192, b"").await;
    let mut buf = [0u8; 32];
    for round in 0..3u8 {
        client.get_mut().1.refresh_traffic_keys().unwrap();
        client.write_all(&[b'a' + round; 10]).await.unwrap();
        client.flush().await.unwrap();
        let n = timeout(DEADLINE, server.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], &[b'a' + round; 10]);
        server.write_all(&[b'A' + round; 10]).await.unwrap();
        server.flush().await.unwrap();
        let n = timeout(DEADLINE, client.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], &[b'A' + round; 10]);
    }
}

#[tokio::test]
async fn a_client_that_does_not_read_holds_at_most_one_write() {
    let pki = pki();
    let (mut server, _client) = pair(&pki, 4096, b"").await;
    let data = pattern(256 * 1024);
    let mut written = 0;
    // Write until the pipe pushes back; then the stream holds what it encrypted and no more.
    let pending = timeout(DEADLINE, async {
        loop {
            let n = poll_fn(
                |cx| match Pin::new(&mut server).poll_write(cx, &data[written..]) {
                    Poll::Pending => Poll::Ready(None),
                    Poll::Ready(r) => Poll::Ready(Some(r.unwrap())),
                },
            )
            .await;
            match n {
                Some(n) => written += n,
                None => break server.held_bytes(),
            }
            assert!(written < data.len(), "a 4 KiB pipe took everything");
        }
    })
    .await
    .unwrap();
    assert!(pending > 0 && pending <= CIPHER_LEN, "held {pending}");
}

#[tokio::test]
async fn tls12_clients_get_the_same_stream() {
    let pki = pki_with(&[&rustls::version::TLS12]);
    let (mut server, client) = pair(&pki, 1500, b"a1 NOOP\r\n").await;
    assert_eq!(server.protocol_version(), Some(ProtocolVersion::TLSv1_2));
    assert_eq!(server.server_name(), Some("mail.example"));
    let mut first = [0u8; 9];
    timeout(DEADLINE, server.read_exact(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&first, b"a1 NOOP\r\n");
    let data = pattern(300_000);
    let (mut cr, mut cw) = tokio::io::split(client);
    let write = async {
        server.write_all(&data).await.unwrap();
        server.shutdown().await.unwrap();
        server
    };
    let read = async {
        let mut back = Vec::new();
        cr.read_to_end(&mut back).await.unwrap();
        cw.shutdown().await.unwrap();
        back
    };
    let (mut server, back) = timeout(DEADLINE, async { tokio::join!(write, read) })
        .await
        .unwrap();
    assert!(back == data);
    let mut rest = Vec::new();
    timeout(DEADLINE, server.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
    assert_eq!(server.held_bytes(), 0, "{server:?}");
}

/// A small deterministic generator: the same cases on every run, no new dependency.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % n
    }
}

#[tokio::test]
async fn any_pipe_size_and_any_read_and_write_sizes_give_the_same_bytes() {
    let pki = pki();
    let mut rng = Lcg(0x5eed);
    for case in 0..24 {
        // Not tinier: over a pipe of a few bytes a handshake deadlocks when both peers write
        // a flight at once and neither reads while it writes (tokio-rustls' own server and
        // client do so over a 7-byte pipe too); socket buffers are never that small.
        let pipe = [256, 512, 1500, 4096, 16_389, 70_000][rng.below(6)];
        let len = rng.below(200_000) + 1;
        let chunk = [1, 3, 100, 4096, 16_384, 70_000][rng.below(6)];
        let read = [1, 5, 1000, 16_384, 65_536][rng.below(5)];
        let (mut server, client) = pair(&pki, pipe, b"").await;
        let data = pattern(len);
        let (mut cr, mut cw) = tokio::io::split(client);
        let sent = data.clone();
        let up = async {
            for piece in sent.chunks(chunk) {
                cw.write_all(piece).await.unwrap();
            }
            cw.shutdown().await.unwrap();
        };
        // The server reads with `read`-byte buffers and echoes in `chunk`-byte writes.
        let echo = async {
            let mut buf = vec![0u8; read];
            let mut got = Vec::new();
            loop {
                let n = server.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            for piece in got.chunks(chunk) {
                server.write_all(piece).await.unwrap();
            }
            server.shutdown().await.unwrap();
            (server, got.len())
        };
        let down = async {
            let mut back = Vec::new();
            cr.read_to_end(&mut back).await.unwrap();
            back
        };
        let ((), (server, got), back) = timeout(DEADLINE, async { tokio::join!(up, echo, down) })
            .await
            .unwrap_or_else(|_| {
                panic!("case {case}: pipe {pipe}, len {len}, chunk {chunk}, read {read}: stuck")
            });
        assert_eq!(got, len, "case {case}");
        assert!(
            back == data,
            "case {case}: pipe {pipe}, len {len}, chunk {chunk}, read {read}"
        );
        assert_eq!(server.held_bytes(), 0, "case {case}: {server:?}");
    }
}
