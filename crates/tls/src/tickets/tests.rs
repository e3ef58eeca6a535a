//! Rotation, file reload and resumption through rustls with the ticketer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, RootCertStore, ServerConfig, ServerConnection,
};

use super::*;
use crate::ticket_keys::tests::key_line;

fn name_of(line: &str) -> String {
    let path = Path::new("k");
    ticket_keys::parse(path, line).unwrap()[0].name_hex()
}

/// Replaces `path` the way operators and Kubernetes do: write a sibling, rename over.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn file_ticketer(dir: &tempfile::TempDir, text: &str) -> (PathBuf, Arc<Ticketer>) {
    let path = dir.path().join("tickets.keys");
    replace(&path, text);
    let t = Ticketer::with_timing(Some(&path), Duration::ZERO, LIFETIME).unwrap();
    (path, Arc::new(t))
}

#[test]
fn per_process_keys_rotate_and_keep_the_previous_key() {
    let t = Ticketer::with_timing(None, Duration::ZERO, Duration::ZERO).unwrap();
    let first = t.sealing_key_name();
    let old = t.encrypt(b"state one").unwrap();
    // Every call now rotates: the ticket sealed one rotation ago still opens...
    let newer = t.encrypt(b"state two").unwrap();
    assert_ne!(t.sealing_key_name(), first);
    assert_eq!(t.decrypt(&newer).as_deref(), Some(&b"state two"[..]));
    // ...but not after a second rotation: only one previous key is kept.
    t.maybe_refresh();
    t.maybe_refresh();
    assert_eq!(t.decrypt(&old), None);
}

#[test]
fn per_process_keys_do_not_rotate_before_their_time() {
    let t = Ticketer::with_timing(None, Duration::ZERO, LIFETIME).unwrap();
    let name = t.sealing_key_name();
    let ticket = t.encrypt(b"s").unwrap();
    assert_eq!(t.decrypt(&ticket).as_deref(), Some(&b"s"[..]));
    assert_eq!(t.sealing_key_name(), name);
    assert_eq!(t.lifetime(), 12 * 3600);
}

#[test]
fn file_first_line_seals_every_line_opens() {
    let dir = tempfile::tempdir().unwrap();
    let (path, t) = file_ticketer(&dir, &format!("{}\n", key_line(1)));
    let by_one = t.encrypt(b"old").unwrap();
    replace(&path, &format!("{}\n{}\n", key_line(2), key_line(1)));
    let by_two = t.encrypt(b"new").unwrap();
    assert_eq!(t.sealing_key_name(), name_of(&key_line(2)));
    assert_eq!(t.decrypt(&by_one).as_deref(), Some(&b"old"[..]));
    assert_eq!(t.decrypt(&by_two).as_deref(), Some(&b"new"[..]));
    // Key 1 dropped from the file: its tickets stop opening.
    replace(&path, &format!("{}\n", key_line(2)));
    assert_eq!(t.decrypt(&by_one), None);
    assert_eq!(t.decrypt(&by_two).as_deref(), Some(&b"new"[..]));
}

#[test]
fn a_broken_replacement_keeps_the_previous_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (path, t) = file_ticketer(&dir, &format!("{}\n", key_line(1)));
    let ticket = t.encrypt(b"s").unwrap();
    replace(&path, &format!("{}\ngarbage\n", key_line(2)));
    assert_eq!(t.decrypt(&ticket).as_deref(), Some(&b"s"[..]));
    assert_eq!(t.sealing_key_name(), name_of(&key_line(1)));
    std::fs::remove_file(&path).unwrap();
    assert!(t.encrypt(b"s").is_some(), "a vanished file keeps the keys");
    // Fixed: picked up at the next check.
    replace(&path, &format!("{}\n", key_line(3)));
    t.encrypt(b"s").unwrap();
    assert_eq!(t.sealing_key_name(), name_of(&key_line(3)));
}

