//! A backend's TLS to its servers, DNS re-resolution, route by user and weights: defaults,
//! and one golden error line for each mistake.

#![allow(clippy::unwrap_used)]

mod common;

use std::num::NonZeroU32;
use std::time::Duration;

use common::*;
use postern_config::{Route, ServerAddr, TlsMode};

/// Lines 1-5 the listener, 6-8 this backend, `extra` from line 9.
fn servers_backend(servers: &str, extra: &str) -> String {
    format!("{LISTENER}[[backend]]\nname = \"imap\"\nservers = {servers}\n{extra}\n")
}

/// Lines 1-5 the listener, 6-8 an exec backend, `extra` from line 9.
fn exec_backend(extra: &str) -> String {
    format!("{LISTENER}[[backend]]\nname = \"imap\"\nexec = [\"/bin/cat\"]\n{extra}\n")
}

#[test]
fn defaults() {
    let c = check(&backend_with("")).unwrap();
    let b = &c.backends[0];
    assert_eq!(b.tls, None);
    assert_eq!(b.resolve_interval, Duration::from_secs(30));
    assert_eq!(b.route, Route::Connection);
}

#[test]
fn backend_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "").unwrap();
    let c = check(&servers_backend(
        "[\"10.0.0.5:993\", \"imap.internal:993\"]",
        &format!(
            "tls = \"implicit\"\ntls_ca = \"{}\"\ntls_name = \"imap.example.org\"",
            ca.display()
        ),
    ))
    .unwrap();
    let tls = c.backends[0].tls.as_ref().unwrap();
    assert_eq!(tls.mode, TlsMode::Implicit);
    assert_eq!(tls.ca.as_deref(), Some(ca.as_path()));
    assert_eq!(tls.name.as_deref(), Some("imap.example.org"));
    let summary = c.summary();
    assert!(
        summary.contains("TLS implicit to the servers, verified as \"imap.example.org\" against"),
        "{summary}"
    );
    assert!(
        summary.contains("host names re-resolved every 30s"),
        "{summary}"
    );

    // "" means the default: system roots, each server's own host.
    let c = check(&backend_with(
        "tls = \"starttls\"\ntls_ca = \"\"\ntls_name = \"\"",
    ))
    .unwrap();
    let tls = c.backends[0].tls.as_ref().unwrap();
    assert_eq!(
        (tls.mode, tls.ca.as_ref(), tls.name.as_ref()),
        (TlsMode::Starttls, None, None)
    );
    assert!(c.summary().contains(
        "TLS starttls to the servers, verified as each server's host against the system roots"
    ));

    // Plaintext to a remote server is pointed out; to loopback it is not.
    let remote = check(&servers_backend("[\"10.0.0.5:143\"]", ""))
        .unwrap()
        .summary();
    assert!(
        remote.contains("logins cross the network in clear"),
        "{remote}"
    );
    assert!(!check(&backend_with(""))
        .unwrap()
        .summary()
        .contains("in clear"));
}

#[test]
fn backend_tls_mistakes() {
    let cases = [
        (backend_with("tls = \"yes\""), "postern.toml:9: backend[0].tls: \"yes\" is not allowed; use one of: \"none\", \"implicit\", \"starttls\""),
        (backend_with("tls_ca = \"/etc/ssl/ca.pem\""), "postern.toml:9: backend[0].tls_ca: applies only with tls = \"implicit\" or \"starttls\"; remove it"),
        (backend_with("tls = \"none\"\ntls_name = \"imap.example.org\""), "postern.toml:10: backend[0].tls_name: applies only with tls = \"implicit\" or \"starttls\"; remove it"),
        (backend_with("tls = \"implicit\"\ntls_ca = \"/nonexistent/ca.pem\""), "postern.toml:10: backend[0].tls_ca: /nonexistent/ca.pem does not exist; point `tls_ca` at the PEM bundle of the CA that signed the servers' certificates, or remove it (or set \"\") to use the system roots"),
        (backend_with("tls = \"implicit\"\ntls_name = \"bad name\""), "postern.toml:10: backend[0].tls_name: \"bad name\" is not a name to verify (\"bad name\" is neither an IP address nor a host name); use the DNS name (or IP address) in the servers' certificates"),
        (servers_backend("[\"unix:/run/dovecot/imap\"]", "tls = \"starttls\""), "postern.toml:9: backend[0].tls: a unix: server has no host name to verify; set tls_name to the name in its certificate"),
        (exec_backend("tls = \"starttls\""), "postern.toml:9: backend[0].tls: applies to `servers` backends only: an exec backend is a local pipe; remove tls"),
    ];
    for (text, expected) in cases {
        assert_eq!(one_error(&text), expected);
    }
    // SPEC's example writes the defaults out: "" and {} are "not set".
    check(&backend_with("tls = \"none\"\ntls_ca = \"\"\ntls_name = \"\"\nroute = \"connection\"\nuser_map = \"\"\nweights = {}")).unwrap();
    // A unix server with a name to verify is fine; an IP literal is a valid name.
    check(&servers_backend(
        "[\"unix:/run/dovecot/imap\"]",
        "tls = \"starttls\"\ntls_name = \"imap.example.org\"",
    ))
    .unwrap();
    check(&backend_with(
        "tls = \"implicit\"\ntls_name = \"2001:db8::5\"",
    ))
    .unwrap();
}

