//! `[limits]`, listener `allow`/`deny` and the PROXY protocol keys: defaults, and one
//! golden error line for each mistake.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use common::*;
use postern_config::ProxyVersion;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn limits_defaults_leave_room_for_carrier_grade_nat() {
    let c = check(&format!("{LISTENER}{BACKEND}")).unwrap();
    let l = &c.limits;
    assert_eq!(l.per_ip_connections, NonZeroU32::new(500));
    assert_eq!(l.per_ip_rate, NonZeroU32::new(50));
    assert_eq!(l.prelogin_timeout, Duration::from_secs(60));
    assert_eq!(l.max_prelogin, 20_000);
    assert_eq!(l.auth_failures, NonZeroU32::new(10));
    assert_eq!(l.auth_failure_window, Duration::from_secs(600));
    assert_eq!(l.exempt.to_string(), "127.0.0.0/8, ::1/128");
    assert!(l.exempt.contains(ip("127.0.0.2")));
    assert!(l.exempt.contains(ip("::1")));
    assert!(l.exempt.contains(ip("::ffff:127.0.0.1")));
    assert!(!l.exempt.contains(ip("192.0.2.1")));
}

#[test]
fn limits_zero_turns_a_limit_off_and_exempt_can_be_emptied() {
    let c = check(&with_table(
        "[limits]\nper_ip_connections = 0\nper_ip_rate = 0\nauth_failures = 0\nexempt = []\nprelogin_timeout = \"2m\"\nmax_prelogin = 5\nauth_failure_window = \"1h\"",
    ))
    .unwrap();
    let l = &c.limits;
    assert_eq!(
        (l.per_ip_connections, l.per_ip_rate, l.auth_failures),
        (None, None, None)
    );
    assert!(l.exempt.is_empty());
    assert_eq!(l.prelogin_timeout, Duration::from_secs(120));
    assert_eq!(l.max_prelogin, 5);
    assert_eq!(l.auth_failure_window, Duration::from_secs(3600));
    let summary = c.summary();
    assert!(
        summary.contains("no session limit, no rate limit, no failed-login brake; exempt: none"),
        "{summary}"
    );
}

#[test]
fn limits_bad_values() {
    let cases = [
        ("per_ip_connections = 2000000", "postern.toml:10: limits.per_ip_connections: 2000000 is out of range: use 0 (no limit) to 1000000"),
        ("per_ip_rate = -1", "postern.toml:10: limits.per_ip_rate: invalid value: integer `-1`, expected a whole number of 0 or more"),
        ("auth_failures = 2000000", "postern.toml:10: limits.auth_failures: 2000000 is out of range: use 0 (off) to 1000000"),
        ("max_prelogin = 0", "postern.toml:10: limits.max_prelogin: 0 is out of range: use 1 to 10000000"),
        ("prelogin_timeout = 60", "postern.toml:10: limits.prelogin_timeout: invalid type: integer `60`, expected a string; write a duration in quotes, e.g. \"10s\""),
        ("prelogin_timeout = \"5s\"", "postern.toml:10: limits.prelogin_timeout: 5s is shorter than tls.handshake_timeout (10s): clients would be closed before they can log in; make it longer"),
        ("auth_failure_window = \"0s\"", "postern.toml:10: limits.auth_failure_window: \"0s\" is out of range: use 1s to 7days"),
        ("exempt = \"127.0.0.0/8\"", "postern.toml:10: limits.exempt: invalid type: string \"127.0.0.0/8\", expected a sequence; write a list in brackets, e.g. [\"127.0.0.1:143\"]"),
        ("exempt = [\"10.0.0.1/8\"]", "postern.toml:10: limits.exempt[0]: \"10.0.0.1/8\" is not a network (has bits set after the /8: write 10.0.0.0/8 for the network, or 10.0.0.1/32 for the one address); use CIDR such as \"10.0.0.0/8\" or \"2001:db8::/32\", or one address"),
        ("per_ip = 5", "postern.toml:10: limits.per_ip: unknown key `per_ip`; valid keys here: per_ip_connections, per_ip_rate, prelogin_timeout, max_prelogin, auth_failures, auth_failure_window, exempt"),
    ];
    for (line, expected) in cases {
        assert_eq!(
            one_error(&with_table(&format!("[limits]\n{line}"))),
            expected,
            "{line}"
        );
    }
    // A shorter handshake deadline allows a shorter pre-login one.
    let c = check(&with_table(
        "[tls]\nhandshake_timeout = \"3s\"\n[limits]\nprelogin_timeout = \"5s\"",
    ))
    .unwrap();
    assert_eq!(c.limits.prelogin_timeout, Duration::from_secs(5));
}

