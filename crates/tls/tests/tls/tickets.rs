//! `tls.ticket_key_file` through `Tls::load`: replicas with one file resume each other's
//! clients, a bad file stops the start with the file and line, `check` lists the keys.

use std::sync::Arc;
use std::time::Duration;

use postern_tls::Tls;
use rustls::client::Resumption;
use rustls::{ClientConfig, HandshakeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::support;

/// A line a copy-paste mangled: not 80 bytes of base64.
const BAD_LINE: &str = "c3OKq0o0m6Ns3HLe3X3Xq3j9nSh5vQ0Jm4kV5Qe8sJx1V0w2k1ZyZ3nB8rM0q1P4a5a9l6s8Q1p0Wl1mJ9Jv3r7Y2n4Z8b3b8c1d9e0f2g3h4i5j6k7l8m9n0==";

/// A client that keeps its tickets, like a mail client between its connections.
fn resuming_client() -> Arc<ClientConfig> {
    let mut config = (*support::client(&[])).clone();
    config.resumption = Resumption::in_memory_sessions(8);
    Arc::new(config)
}

/// One connection; the server sends a byte and closes so the client reads the ticket.
async fn connect(tls: &Tls, client: &Arc<ClientConfig>) -> HandshakeKind {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(tls.server_config(b"imap"));
    let server = tokio::spawn(async move {
        let mut s = acceptor.accept(server_io).await.unwrap();
        s.write_all(b"x").await.unwrap();
        s.shutdown().await.unwrap();
    });
    let connect = TlsConnector::from(Arc::clone(client))
        .connect(support::server_name(Some("a.test")), client_io);
    let mut stream = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .expect("handshake deadline")
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("read deadline")
        .unwrap();
    server.await.unwrap();
    stream.get_ref().1.handshake_kind().unwrap()
}

fn key_file(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    support::write(dir, "tickets.keys", text, 0o600)
}

fn one_key() -> String {
    // 80 bytes, as `openssl rand -base64 80` prints (one line of 108 characters).
    use base64::Engine as _;
    let bytes: Vec<u8> = (0u8..80).map(|i| i.wrapping_mul(31) ^ 0x5a).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn replicas_sharing_the_key_file_resume_each_others_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = support::write_pair(dir.path(), &support::pair(&["a.test"]));
    let mut config = support::config(&[(cert, Some(key))]);
    config.ticket_key_file = Some(key_file(dir.path(), &format!("{}\n", one_key())));
    let replica_a = Tls::load(&config, dir.path(), support::metrics().tls()).unwrap();
    let replica_b = Tls::load(&config, dir.path(), support::metrics().tls()).unwrap();
    let mua = resuming_client();
    assert_eq!(connect(&replica_a, &mua).await, HandshakeKind::Full);
    assert_eq!(connect(&replica_b, &mua).await, HandshakeKind::Resumed);

    // Without the file each process has its own keys: no resumption across them.
    config.ticket_key_file = None;
    let own_a = Tls::load(&config, dir.path(), support::metrics().tls()).unwrap();
    let own_b = Tls::load(&config, dir.path(), support::metrics().tls()).unwrap();
    let mua = resuming_client();
    assert_eq!(connect(&own_a, &mua).await, HandshakeKind::Full);
    assert_eq!(connect(&own_b, &mua).await, HandshakeKind::Full);
    assert_eq!(connect(&own_b, &mua).await, HandshakeKind::Resumed);
}

#[test]
fn a_bad_key_file_stops_the_start_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = support::write_pair(dir.path(), &support::pair(&["a.test"]));
    let mut config = support::config(&[(cert, Some(key))]);
    let path = key_file(dir.path(), &format!("# keys\n{}\n{BAD_LINE}\n", one_key()));
    config.ticket_key_file = Some(path.clone());
    let err = Tls::load(&config, dir.path(), support::metrics().tls())
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("{} line 3", path.display())), "{err}");
    assert!(err.contains("openssl rand -base64 80"), "{err}");
    let err = Tls::check(&config, dir.path()).unwrap_err().to_string();
    assert!(err.contains("line 3"), "{err}");

    std::fs::write(&path, format!("{}\n", one_key())).unwrap();
    let lines = Tls::check(&config, dir.path()).unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l == &format!("session ticket keys: 1 in {}", path.display())),
        "{lines:?}"
    );
}