#[test]
fn a_bad_file_at_start_is_an_error_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tickets.keys");
    replace(&path, &format!("{}\n\nshort\n", key_line(1)));
    let err = Ticketer::new(Some(&path)).unwrap_err().to_string();
    assert!(err.contains(&format!("{} line 3", path.display())), "{err}");
    let missing = dir.path().join("missing.keys");
    let err = Ticketer::new(Some(&missing)).unwrap_err().to_string();
    assert!(err.contains("missing.keys"), "{err}");
    assert_eq!(check(&path).map_err(|e| e.to_string()).unwrap_err(), {
        let e = Ticketer::new(Some(&path)).unwrap_err();
        e.to_string()
    });
}

// ---------------------------------------------------------------- through rustls

struct Server {
    config: Arc<ServerConfig>,
    roots: RootCertStore,
}

fn server(ticketer: Arc<Ticketer>) -> Server {
    let certified = rcgen::generate_simple_self_signed(vec!["mail.test".to_string()]).unwrap();
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    config.ticketer = ticketer;
    config.send_tls13_tickets = 1;
    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    Server {
        config: Arc::new(config),
        roots,
    }
}

/// One mail client: its own ticket cache, reused across its connections.
fn client(server: &Server) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(server.roots.clone())
        .with_no_client_auth();
    config.resumption = Resumption::in_memory_sessions(8);
    Arc::new(config)
}

/// A whole connection in memory, the server's ticket included; how it was established.
fn connect(server: &Server, client: &Arc<ClientConfig>) -> HandshakeKind {
    let name = ServerName::try_from("mail.test").unwrap();
    let mut c = ClientConnection::new(Arc::clone(client), name).unwrap();
    let mut s = ServerConnection::new(Arc::clone(&server.config)).unwrap();
    for _ in 0..16 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut moved = !buf.is_empty();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets().unwrap();
        }
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        moved |= !buf.is_empty();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
        }
        if !moved && !c.is_handshaking() && !s.is_handshaking() {
            return s.handshake_kind().unwrap();
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn clients_resume_with_per_process_keys() {
    let srv = server(Ticketer::new(None).unwrap());
    let mua = client(&srv);
    assert_eq!(connect(&srv, &mua), HandshakeKind::Full);
    assert_eq!(connect(&srv, &mua), HandshakeKind::Resumed);
    assert_eq!(connect(&srv, &client(&srv)), HandshakeKind::Full);
}

#[test]
fn replicas_with_the_same_file_resume_each_others_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (_, a) = file_ticketer(&dir, &format!("{}\n", key_line(1)));
    let (_, b) = file_ticketer(&dir, &format!("{}\n", key_line(1)));
    let (replica_a, replica_b) = (server(a), server(b));
    let mua = client(&replica_a);
    assert_eq!(connect(&replica_a, &mua), HandshakeKind::Full);
    assert_eq!(connect(&replica_b, &mua), HandshakeKind::Resumed);
}

#[test]
fn hot_reload_seals_with_the_new_first_key_and_opens_listed_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (path, t) = file_ticketer(&dir, &format!("{}\n", key_line(1)));
    let srv = server(t);
    let early = client(&srv);
    let early_too = client(&srv);
    assert_eq!(connect(&srv, &early), HandshakeKind::Full);
    assert_eq!(connect(&srv, &early_too), HandshakeKind::Full);

    // Rotation step 1: a new first key, the old one still listed.
    replace(&path, &format!("{}\n{}\n", key_line(2), key_line(1)));
    let late = client(&srv);
    assert_eq!(connect(&srv, &late), HandshakeKind::Full);
    assert_eq!(
        connect(&srv, &early),
        HandshakeKind::Resumed,
        "old ticket, key listed"
    );

    // Step 2: the old key dropped. Only tickets sealed after step 1 still open, which
    // proves the next handshake after the reload sealed with the new first key.
    replace(&path, &format!("{}\n", key_line(2)));
    assert_eq!(
        connect(&srv, &early_too),
        HandshakeKind::Full,
        "old key gone"
    );
    assert_eq!(connect(&srv, &late), HandshakeKind::Resumed);
    assert_eq!(
        connect(&srv, &early),
        HandshakeKind::Resumed,
        "re-ticketed at step 1"
    );
}
