//! Every load error names the file and says what to do.

use std::path::{Path, PathBuf};
use std::process::Command;

use postern_tls::{Tls, TlsError};

use crate::support::{self, pair, write, write_pair};

fn check_err(certs: &[(PathBuf, Option<PathBuf>)], state: &Path) -> (TlsError, String) {
    let err = Tls::check(&support::config(certs), state).expect_err("must fail");
    let load_err = Tls::load(&support::config(certs), state, support::metrics().tls())
        .expect_err("load must fail too");
    assert_eq!(err.to_string(), load_err.to_string());
    let msg = err.to_string();
    (err, msg)
}

fn assert_names(msg: &str, path: &Path, fixes: &[&str]) {
    assert!(
        msg.contains(&path.display().to_string()),
        "{msg:?} does not name {}",
        path.display()
    );
    for fix in fixes {
        assert!(msg.contains(fix), "{msg:?} lacks {fix:?}");
    }
}

#[test]
fn missing_cert_file_is_an_error_never_a_self_signed_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cert = dir.path().join("nope/fullchain.pem");
    let (err, msg) = check_err(&[(cert.clone(), None)], &state);
    assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
    assert_names(
        &msg,
        &cert,
        &[
            "does not exist",
            "fix the path",
            "never replaced by a self-signed",
        ],
    );
    assert!(
        !state.exists(),
        "no self-signed certificate may be generated"
    );
}

#[test]
fn missing_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = write_pair(dir.path(), &pair(&["a.test"]));
    let key = dir.path().join("missing.key");
    let (_, msg) = check_err(&[(cert, Some(key.clone()))], dir.path());
    assert_names(&msg, &key, &["private key file", "does not exist"]);
}

#[test]
fn empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "cert.pem", "\n", 0o644);
    let (err, msg) = check_err(&[(cert.clone(), None)], dir.path());
    assert!(matches!(err, TlsError::Empty { .. }), "{err:?}");
    assert_names(&msg, &cert, &["is empty", "copy it again"]);
}

#[test]
fn truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = pair(&["a.test"]);
    let cut = &p.cert_pem[..p.cert_pem.len() / 2];
    let cert = write(dir.path(), "cert.pem", cut, 0o644);
    let key = write(dir.path(), "key.pem", &p.key_pem, 0o600);
    let (err, msg) = check_err(&[(cert.clone(), Some(key))], dir.path());
    assert!(matches!(err, TlsError::Pem { .. }), "{err:?}");
    assert_names(
        &msg,
        &cert,
        &[
            "not valid PEM",
            "END CERTIFICATE",
            "truncated",
            "copy it again",
        ],
    );
}

#[test]
fn truncated_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = pair(&["a.test"]);
    let cert = write(dir.path(), "cert.pem", &p.cert_pem, 0o644);
    let key = write(
        dir.path(),
        "key.pem",
        &p.key_pem[..p.key_pem.len() - 40],
        0o600,
    );
    let (_, msg) = check_err(&[(cert, Some(key.clone()))], dir.path());
    assert_names(&msg, &key, &["not valid PEM", "truncated"]);
}

#[test]
fn garbage_and_key_only_files_hold_no_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let p = pair(&["a.test"]);
    for (name, contents) in [
        (
            "garbage.pem",
            "hello, this is not a certificate\n".to_owned(),
        ),
        ("keyonly.pem", p.key_pem.clone()),
    ] {
        let cert = write(dir.path(), name, contents, 0o600);
        let (err, msg) = check_err(&[(cert.clone(), None)], dir.path());
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
        assert_names(
            &msg,
            &cert,
            &["no certificate", "BEGIN CERTIFICATE", "fullchain"],
        );
    }
}

#[test]
fn der_instead_of_pem() {
    let dir = tempfile::tempdir().unwrap();
    let p = pair(&["a.test"]);
    let cert = write(dir.path(), "cert.der", &p.leaf, 0o644);
    let (_, msg) = check_err(&[(cert.clone(), None)], dir.path());
    assert_names(&msg, &cert, &["binary DER", "openssl x509 -inform der"]);
    assert!(!msg.contains("truncated"), "{msg}");
}

