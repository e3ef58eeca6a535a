//! The floor under postern's handshake figure: the server side of a TLS 1.3 handshake done
//! by rustls alone, client and server in one process over memory (no sockets, no kernel),
//! ECDSA P-256 certificate, X25519, aws-lc-rs (postern's provider). Only the time spent
//! inside the server's calls (`ServerConnection::new`, `read_tls`, `process_new_packets`,
//! `write_tls`) is counted, so the client's work does not blur it; one thread, so that
//! wall time is the server's CPU time.
//!
//! Four cases: `bare` (a plain `ServerConfig::with_single_cert`, rustls' own ticketer) and
//! `postern` (the `ServerConfig` postern's tls crate builds: SNI resolver over the
//! certificate store, its ticketer, ALPN), each with a full and a resumed handshake (the
//! client resumes with the ticket of its previous connection, as mail clients do). The
//! server sends one ticket after each handshake, like postern. compare.py's
//! `CPU / handshake+connect` divided by `bare/full` is postern's overhead above the library.
//!
//!     cargo bench -p postern-bench --bench handshake

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
// Measures elapsed wall time of the server's calls: std's Instant is the clock it owns.
#![allow(clippy::disallowed_types)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, RootCertStore, ServerConfig, ServerConnection,
};

const SNI: &str = "mail.bench.test";

struct Setup {
    bare: Arc<ServerConfig>,
    postern: Arc<ServerConfig>,
    roots: RootCertStore,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let made = rcgen::generate_simple_self_signed(vec![SNI.to_string()]).unwrap();
    let cert = CertificateDer::from(made.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut bare = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    bare.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().unwrap();
    bare.send_tls13_tickets = 1;

    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, made.cert.pem()).unwrap();
    std::fs::write(&key_path, made.signing_key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let toml = format!(
        r#"[server]
state_dir = "{state}"
[tls]
min_version = "1.3"
watch = false
[[tls.certificate]]
cert = "{cert}"
key = "{key}"
[[listener]]
name = "imaps"
protocol = "imap"
listen = ["127.0.0.1:1993"]
backend = "imap"
[[backend]]
name = "imap"
servers = ["127.0.0.1:1143"]
"#,
        state = dir.path().join("state").display(),
        cert = cert_path.display(),
        key = key_path.display(),
    );
    let config = postern_config::from_toml(&toml, postern_config::ConfigSource::Embedded).unwrap();
    let metrics = postern_metrics::Metrics::new("bench");
    let tls = postern_tls::Tls::load(&config.tls, dir.path(), metrics.tls()).unwrap();
    let postern = tls.server_config(b"imap");

    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    Setup {
        bare: Arc::new(bare),
        postern,
        roots,
        _dir: dir,
    }
}

/// TLS 1.3, X25519 only, like the issue's measurements; `resume` keeps one ticket.
fn client(roots: &RootCertStore, resume: bool) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .kx_groups
        .retain(|g| g.name() == rustls::NamedGroup::X25519);
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.resumption = if resume {
        Resumption::in_memory_sessions(4)
    } else {
        Resumption::disabled()
    };
    Arc::new(config)
}

/// One handshake (and the server's ticket reaching the client); returns the time spent in
/// the server's calls and how the handshake went.
fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> (Duration, HandshakeKind) {
    let name = ServerName::try_from(SNI).unwrap();
    let mut c = ClientConnection::new(Arc::clone(client), name).unwrap();
    let t = Instant::now();
    let mut s = ServerConnection::new(Arc::clone(server)).unwrap();
    let mut spent = t.elapsed();
    let mut buf = Vec::with_capacity(8192);
    for _ in 0..16 {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut moved = !buf.is_empty();
        let t = Instant::now();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets().unwrap();
        }
        let mut out = Vec::with_capacity(8192);
        while s.wants_write() {
            s.write_tls(&mut out).unwrap();
        }
        spent += t.elapsed();
        moved |= !out.is_empty();
        let mut rd = &out[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
        }
        if !moved && !c.is_handshaking() && !s.is_handshaking() {
            return (spent, s.handshake_kind().unwrap());
        }
    }
    panic!("handshake did not finish");
}

fn bench(c: &mut Criterion) {
    let setup = setup();
    let mut group = c.benchmark_group("server_handshake");
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(8));
    for (name, server) in [("bare", &setup.bare), ("postern", &setup.postern)] {
        let full = client(&setup.roots, false);
        group.bench_function(format!("{name}/full"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let (t, kind) = handshake(server, &full);
                        assert_eq!(kind, HandshakeKind::Full);
                        t
                    })
                    .sum()
            })
        });
        let resuming = client(&setup.roots, true);
        // The first connection gets the ticket the first resumed one uses; each resumed
        // handshake gets the next one.
        handshake(server, &resuming);
        group.bench_function(format!("{name}/resumed"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let (t, kind) = handshake(server, &resuming);
                        assert_eq!(kind, HandshakeKind::Resumed);
                        t
                    })
                    .sum()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
