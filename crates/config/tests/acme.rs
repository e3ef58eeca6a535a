//! `[tls.acme]` and `[tls] ticket_key_file`: defaults, and one golden error line for each
//! mistake.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use postern_config::AcmeChallenge;

/// The base config, then `[tls.acme]` on line 9 with `body` from line 10.
fn acme(body: &str) -> String {
    with_table(&format!("[tls.acme]\n{body}"))
}

const DOMAINS: &str = "domains = [\"mail.example.org\"]";

#[test]
fn defaults() {
    let c = check(&acme(DOMAINS)).unwrap();
    let a = c.tls.acme.as_ref().unwrap();
    assert_eq!(a.domains, ["mail.example.org"]);
    assert!(a.contact.is_empty());
    assert_eq!(
        a.directory,
        "https://acme-v02.api.letsencrypt.org/directory"
    );
    assert_eq!(a.challenge, AcmeChallenge::TlsAlpn01);
    let listen: Vec<String> = a.challenge_listen.iter().map(ToString::to_string).collect();
    assert_eq!(listen, ["[::]:443", "0.0.0.0:443"]);
    assert_eq!(a.ca_roots, None);
    assert_eq!(a.renew_before, Duration::from_secs(30 * 86_400));
    assert_eq!(a.store, c.server.state_dir.join("acme"));
    let summary = c.summary();
    assert!(summary.contains("acme: mail.example.org from https://acme-v02.api.letsencrypt.org/directory (CA verified by the system roots)"), "{summary}");
    assert!(summary.contains("challenge tls-alpn-01, answered on [::]:443, 0.0.0.0:443; renewed 30days before expiry"), "{summary}");
    assert!(
        summary.contains("self-signed certificate is generated in"),
        "{summary}"
    );
    assert!(
        summary.contains("until the ACME certificate is issued"),
        "{summary}"
    );

    // No table: off.
    assert!(check(&with_table("")).unwrap().tls.acme.is_none());
}

#[test]
fn http01_listens_on_port_80_by_default() {
    let c = check(&acme(&format!("{DOMAINS}\nchallenge = \"http-01\""))).unwrap();
    let a = c.tls.acme.as_ref().unwrap();
    assert_eq!(a.challenge, AcmeChallenge::Http01);
    let listen: Vec<String> = a.challenge_listen.iter().map(ToString::to_string).collect();
    assert_eq!(listen, ["[::]:80", "0.0.0.0:80"]);
}

#[test]
fn every_key_set() {
    let dir = tempfile::tempdir().unwrap();
    let roots = dir.path().join("pebble.pem");
    std::fs::write(&roots, "").unwrap();
    let c = check(&acme(&format!(
        "domains = [\"Mail.Example.ORG.\", \"imap.example.org\"]\ncontact = [\"mailto:postmaster@example.org\"]\ndirectory = \"https://127.0.0.1:14000/dir\"\nchallenge = \"tls-alpn-01\"\nchallenge_listen = [\"127.0.0.1:5001\"]\nca_roots = \"{}\"\nrenew_before = \"2000d\"",
        roots.display()
    )))
    .unwrap();
    let a = c.tls.acme.as_ref().unwrap();
    assert_eq!(
        a.domains,
        ["mail.example.org", "imap.example.org"],
        "lower case, no trailing dot"
    );
    assert_eq!(a.contact, ["mailto:postmaster@example.org"]);
    assert_eq!(a.directory, "https://127.0.0.1:14000/dir");
    assert_eq!(a.challenge_listen, ["127.0.0.1:5001".parse().unwrap()]);
    assert_eq!(a.ca_roots.as_deref(), Some(roots.as_path()));
    assert_eq!(a.renew_before, Duration::from_secs(2000 * 86_400));
}