#[test]
fn no_key_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "cert.pem", pair(&["a.test"]).cert_pem, 0o644);
    let (err, msg) = check_err(&[(cert.clone(), None)], dir.path());
    assert!(matches!(err, TlsError::NoKey { .. }), "{err:?}");
    assert_names(&msg, &cert, &["no private key", "key = ", "append the key"]);
}

#[test]
fn encrypted_pkcs8_key() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), &pair(&["a.test"]));
    let enc = dir.path().join("enc.pem");
    openssl(&[
        "pkcs8",
        "-topk8",
        "-in",
        s(&key),
        "-out",
        s(&enc),
        "-passout",
        "pass:secret",
        "-v2",
        "aes256",
    ]);
    assert!(std::fs::read_to_string(&enc)
        .unwrap()
        .contains("BEGIN ENCRYPTED PRIVATE KEY"));
    let (err, msg) = check_err(&[(cert, Some(enc.clone()))], dir.path());
    assert!(matches!(err, TlsError::EncryptedKey { .. }), "{err:?}");
    assert_names(
        &msg,
        &enc,
        &[
            "encrypted",
            "without anyone at a prompt",
            &format!("openssl pkey -in {0} -out {0}.unencrypted", enc.display()),
        ],
    );
}

#[test]
fn encrypted_pkcs1_key() {
    let dir = tempfile::tempdir().unwrap();
    let enc = dir.path().join("rsa-enc.pem");
    openssl(&[
        "genrsa",
        "-aes128",
        "-passout",
        "pass:secret",
        "-traditional",
        "-out",
        s(&enc),
        "2048",
    ]);
    assert!(std::fs::read_to_string(&enc)
        .unwrap()
        .contains("Proc-Type: 4,ENCRYPTED"));
    let cert = write(dir.path(), "cert.pem", pair(&["a.test"]).cert_pem, 0o644);
    let (_, msg) = check_err(&[(cert, Some(enc.clone()))], dir.path());
    assert_names(
        &msg,
        &enc,
        &[
            "encrypted",
            &format!("openssl rsa -in {0} -out {0}.unencrypted", enc.display()),
        ],
    );
}

#[test]
fn key_from_another_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "cert.pem", pair(&["a.test"]).cert_pem, 0o644);
    let key = write(dir.path(), "key.pem", pair(&["a.test"]).key_pem, 0o600);
    let (err, msg) = check_err(&[(cert.clone(), Some(key.clone()))], dir.path());
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    assert_names(&msg, &cert, &["does not match"]);
    assert_names(&msg, &key, &["privkey.pem next to fullchain.pem"]);
}

#[test]
fn expired_and_not_yet_valid_certificates_are_served_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let now = time::OffsetDateTime::now_utc();
    for (name, from, until, expect) in [
        (
            "expired",
            now - time::Duration::days(30),
            now - time::Duration::days(1),
            "expired on",
        ),
        (
            "future",
            now + time::Duration::days(2),
            now + time::Duration::days(90),
            "not valid before",
        ),
        (
            "soon",
            now - time::Duration::days(80),
            now + time::Duration::days(5),
            "expires on",
        ),
    ] {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
        params.not_before = from;
        params.not_after = until;
        let cert = params.self_signed(&key).unwrap();
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        let cert_path = write(&sub, "cert.pem", cert.pem(), 0o644);
        let key_path = write(&sub, "key.pem", key.serialize_pem(), 0o600);
        let certs = [(cert_path.clone(), Some(key_path))];
        let lines = Tls::check(&support::config(&certs), dir.path()).unwrap();
        let warning = lines
            .iter()
            .find(|l| l.starts_with("warning:") && l.contains(expect));
        let warning =
            warning.unwrap_or_else(|| panic!("{name}: no {expect:?} warning in {lines:?}"));
        assert!(
            warning.contains(&cert_path.display().to_string()),
            "{warning}"
        );
        assert!(
            Tls::load(
                &support::config(&certs),
                dir.path(),
                support::metrics().tls()
            )
            .is_ok(),
            "{name} must still load"
        );
    }
}

#[test]
fn half_a_self_signed_pair_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let ss = dir.path().join("selfsigned");
    std::fs::create_dir(&ss).unwrap();
    write(&ss, "fullchain.pem", pair(&["a.test"]).cert_pem, 0o644);
    let err = Tls::check(&support::config(&[]), dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&ss.display().to_string()) && msg.contains("delete"),
        "{msg}"
    );
}

pub(crate) fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