#[test]
fn resolve_interval() {
    let c = check(&backend_with("resolve_interval = \"5m\"")).unwrap();
    assert_eq!(c.backends[0].resolve_interval, Duration::from_secs(300));
    assert_eq!(
        one_error(&backend_with("resolve_interval = \"100ms\"")),
        "postern.toml:9: backend[0].resolve_interval: \"100ms\" is out of range: use 1s to 1day"
    );
    assert_eq!(
        one_error(&exec_backend("resolve_interval = \"10s\"")),
        "postern.toml:9: backend[0].resolve_interval: applies to `servers` backends only (an exec backend resolves nothing); remove it"
    );
}

#[test]
fn route_by_user_with_map_and_weights() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("users");
    std::fs::write(&map, "alice  10.0.0.5:143\n").unwrap();
    let c = check(&servers_backend(
        "[\"10.0.0.5:143\", \"10.0.0.6:143\", \"[2001:db8::7]:143\"]",
        &format!(
            "route = \"user\"\nuser_map = \"{}\"\nweights = {{ \"10.0.0.5:143\" = 2, \"[2001:db8:0::7]:143\" = 3 }}",
            map.display()
        ),
    ))
    .unwrap();
    let Route::User(route) = &c.backends[0].route else {
        panic!("route")
    };
    assert_eq!(route.user_map.as_deref(), Some(map.as_path()));
    let tcp = |h: &str| ServerAddr::Tcp {
        host: h.to_owned(),
        port: 143,
    };
    assert_eq!(route.weight(&tcp("10.0.0.5")), NonZeroU32::new(2).unwrap());
    assert_eq!(route.weight(&tcp("10.0.0.6")), NonZeroU32::MIN);
    assert_eq!(
        route.weight(&tcp("2001:db8::7")),
        NonZeroU32::new(3).unwrap(),
        "keyed by the server as listed"
    );
    let summary = c.summary();
    assert!(summary.contains("(by user, forward none"), "{summary}");
    assert!(
        summary.contains("weights 10.0.0.5:143 = 2, [2001:db8::7]:143 = 3 (others 1)"),
        "{summary}"
    );

    let c = check(&backend_with("route = \"user\"\nuser_map = \"\"")).unwrap();
    assert_eq!(
        c.backends[0].route,
        Route::User(postern_config::UserRoute {
            user_map: None,
            weights: Vec::new()
        })
    );
}

#[test]
fn route_mistakes() {
    let two = "[\"10.0.0.5:143\", \"10.0.0.6:143\"]";
    let cases = [
        (backend_with("route = \"login\""), "postern.toml:9: backend[0].route: \"login\" is not allowed; use one of: \"connection\", \"user\""),
        (exec_backend("route = \"user\""), "postern.toml:9: backend[0].route: route = \"user\" picks one of several servers; an exec backend has none. Use servers, or route = \"connection\""),
        (backend_with("user_map = \"/etc/postern/users\""), "postern.toml:9: backend[0].user_map: applies only with route = \"user\"; remove it"),
        (backend_with("weights = { \"127.0.0.1:143\" = 2 }"), "postern.toml:9: backend[0].weights: applies only with route = \"user\"; remove it"),
        (backend_with("route = \"user\"\nbalance = \"round-robin\""), "postern.toml:10: backend[0].balance: does not apply with route = \"user\", which places each user on a server by their login name; remove it"),
        (backend_with("route = \"user\"\nuser_map = \"/nonexistent/users\""), "postern.toml:10: backend[0].user_map: /nonexistent/users does not exist; create it (lines of `user-or-@domain  host:port`) or remove `user_map` to place every user by hashing"),
        (servers_backend(two, "route = \"user\"\nweights = { \"10.0.0.7:143\" = 2 }"), "postern.toml:10: backend[0].weights.\"10.0.0.7:143\": \"10.0.0.7:143\" is not one of this backend's servers (\"10.0.0.5:143\", \"10.0.0.6:143\"); weigh a server listed in `servers`, written the same way"),
        (servers_backend(two, "route = \"user\"\nweights = { \"10.0.0.5\" = 2 }"), "postern.toml:10: backend[0].weights.\"10.0.0.5\": \"10.0.0.5\" is not one of this backend's servers (\"10.0.0.5:143\", \"10.0.0.6:143\"); weigh a server listed in `servers`, written the same way"),
        (servers_backend(two, "route = \"user\"\nweights = { \"10.0.0.5:143\" = 0 }"), "postern.toml:10: backend[0].weights.\"10.0.0.5:143\": 0 is out of range: use 1 to 1000"),
        (servers_backend(two, "route = \"user\"\nweights = { \"10.0.0.5:143\" = -1 }"), "postern.toml:10: backend[0].weights.10.0.0.5:143: invalid value: integer `-1`, expected a whole number of 0 or more"),
        (servers_backend(two, "route = \"user\"\nweights = [2, 1]"), "postern.toml:10: backend[0].weights: invalid type: sequence, expected a map"),
    ];
    for (text, expected) in cases {
        assert_eq!(one_error(&text), expected);
    }
}
