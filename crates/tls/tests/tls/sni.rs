//! SNI: exact, wildcard, case-insensitive, first certificate as the default.

use postern_tls::Tls;

use crate::support::{self, handshake, pair, write};

#[tokio::test]
async fn each_name_gets_its_certificate_and_no_sni_gets_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let first = pair(&["imap.one.test", "mail.one.test"]);
    let second = pair(&["imap.two.test"]);
    let wild = pair(&["*.wild.test"]);
    let mut certs = Vec::new();
    for (i, p) in [&first, &second, &wild].into_iter().enumerate() {
        let cert = write(dir.path(), &format!("{i}.crt"), &p.cert_pem, 0o644);
        let key = write(dir.path(), &format!("{i}.key"), &p.key_pem, 0o600);
        certs.push((cert, Some(key)));
    }
    let tls = Tls::load(
        &support::config(&certs),
        dir.path(),
        support::metrics().tls(),
    )
    .unwrap();
    let server = tls.server_config(b"imap");
    let cases: &[(Option<&str>, &support::Pair)] = &[
        (Some("imap.one.test"), &first),
        (Some("mail.one.test"), &first),
        (Some("imap.two.test"), &second),
        (Some("IMAP.Two.Test"), &second),
        (Some("a.wild.test"), &wild),
        (Some("B.WILD.test"), &wild),
        (Some("wild.test"), &first), // a wildcard does not cover its parent...
        (Some("x.y.wild.test"), &first), // ...nor two labels
        (Some("unknown.test"), &first),
        (None, &first),
    ];
    for (sni, want) in cases {
        let seen = handshake(server.clone(), *sni, &[]).await.unwrap();
        assert_eq!(&seen.leaf, &want.leaf, "sni {sni:?}");
    }
}

#[tokio::test]
async fn first_entry_wins_a_name_both_certificates_carry() {
    let dir = tempfile::tempdir().unwrap();
    let a = pair(&["shared.test", "a.test"]);
    let b = pair(&["shared.test", "b.test"]);
    let certs = vec![
        (
            write(dir.path(), "a.crt", &a.cert_pem, 0o644),
            Some(write(dir.path(), "a.key", &a.key_pem, 0o600)),
        ),
        (
            write(dir.path(), "b.crt", &b.cert_pem, 0o644),
            Some(write(dir.path(), "b.key", &b.key_pem, 0o600)),
        ),
    ];
    let tls = Tls::load(
        &support::config(&certs),
        dir.path(),
        support::metrics().tls(),
    )
    .unwrap();
    let server = tls.server_config(b"imap");
    assert_eq!(
        handshake(server.clone(), Some("shared.test"), &[])
            .await
            .unwrap()
            .leaf,
        a.leaf
    );
    assert_eq!(
        handshake(server, Some("b.test"), &[]).await.unwrap().leaf,
        b.leaf
    );
}
