//! ALPN (T10, docs/starttls.md): the listener's protocol or a fatal no_application_protocol alert; a
//! client offering none is served. Also checks the TLS version floor.

use postern_config::TlsVersion;
use postern_tls::Tls;
use rustls::AlertDescription;

use crate::support::{self, handshake, handshake_with, pair, write_pair};

fn tls(dir: &std::path::Path, min: TlsVersion) -> Tls {
    let (cert, key) = write_pair(dir, &pair(&["alpn.test"]));
    let mut config = support::config(&[(cert, Some(key))]);
    config.min_version = min;
    Tls::load(&config, dir, support::metrics().tls()).unwrap()
}

#[tokio::test]
async fn alpn_is_the_listener_protocol_or_a_fatal_alert() {
    let dir = tempfile::tempdir().unwrap();
    let tls = tls(dir.path(), TlsVersion::V1_2);
    let server = tls.server_config(b"imap");

    let err = handshake(server.clone(), Some("alpn.test"), &[b"h2"])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol)
    );

    let seen = handshake(server.clone(), Some("alpn.test"), &[b"imap"])
        .await
        .unwrap();
    assert_eq!(seen.alpn.as_deref(), Some(&b"imap"[..]));

    let seen = handshake(server.clone(), Some("alpn.test"), &[b"h2", b"imap"])
        .await
        .unwrap();
    assert_eq!(seen.alpn.as_deref(), Some(&b"imap"[..]));

    let seen = handshake(server, Some("alpn.test"), &[]).await.unwrap();
    assert_eq!(seen.alpn, None);

    let pop3 = tls.server_config(b"pop3");
    let err = handshake(pop3, None, &[b"imap"]).await.unwrap_err();
    assert_eq!(
        err,
        rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol)
    );
}

#[tokio::test]
async fn min_version_1_3_refuses_a_1_2_client() {
    let dir = tempfile::tempdir().unwrap();
    let only12 = support::client_with(&[], &[&rustls::version::TLS12]);
    let strict = tls(dir.path(), TlsVersion::V1_3).server_config(b"imap");
    assert!(handshake_with(strict.clone(), only12.clone(), None)
        .await
        .is_err());
    assert!(handshake_with(strict, support::client(&[]), None)
        .await
        .is_ok());
    let lenient = tls(dir.path(), TlsVersion::V1_2).server_config(b"imap");
    assert!(handshake_with(lenient, only12, None).await.is_ok());
}
