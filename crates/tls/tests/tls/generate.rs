//! generate -> inspect -> serve, verified by a client that trusts the generated certificate.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use postern_tls::generate::{write_self_signed, KeyType};
use postern_tls::inspect::inspect;
use postern_tls::Tls;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{self, pair, write};

#[tokio::test]
async fn generate_inspect_serve_round_trip() {
    for key_type in [KeyType::EcdsaP256, KeyType::Rsa2048] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let names = vec!["Mail.Example.test".to_owned(), "127.0.0.1".to_owned()];
        let (cert, key) = write_self_signed(&names, &out, 30, key_type).unwrap();
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let report = inspect(&cert, Some(&key));
        assert!(report.usable, "{report}");
        assert_eq!(report.key_matches, Some(true));
        assert_eq!(
            report.sans,
            vec!["mail.example.test".to_owned(), "127.0.0.1".to_owned()]
        );
        let text = report.to_string();
        let key_word = match key_type {
            KeyType::EcdsaP256 => "ECDSA P-256",
            KeyType::Rsa2048 => "RSA 2048 bits",
        };
        for needle in [
            "CN=Mail.Example.test",
            "matches the certificate",
            "self-signed",
            "result       usable",
            key_word,
        ] {
            assert!(text.contains(needle), "{needle:?} missing in\n{text}");
        }
        assert!(
            text.contains("29 days left") || text.contains("30 days left"),
            "{text}"
        );

        let no_key = inspect(&cert, None);
        assert!(!no_key.usable);
        assert!(no_key.problems[0].contains("--key"), "{no_key}");

        // Serve it over loopback TCP and verify the host name with the certificate as the CA.
        let tls = Tls::load(
            &support::config(&[(cert.clone(), Some(key))]),
            dir.path(),
            support::metrics().tls(),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config(b"imap"));
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (tcp, _) = listener.accept().await.unwrap();
                if let Ok(mut s) = acceptor.accept(tcp).await {
                    s.write_all(b"* OK hi\r\n").await.unwrap();
                    s.shutdown().await.unwrap();
                }
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(&cert).unwrap())
            .unwrap();
        let client = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        );
        let connector = tokio_rustls::TlsConnector::from(client);
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut stream = connector
            .connect(ServerName::try_from("mail.example.test").unwrap(), tcp)
            .await
            .unwrap();
        let mut greeting = String::new();
        stream.read_to_string(&mut greeting).await.unwrap();
        assert_eq!(greeting, "* OK hi\r\n");

        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let err = connector
            .connect(ServerName::try_from("other.example.test").unwrap(), tcp)
            .await
            .unwrap_err();
        assert!(
            matches!(
                support::rustls_error(err),
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName
                        | rustls::CertificateError::NotValidForNameContext { .. }
                )
            ),
            "a wrong host name must fail verification"
        );
        tokio::time::timeout(std::time::Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap();
    }
}

#[test]
fn inspect_reports_problems_with_fixes() {
    let dir = tempfile::tempdir().unwrap();
    let a = pair(&["a.test"]);
    let b = pair(&["b.test"]);
    let cert = write(dir.path(), "a.crt", &a.cert_pem, 0o644);
    let wrong = write(dir.path(), "b.key", &b.key_pem, 0o644);
    let report = inspect(&cert, Some(&wrong));
    assert!(!report.usable);
    assert_eq!(report.key_matches, Some(false));
    let text = report.to_string();
    for needle in [
        "does NOT match",
        "does not match certificate",
        "mode 0644",
        "chmod 600",
        "NOT usable",
    ] {
        assert!(text.contains(needle), "{needle:?} missing in\n{text}");
    }
    let missing = inspect(&dir.path().join("nope.pem"), None);
    assert!(!missing.usable);
    assert!(missing.to_string().contains("does not exist"), "{missing}");
}

#[tokio::test]
async fn no_configured_certificate_generates_then_reuses_a_self_signed_pair() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let tls = Tls::load(&support::config(&[]), &state, support::metrics().tls()).unwrap();
    let cert = state.join("selfsigned/fullchain.pem");
    let key = state.join("selfsigned/privkey.pem");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let first = support::handshake(tls.server_config(b"imap"), Some("localhost"), &[])
        .await
        .unwrap();
    let report = inspect(&cert, Some(&key));
    assert!(
        report.usable && report.sans.contains(&"localhost".to_owned()),
        "{report}"
    );
    let lines = Tls::check(&support::config(&[]), &state).unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("self-signed") && l.contains("will not trust")),
        "{lines:?}"
    );

    // Nothing to watch: postern's own pair changes only at start.
    let task = tls
        .spawn_watcher(tokio_util::sync::CancellationToken::new())
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();

    let again = Tls::load(&support::config(&[]), &state, support::metrics().tls()).unwrap();
    let second = support::handshake(again.server_config(b"imap"), None, &[])
        .await
        .unwrap();
    assert_eq!(first.leaf, second.leaf, "the pair is reused across starts");
}

#[test]
fn generate_refuses_no_names_and_zero_days() {
    let dir = tempfile::tempdir().unwrap();
    let err = write_self_signed(&[], dir.path(), 30, KeyType::EcdsaP256).unwrap_err();
    assert!(err.to_string().contains("no name given"), "{err}");
    let err =
        write_self_signed(&["a.test".to_owned()], dir.path(), 0, KeyType::EcdsaP256).unwrap_err();
    assert!(
        err.to_string().contains("--days must be at least 1"),
        "{err}"
    );
    assert!(!dir.path().join("privkey.pem").exists());
}