#[test]
fn allow_and_deny() {
    let c = check(&listener_with(
        "allow = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\"]\ndeny = [\"10.9.0.0/16\"]",
    ))
    .unwrap();
    let l = &c.listeners[0];
    assert!(l.admits(ip("10.1.2.3")));
    assert!(
        l.admits(ip("::ffff:10.1.2.3")),
        "IPv4-mapped addresses match IPv4 networks"
    );
    assert!(l.admits(ip("2001:db8::1")));
    assert!(l.admits(ip("192.0.2.7")));
    assert!(!l.admits(ip("192.0.2.8")), "not in allow");
    assert!(!l.admits(ip("10.9.1.1")), "deny wins over allow");
    assert!(!l.admits(ip("::ffff:10.9.1.1")));
    let summary = c.summary();
    assert!(
        summary.contains("allow only 10.0.0.0/8, 2001:db8::/32, 192.0.2.7/32; deny 10.9.0.0/16"),
        "{summary}"
    );

    // Empty lists (the default) serve everyone.
    let c = check(&listener_with("")).unwrap();
    assert!(c.listeners[0].allow.is_empty() && c.listeners[0].deny.is_empty());
    assert!(c.listeners[0].admits(ip("203.0.113.9")));
    let c = check(&listener_with("deny = [\"203.0.113.0/24\"]")).unwrap();
    assert!(!c.listeners[0].admits(ip("203.0.113.9")));
    assert!(c.listeners[0].admits(ip("198.51.100.1")));
}

#[test]
fn bad_networks_are_named_by_index() {
    let hint = "use CIDR such as \"10.0.0.0/8\" or \"2001:db8::/32\", or one address";
    assert_eq!(
        errors(&listener_with("allow = [\"10.0.0.0/8\", \"10.0.0.0/40\", \"mail.example.org\"]\ndeny = [\"[::1]/128\"]")),
        [
            format!("postern.toml:6: listener[0].allow[1]: \"10.0.0.0/40\" is not a network (the prefix length \"40\" is not 0 to 32); {hint}"),
            format!("postern.toml:6: listener[0].allow[2]: \"mail.example.org\" is not a network (neither an IP address nor addr/prefix); {hint}"),
            format!("postern.toml:7: listener[0].deny[0]: \"[::1]/128\" is not a network (\"[::1]\" is not an IP address (write IPv6 without brackets)); {hint}"),
        ]
    );
}

#[test]
fn proxy_protocol() {
    let c = check(&listener_with(
        "proxy_protocol = \"v2\"\nproxy_from = [\"10.0.0.0/8\", \"::1\"]",
    ))
    .unwrap();
    let p = c.listeners[0].proxy.as_ref().unwrap();
    assert_eq!(p.version, ProxyVersion::V2);
    assert!(p.from.contains(ip("10.1.1.1")) && p.from.contains(ip("::1")));
    assert!(!p.from.contains(ip("192.0.2.1")));
    assert!(c
        .summary()
        .contains("PROXY v2 header required from 10.0.0.0/8, ::1/128"));
    for (value, version) in [("v1", ProxyVersion::V1), ("any", ProxyVersion::Any)] {
        let c = check(&listener_with(&format!(
            "proxy_protocol = \"{value}\"\nproxy_from = [\"127.0.0.1\"]"
        )))
        .unwrap();
        assert_eq!(c.listeners[0].proxy.as_ref().unwrap().version, version);
    }
    // The default and "none" take no header; an empty proxy_from is fine then.
    assert_eq!(check(&listener_with("")).unwrap().listeners[0].proxy, None);
    assert_eq!(
        check(&listener_with("proxy_protocol = \"none\"\nproxy_from = []"))
            .unwrap()
            .listeners[0]
            .proxy,
        None
    );
}

#[test]
fn proxy_protocol_mistakes() {
    let cases = [
        ("proxy_protocol = \"v2\"", "postern.toml:6: listener[0].proxy_protocol: a PROXY header is only taken from the peers in proxy_from, and it lists none; set proxy_from to the networks of your load balancers, e.g. [\"10.0.0.0/8\"]"),
        ("proxy_protocol = \"v2\"\nproxy_from = []", "postern.toml:7: listener[0].proxy_from: a PROXY header is only taken from the peers in proxy_from, and it lists none; set proxy_from to the networks of your load balancers, e.g. [\"10.0.0.0/8\"]"),
        ("proxy_from = [\"10.0.0.0/8\"]", "postern.toml:6: listener[0].proxy_from: has no effect while proxy_protocol is \"none\"; set proxy_protocol = \"v1\", \"v2\" or \"any\", or remove proxy_from"),
        ("proxy_protocol = \"any\"\nproxy_from = [\"0.0.0.0/0\"]", "postern.toml:7: listener[0].proxy_from: trusts every address: any client could claim to be any other and pass allow/deny and the limits; list only your load balancers' networks"),
        ("proxy_protocol = \"v3\"\nproxy_from = [\"10.0.0.0/8\"]", "postern.toml:7: listener[0].proxy_from: has no effect while proxy_protocol is \"none\"; set proxy_protocol = \"v1\", \"v2\" or \"any\", or remove proxy_from"),
        ("proxy_protocol = true", "postern.toml:6: listener[0].proxy_protocol: invalid type: boolean `true`, expected a string; write the value in quotes"),
    ];
    for (extra, expected) in cases {
        let errors = errors(&listener_with(extra));
        assert!(
            errors.contains(&expected.to_owned()),
            "{extra}: {errors:#?}"
        );
    }
    // An unknown version lists the allowed ones.
    assert_eq!(
        errors(&listener_with("proxy_protocol = \"v3\""))[0],
        "postern.toml:6: listener[0].proxy_protocol: \"v3\" is not allowed; use one of: \"none\", \"v1\", \"v2\", \"any\""
    );
}
