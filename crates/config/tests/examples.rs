//! Every example configuration in `config/` (and the Kubernetes deployment's
//! `deploy/kubernetes/postern.toml`) passes validation, as does the embedded default.
//!
//! Rule for certificate files: examples meant to run as-is configure no
//! `[[tls.certificate]]` (postern then generates a self-signed one), so they must validate
//! with no error at all. The Kubernetes configurations name the files a Secret mounts at
//! /etc/postern/tls, which do not exist outside a pod: for those, and only those, the
//! test accepts "does not exist" errors on `tls.certificate[..]` keys, and nothing else.
//! Likewise `exec.toml` names UW imapd/ipop3d, which this machine does not have: for it,
//! and only it, "does not exist" errors on `backend[..].exec[0]` are accepted.

use std::path::{Path, PathBuf};

use postern_config::{
    embedded_default, load, BackendTarget, ConfigErrorKind, ConfigErrors, Protocol, TlsMode,
    DEFAULT_TOML,
};

/// Examples whose certificate files live in a Kubernetes Secret volume.
const NEEDS_MOUNTED_CERTS: &[&str] = &["kubernetes.toml", "postern.toml"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn only_missing_certificates(errors: &ConfigErrors) -> bool {
    errors.errors().iter().all(|e| {
        e.key.starts_with("tls.certificate[")
            && matches!(&e.kind, ConfigErrorKind::FileMissing { path, .. } if path.starts_with("/etc/postern/tls"))
    })
}

/// Examples whose exec programs are not installed here.
const NEEDS_EXEC_PROGRAMS: &[&str] = &["exec.toml"];

fn only_missing_programs(errors: &ConfigErrors) -> bool {
    errors.errors().iter().all(|e| {
        e.key.starts_with("backend[")
            && e.key.ends_with(".exec[0]")
            && matches!(&e.kind, ConfigErrorKind::ExecNotRunnable { problem, .. } if *problem == "does not exist")
    })
}

fn check(path: &Path) {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    match load(path) {
        Ok(config) => assert!(!config.summary().is_empty()),
        Err(errors)
            if NEEDS_MOUNTED_CERTS.contains(&name) && only_missing_certificates(&errors) => {}
        Err(errors) if NEEDS_EXEC_PROGRAMS.contains(&name) && only_missing_programs(&errors) => {}
        Err(errors) => panic!("{} does not validate:\n{errors}", path.display()),
    }
}

#[test]
fn every_example_in_config_dir_validates() {
    let dir = repo_root().join("config");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            check(&path);
            checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "exec.toml",
            "farm.toml",
            "kubernetes.toml",
            "minimal.toml",
            "postern.example.toml"
        ],
        "a new example? add it here so that a deleted one is noticed"
    );
}

#[test]
fn kubernetes_deployment_config_validates_if_present() {
    let path = repo_root().join("deploy/kubernetes/postern.toml");
    if path.exists() {
        check(&path);
    }
}

// That the example shows every key of the schema is checked by the crate's own
// `raw::coverage` tests, which read the key list from the schema.

#[test]
fn example_fronts_dovecot_on_high_loopback_ports() {
    let config = load(&repo_root().join("config/postern.example.toml")).unwrap();
    let starttls: Vec<_> = config
        .listeners
        .iter()
        .filter(|l| l.tls == TlsMode::Starttls)
        .collect();
    assert_eq!(starttls.len(), 4);
    for l in &starttls {
        let BackendTarget::Servers(servers) = &l.backend(&config).target else {
            panic!("servers")
        };
        for s in servers {
            // A STARTTLS listener on 143 cannot front a backend on 127.0.0.1:143.
            assert!(!l
                .listen
                .iter()
                .any(|a| s.to_string() == format!("127.0.0.1:{}", a.port())));
        }
    }
}

#[test]
fn embedded_default_is_the_spec_single_host_case() {
    let config = embedded_default().unwrap();
    let by_name = |n: &str| config.listeners.iter().find(|l| l.name == n).unwrap();
    let cases = [
        ("imaps", Protocol::Imap, 993, "127.0.0.1:143"),
        ("pop3s", Protocol::Pop3, 995, "127.0.0.1:110"),
        ("submissions", Protocol::Smtp, 465, "127.0.0.1:587"),
    ];
    for (name, protocol, port, server) in cases {
        let l = by_name(name);
        assert_eq!(l.protocol, protocol);
        assert_eq!(l.tls, TlsMode::Implicit);
        let listen: Vec<String> = l.listen.iter().map(ToString::to_string).collect();
        assert_eq!(listen, [format!("[::]:{port}"), format!("0.0.0.0:{port}")]);
        let b = l.backend(&config);
        assert_eq!(
            b.target,
            BackendTarget::Servers(vec![server
                .parse::<std::net::SocketAddr>()
                .map(|a| postern_config::ServerAddr::Tcp {
                    host: a.ip().to_string(),
                    port: a.port()
                })
                .unwrap()])
        );
        assert_eq!(b.protocol, protocol);
    }
    let sieve = by_name("sieve");
    assert_eq!(
        (sieve.protocol, sieve.tls),
        (Protocol::Sieve, TlsMode::Starttls)
    );
    let listen: Vec<String> = sieve.listen.iter().map(ToString::to_string).collect();
    assert_eq!(listen, ["[::]:4190", "0.0.0.0:4190"]);
    assert_eq!(
        sieve.backend(&config).target,
        BackendTarget::Servers(vec![postern_config::ServerAddr::Tcp {
            host: "127.0.0.1".into(),
            port: 14190
        }])
    );
    assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9190");
    assert!(
        config.tls.certificates.is_empty(),
        "the default uses a generated self-signed certificate"
    );
    assert!(
        DEFAULT_TOML.lines().filter(|l| l.contains('#')).count() > 20,
        "the default is commented"
    );
}