#[test]
fn mistakes() {
    let cases = [
        ("", "postern.toml:9: tls.acme.domains: required key `domains` is missing; add it"),
        ("domains = []", "postern.toml:10: tls.acme.domains: is empty; list at least one entry"),
        ("domains = [\"*.example.org\"]", "postern.toml:10: tls.acme.domains[0]: \"*.example.org\" a wildcard name needs the dns-01 challenge, which postern does not offer; list each name"),
        ("domains = [\"mail\"]", "postern.toml:10: tls.acme.domains[0]: \"mail\" is not a fully qualified name; write e.g. \"mail.example.org\""),
        ("domains = [\"192.0.2.1\"]", "postern.toml:10: tls.acme.domains[0]: \"192.0.2.1\" is an IP address; list DNS names"),
        ("domains = [\"mail.example.org\", \"MAIL.example.org\"]", "postern.toml:10: tls.acme.domains[1]: \"MAIL.example.org\" is listed twice; remove the duplicate"),
        ("domains = [\"mail.example.org\"]\ncontact = [\"postmaster@example.org\"]", "postern.toml:11: tls.acme.contact[0]: \"postmaster@example.org\" is not a contact the CA accepts; write \"mailto:postmaster@example.org\""),
        ("domains = [\"mail.example.org\"]\ndirectory = \"http://ca.example/dir\"", "postern.toml:11: tls.acme.directory: \"http://ca.example/dir\" is not an ACME directory URL (ACME needs https:// (RFC 8555)); e.g. \"https://acme-v02.api.letsencrypt.org/directory\""),
        ("domains = [\"mail.example.org\"]\nchallenge = \"dns-01\"", "postern.toml:11: tls.acme.challenge: \"dns-01\" is not allowed; use one of: \"tls-alpn-01\", \"http-01\""),
        ("domains = [\"mail.example.org\"]\nchallenge_listen = []", "postern.toml:11: tls.acme.challenge_listen: is empty; list at least one entry"),
        ("domains = [\"mail.example.org\"]\nchallenge_listen = [\"443\"]", "postern.toml:11: tls.acme.challenge_listen[0]: \"443\" is not a socket address (no port); use ip:port, e.g. \"0.0.0.0:993\" or \"[::]:993\""),
        ("domains = [\"mail.example.org\"]\nchallenge_listen = [\"0.0.0.0:443\", \"0.0.0.0:443\"]", "postern.toml:11: tls.acme.challenge_listen[1]: \"0.0.0.0:443\" is listed twice; remove the duplicate"),
        ("domains = [\"mail.example.org\"]\nca_roots = \"/nonexistent/roots.pem\"", "postern.toml:11: tls.acme.ca_roots: /nonexistent/roots.pem does not exist; point `ca_roots` at the PEM bundle that signed the ACME server's certificate, or remove it (or set \"\") to use the system roots"),
        ("domains = [\"mail.example.org\"]\nrenew_before = \"30\"", "postern.toml:11: tls.acme.renew_before: \"30\" is not a duration (time unit needed, for example 30sec or 30ms); expected a duration like \"10s\", \"500ms\" or \"30m\""),
        ("domains = [\"mail.example.org\"]\nrenew_before = \"20y\"", "postern.toml:11: tls.acme.renew_before: \"20y\" is out of range: use 1m to 10years"),
        ("domains = [\"mail.example.org\"]\nstaging = true", "postern.toml:11: tls.acme.staging: unknown key `staging`; valid keys here: domains, contact, directory, challenge, challenge_listen, ca_roots, renew_before"),
    ];
    for (body, expected) in cases {
        assert_eq!(one_error(&acme(body)), expected, "{body}");
    }
}

#[test]
fn challenge_listen_must_not_take_a_listener_or_admin_address() {
    // A listener on 443 (someone serving IMAPS there for firewalled clients) collides with
    // the default tls-alpn-01 address.
    let text = format!(
        "{}[tls.acme]\n{DOMAINS}\n",
        listener_with("").replace("127.0.0.1:993", "0.0.0.0:443")
    );
    assert_eq!(
        one_error(&text),
        "postern.toml:10: tls.acme.challenge_listen[1]: 0.0.0.0:443 is also bound by listener \"imaps\" (0.0.0.0:443); the CA's validation connections (port 443 by default) need an address of their own: change challenge_listen or that address"
    );
    assert_eq!(
        one_error(&acme(&format!("{DOMAINS}\nchallenge_listen = [\"127.0.0.1:993\"]"))),
        "postern.toml:11: tls.acme.challenge_listen[0]: 127.0.0.1:993 is also bound by listener \"imaps\" (127.0.0.1:993); the CA's validation connections (port 443 by default) need an address of their own: change challenge_listen or that address"
    );
    assert_eq!(
        one_error(&acme(&format!("{DOMAINS}\nchallenge = \"http-01\"\nchallenge_listen = [\"0.0.0.0:9190\"]"))),
        "postern.toml:12: tls.acme.challenge_listen[0]: 0.0.0.0:9190 is also bound by admin (127.0.0.1:9190); the CA's validation connections (port 80 by default) need an address of their own: change challenge_listen or that address"
    );
    // Another port or address is fine.
    check(&acme(&format!(
        "{DOMAINS}\nchallenge_listen = [\"127.0.0.2:993\"]"
    )))
    .unwrap();
}

#[test]
fn ticket_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("tickets");
    std::fs::write(&keys, "").unwrap();
    let c = check(&with_table(&format!(
        "[tls]\nticket_key_file = \"{}\"",
        keys.display()
    )))
    .unwrap();
    assert_eq!(c.tls.ticket_key_file.as_deref(), Some(keys.as_path()));
    assert!(c
        .summary()
        .contains(&format!("session tickets from {}", keys.display())));
    assert_eq!(
        check(&with_table("[tls]\nticket_key_file = \"\""))
            .unwrap()
            .tls
            .ticket_key_file,
        None
    );
    assert_eq!(check(&with_table("")).unwrap().tls.ticket_key_file, None);
    assert_eq!(
        one_error(&with_table("[tls]\nticket_key_file = \"/nonexistent/tickets\"")),
        "postern.toml:10: tls.ticket_key_file: /nonexistent/tickets does not exist; create it (one line per key, each `openssl rand -base64 80`) or remove `ticket_key_file` to let each process make its own keys"
    );
    assert_eq!(
        one_error(&with_table(&format!(
            "[tls]\nticket_key_file = \"{}\"",
            dir.path().display()
        ))),
        format!(
            "postern.toml:10: tls.ticket_key_file: {} is a directory; name the file in it",
            dir.path().display()
        )
    );
}
