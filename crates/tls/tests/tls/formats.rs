//! Key types and formats, combined and split files, chains: all load and serve.

use std::path::Path;

use postern_tls::Tls;

use crate::load_errors::{openssl, s};
use crate::support::{self, chained, handshake, pair, write, write_pair, Pair};

/// Generates a key with openssl (`genpkey` args), optionally converts it to the traditional
/// format (PKCS#1 / SEC1), and issues a certificate for it with rcgen.
fn openssl_pair(
    dir: &Path,
    tag: &str,
    genpkey: &[&str],
    traditional: bool,
) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>, String) {
    let pkcs8 = dir.join(format!("{tag}.p8.pem"));
    let mut args = vec!["genpkey"];
    args.extend_from_slice(genpkey);
    args.extend_from_slice(&["-out", s(&pkcs8)]);
    openssl(&args);
    let key_pem = std::fs::read_to_string(&pkcs8).unwrap();
    let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let cert = rcgen::CertificateParams::new(vec![format!("{tag}.test")])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let key_path = if traditional {
        let trad = dir.join(format!("{tag}.trad.pem"));
        openssl(&["pkey", "-in", s(&pkcs8), "-traditional", "-out", s(&trad)]);
        trad
    } else {
        pkcs8
    };
    std::fs::set_permissions(
        &key_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let cert_path = write(dir, &format!("{tag}.crt"), cert.pem(), 0o644);
    let label = std::fs::read_to_string(&key_path)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned();
    (cert_path, key_path, cert.der().to_vec(), label)
}

#[tokio::test]
async fn every_key_type_and_format_loads_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str], bool, &str)] = &[
        (
            "rsa-pkcs8",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            false,
            "BEGIN PRIVATE KEY",
        ),
        (
            "rsa-pkcs1",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            true,
            "BEGIN RSA PRIVATE KEY",
        ),
        (
            "ec-pkcs8",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            false,
            "BEGIN PRIVATE KEY",
        ),
        (
            "ec-sec1",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            true,
            "BEGIN EC PRIVATE KEY",
        ),
        (
            "p384-sec1",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
            true,
            "BEGIN EC PRIVATE KEY",
        ),
        (
            "ed25519",
            &["-algorithm", "ED25519"],
            false,
            "BEGIN PRIVATE KEY",
        ),
    ];
    for (tag, genpkey, traditional, label) in cases {
        let (cert, key, leaf, got_label) = openssl_pair(dir.path(), tag, genpkey, *traditional);
        assert!(
            got_label.contains(label),
            "{tag}: key file starts {got_label:?}"
        );
        let tls = Tls::load(
            &support::config(&[(cert, Some(key))]),
            dir.path(),
            support::metrics().tls(),
        )
        .unwrap_or_else(|e| panic!("{tag}: {e}"));
        let seen = handshake(
            tls.server_config(b"imap"),
            Some(&format!("{tag}.test")),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{tag}: handshake {e}"));
        assert_eq!(seen.leaf, leaf, "{tag}");
    }
}

#[tokio::test]
async fn combined_file_either_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = pair(&["combined.test"]);
    for (name, contents) in [
        ("cert-then-key.pem", format!("{}{}", p.cert_pem, p.key_pem)),
        ("key-then-cert.pem", format!("{}{}", p.key_pem, p.cert_pem)),
    ] {
        let path = write(dir.path(), name, contents, 0o600);
        let tls = Tls::load(
            &support::config(&[(path, None)]),
            dir.path(),
            support::metrics().tls(),
        )
        .unwrap();
        let seen = handshake(tls.server_config(b"imap"), None, &[])
            .await
            .unwrap();
        assert_eq!(seen.leaf, p.leaf, "{name}");
    }
}

#[tokio::test]
async fn chain_with_intermediate_is_served_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (p, intermediate) = chained(&["chain.test"]);
    let (cert, key) = write_pair(dir.path(), &p);
    let tls = Tls::load(
        &support::config(&[(cert, Some(key))]),
        dir.path(),
        support::metrics().tls(),
    )
    .unwrap();
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config(b"imap"));
    let server = tokio::spawn(async move { acceptor.accept(server_io).await.map(drop) });
    let stream = tokio_rustls::TlsConnector::from(support::client(&[]))
        .connect(support::server_name(Some("chain.test")), client_io)
        .await
        .unwrap();
    let chain = stream.get_ref().1.peer_certificates().unwrap().to_vec();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0].as_ref(), &p.leaf[..]);
    assert_eq!(chain[1].as_ref(), &intermediate[..]);
    server.await.unwrap().unwrap();
}

#[test]
fn check_summarises_each_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), &pair(&["Mail.Example.COM", "imap.example.com"]));
    let lines = Tls::check(&support::config(&[(cert.clone(), Some(key))]), dir.path()).unwrap();
    assert!(lines[0].contains(&cert.display().to_string()), "{lines:?}");
    assert!(
        lines[0].contains("mail.example.com, imap.example.com"),
        "SANs are stored lower-case: {lines:?}"
    );
    let empty = tempfile::tempdir().unwrap();
    let lines = Tls::check(&support::config(&[]), empty.path()).unwrap();
    assert_eq!(
        lines,
        vec![format!(
            "self-signed certificate will be generated in {}",
            empty.path().join("selfsigned").display()
        )]
    );
    assert!(
        !empty.path().join("selfsigned").exists(),
        "check never generates"
    );
}

#[test]
fn a_chain_out_of_order_loads_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = chained(&["chain.test"]);
    let stranger = pair(&["other.test"]);
    let bad = Pair {
        cert_pem: format!(
            "{}{}",
            p.cert_pem
                .split_inclusive("-----END CERTIFICATE-----\n")
                .next()
                .unwrap(),
            stranger.cert_pem
        ),
        ..p
    };
    let (cert, key) = write_pair(dir.path(), &bad);
    let lines = Tls::check(&support::config(&[(cert.clone(), Some(key))]), dir.path()).unwrap();
    assert!(
        lines.iter().any(|l| l.starts_with("warning:")
            && l.contains("not issued by certificate #2")
            && l.contains(&cert.display().to_string())),
        "{lines:?}"
    );
}
