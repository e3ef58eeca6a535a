//! Golden messages for the operator mistakes validation catches. Each asserts the whole
//! line: file, line number, dotted key, what is wrong and what to do.

use std::time::Duration;

use postern_config::load;

mod common;

use common::*;

#[test]
fn base_config_is_valid_with_defaults() {
    let c = check(&format!("{LISTENER}{BACKEND}")).unwrap();
    assert!(c.server.workers.get() >= 1);
    assert_eq!(c.server.max_connections, 100_000);
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.server.drain_spread, Duration::from_secs(5));
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9190");
    assert_eq!(c.log.format, postern_config::LogFormat::Text);
    assert_eq!(c.log.level, "info");
    assert_eq!(c.tls.min_version, postern_config::TlsVersion::V1_2);
    assert_eq!(c.tls.handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.tls.key_permissions, postern_config::KeyPermissions::Warn);
    assert!(c.tls.watch);
    let l = &c.listeners[0];
    assert_eq!(l.tls, postern_config::TlsMode::Implicit);
    assert_eq!(l.idle_timeout, Duration::from_secs(30 * 60));
    assert_eq!(l.plaintext_timeout, Duration::from_secs(60));
    assert_eq!(l.max_line_length, 4096);
    assert_eq!(l.max_plaintext_commands, 20);
    let b = l.backend(&c);
    assert_eq!(b.name, "imap");
    assert_eq!(b.protocol, postern_config::Protocol::Imap);
    assert_eq!(b.balance, postern_config::Balance::LeastConnections);
    assert_eq!(b.forward_client, postern_config::ForwardClient::None);
    assert_eq!(b.connect_timeout, Duration::from_secs(3));
    assert_eq!(b.health.interval, Duration::from_secs(5));
    assert_eq!(b.health.timeout, Duration::from_secs(2));
    assert_eq!((b.health.fall, b.health.rise), (3, 2));
    assert_eq!((b.max_connections_per_server, b.warm), (0, 0));
}

#[test]
fn unknown_key_in_every_table_is_named_with_its_line() {
    let cases = [
        ("colour = 1\n".to_owned() + LISTENER + BACKEND, "postern.toml:1: colour: unknown key `colour`; valid keys here: server, admin, log, tls, limits, listener, backend"),
        (with_table("[server]\nworkerz = 2"), "postern.toml:10: server.workerz: unknown key `workerz`; valid keys here: workers, max_connections, shutdown_grace, drain_spread, user, group, state_dir"),
        (with_table("[admin]\nport = 9190"), "postern.toml:10: admin.port: unknown key `port`; valid keys here: listen"),
        (with_table("[log]\nlevel = \"info\"\nfile = \"/var/log/postern.log\""), "postern.toml:11: log.file: unknown key `file`; valid keys here: format, level"),
        (with_table("[tls]\nciphers = \"HIGH\""), "postern.toml:10: tls.ciphers: unknown key `ciphers`; valid keys here: min_version, handshake_timeout, key_permissions, watch, ticket_key_file, certificate, acme"),
        (with_table("[[tls.certificate]]\ncert = \"/dev/null\"\nchain = \"/y.pem\""), "postern.toml:11: tls.certificate[0].chain: unknown key `chain`; valid keys here: cert, key"),
        (listener_with("timeout = \"1m\""), "postern.toml:6: listener[0].timeout: unknown key `timeout`; valid keys here: name, protocol, tls, listen, backend, idle_timeout, plaintext_timeout, max_line_length, max_plaintext_commands, allow, deny, proxy_protocol, proxy_from"),
        (backend_with("server = [\"a:1\"]"), "postern.toml:9: backend[0].server: unknown key `server`; valid keys here: name, servers, exec, max_children, balance, forward_client, connect_timeout, max_connections_per_server, warm, tls, tls_ca, tls_name, resolve_interval, route, user_map, weights, health"),
        (backend_with("[backend.health]\nintervall = \"1s\""), "postern.toml:10: backend[0].health.intervall: unknown key `intervall`; valid keys here: interval, timeout, fall, rise"),
    ];
    for (text, expected) in cases {
        assert_eq!(one_error(&text), expected);
    }
}

#[test]
fn all_unknown_keys_are_reported_at_once_with_semantic_errors() {
    let text = format!("[server]\nworkerz = 2\n\n{LISTENER}idle = \"1m\"\n{BACKEND}[backend.health]\nintervall = \"1s\"\nfall = 0\n");
    assert_eq!(
        errors(&text),
        [
            "postern.toml:2: server.workerz: unknown key `workerz`; valid keys here: workers, max_connections, shutdown_grace, drain_spread, user, group, state_dir",
            "postern.toml:9: listener[0].idle: unknown key `idle`; valid keys here: name, protocol, tls, listen, backend, idle_timeout, plaintext_timeout, max_line_length, max_plaintext_commands, allow, deny, proxy_protocol, proxy_from",
            "postern.toml:14: backend[0].health.intervall: unknown key `intervall`; valid keys here: interval, timeout, fall, rise",
            "postern.toml:15: backend[0].health.fall: 0 is out of range: use 1 to 100",
        ]
    );
}

#[test]
fn missing_required_key() {
    let text = format!("[[listener]]\nname = \"imaps\"\nlisten = [\"127.0.0.1:993\"]\nbackend = \"imap\"\n{BACKEND}");
    assert_eq!(
        one_error(&text),
        "postern.toml:1: listener[0].protocol: required key `protocol` is missing; add it"
    );
}

#[test]
fn wrong_types_get_a_hint() {
    assert_eq!(
        one_error(&with_table("[server]\nshutdown_grace = 30")),
        "postern.toml:10: server.shutdown_grace: invalid type: integer `30`, expected a string; write a duration in quotes, e.g. \"10s\""
    );
    assert_eq!(
        one_error(&with_table("[tls]\nmin_version = 1.3")),
        "postern.toml:10: tls.min_version: invalid type: floating point `1.3`, expected a string; write the value in quotes"
    );
    assert_eq!(
        one_error(&with_table("[server]\nworkers = -1")),
        "postern.toml:10: server.workers: invalid value: integer `-1`, expected a whole number of 0 or more"
    );
    assert_eq!(
        one_error(&format!("{BACKEND}[listener]\nname = \"x\"\n")),
        "postern.toml:4: listener: invalid type: map, expected a sequence; write the table header with double brackets, e.g. [[listener]], since there may be several"
    );
    assert_eq!(
        one_error(&backend_with("exec = \"/usr/sbin/imapd\"").replace("servers = [\"127.0.0.1:143\"]\n", "")),
        "postern.toml:8: backend[0].exec: invalid type: string \"/usr/sbin/imapd\", expected a sequence; write a list in brackets, e.g. [\"127.0.0.1:143\"]"
    );
}

#[test]
fn syntax_error_has_a_line() {
    assert_eq!(
        one_error(&with_table("[server\nworkers = 1")),
        "postern.toml:9: TOML syntax error: unclosed table, expected `]`"
    );
}

#[test]
fn bad_enum_values_list_the_allowed_ones() {
    let cases = [
        (with_table("[log]\nformat = \"xml\""), "postern.toml:10: log.format: \"xml\" is not allowed; use one of: \"text\", \"json\""),
        (with_table("[tls]\nmin_version = \"1.1\""), "postern.toml:10: tls.min_version: \"1.1\" is not allowed; use one of: \"1.2\", \"1.3\""),
        (with_table("[tls]\nkey_permissions = \"ignore\""), "postern.toml:10: tls.key_permissions: \"ignore\" is not allowed; use one of: \"warn\", \"strict\""),
        (listener_with("tls = \"sometimes\""), "postern.toml:6: listener[0].tls: \"sometimes\" is not allowed; use one of: \"implicit\", \"starttls\""),
        (listener_with("").replace("\"imap\"\nlisten", "\"imap4\"\nlisten"), "postern.toml:3: listener[0].protocol: \"imap4\" is not allowed; use one of: \"imap\", \"pop3\", \"smtp\", \"sieve\""),
        (backend_with("balance = \"random\""), "postern.toml:9: backend[0].balance: \"random\" is not allowed; use one of: \"least-connections\", \"round-robin\", \"client-hash\""),
        (backend_with("forward_client = \"proxy\""), "postern.toml:9: backend[0].forward_client: \"proxy\" is not allowed; use one of: \"none\", \"proxy-v1\", \"proxy-v2\", \"protocol\""),
    ];
    for (text, expected) in cases {
        assert_eq!(one_error(&text), expected);
    }
}

#[test]
fn durations() {
    let c = check(&format!(
        "{LISTENER}idle_timeout = \"1h 30m\"\nplaintext_timeout = \"500ms\"\n{BACKEND}"
    ))
    .map(|c| c.listeners[0].clone());
    assert!(
        c.is_err(),
        "500ms is below the 1s floor of plaintext_timeout"
    );
    let c = check(&listener_with(
        "idle_timeout = \"1h 30m\"\nplaintext_timeout = \"90s\"",
    ))
    .unwrap();
    assert_eq!(c.listeners[0].idle_timeout, Duration::from_secs(5400));
    assert_eq!(c.listeners[0].plaintext_timeout, Duration::from_secs(90));
    let c = check(&with_table("[tls]\nhandshake_timeout = \"500ms\"")).unwrap();
    assert_eq!(c.tls.handshake_timeout, Duration::from_millis(500));

    assert_eq!(
        one_error(&listener_with("idle_timeout = \"30\"")),
        "postern.toml:6: listener[0].idle_timeout: \"30\" is not a duration (time unit needed, for example 30sec or 30ms); expected a duration like \"10s\", \"500ms\" or \"30m\""
    );
    assert_eq!(
        one_error(&backend_with("connect_timeout = \"3 fortnights\"")),
        "postern.toml:9: backend[0].connect_timeout: \"3 fortnights\" is not a duration (unknown time unit \"fortnights\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); expected a duration like \"10s\", \"500ms\" or \"30m\""
    );
    assert_eq!(
        one_error(&with_table("[tls]\nhandshake_timeout = \"0s\"")),
        "postern.toml:10: tls.handshake_timeout: \"0s\" is out of range: use 100ms to 5m"
    );
    assert_eq!(
        one_error(&with_table("[server]\nshutdown_grace = \"3d\"")),
        "postern.toml:10: server.shutdown_grace: \"3d\" is out of range: use at most 1day"
    );
}

#[test]
fn zero_and_absurd_numbers() {
    let cases = [
        (with_table("[server]\nworkers = 5000"), "postern.toml:10: server.workers: 5000 is out of range: use 0 (one per CPU) to 1024"),
        (with_table("[server]\nmax_connections = 0"), "postern.toml:10: server.max_connections: 0 is out of range: use 1 to 10000000"),
        (listener_with("max_line_length = 80"), "postern.toml:6: listener[0].max_line_length: 80 is out of range: use 512 to 1048576 bytes (IMAP and SMTP need at least 512)"),
        (listener_with("max_plaintext_commands = 0"), "postern.toml:6: listener[0].max_plaintext_commands: 0 is out of range: use 1 to 1000"),
        (backend_with("[backend.health]\nfall = 0"), "postern.toml:10: backend[0].health.fall: 0 is out of range: use 1 to 100"),
        (backend_with("max_connections_per_server = 2\nwarm = 5"), "postern.toml:10: backend[0].warm: 5 is out of range: more spare connections than max_connections_per_server (2) allows; lower warm"),
    ];
    for (text, expected) in cases {
        assert_eq!(one_error(&text), expected);
    }
    let c = check(&with_table("[server]\nworkers = 0")).unwrap();
    assert_eq!(
        c.server.workers,
        std::thread::available_parallelism().unwrap()
    );
}

#[test]
fn listen_addresses_ipv4_and_ipv6() {
    let c = check(&format!("{LISTENER}{BACKEND}").replace(
        "[\"127.0.0.1:993\"]",
        "[\"[::]:993\", \"0.0.0.0:993\", \"[::1]:1993\"]",
    ))
    .unwrap();
    let listen: Vec<String> = c.listeners[0]
        .listen
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(listen, ["[::]:993", "0.0.0.0:993", "[::1]:1993"]);
    let text = format!("{LISTENER}{BACKEND}")
        .replace("[\"127.0.0.1:993\"]", "[\"::1\", \"mail.example.org:993\"]");
    assert_eq!(
        errors(&text),
        [
            "postern.toml:4: listener[0].listen[0]: \"::1\" is not a socket address (an IPv6 address needs brackets and a port, e.g. \"[::]:993\"); use ip:port, e.g. \"0.0.0.0:993\" or \"[::]:993\"",
            "postern.toml:4: listener[0].listen[1]: \"mail.example.org:993\" is not a socket address (the host must be an IP address, not a name); use ip:port, e.g. \"0.0.0.0:993\" or \"[::]:993\"",
        ]
    );
    assert_eq!(
        one_error(&with_table("[admin]\nlisten = \"9190\"")),
        "postern.toml:10: admin.listen: \"9190\" is not a socket address (no port); use ip:port, e.g. \"0.0.0.0:993\" or \"[::]:993\""
    );
    assert_eq!(
        one_error(&listener_with("").replace("[\"127.0.0.1:993\"]", "[]")),
        "postern.toml:4: listener[0].listen: is empty; list at least one entry"
    );
}

#[test]
fn at_least_one_listener() {
    assert_eq!(
        one_error(BACKEND),
        "postern.toml: listener: no [[listener]] is defined; add at least one (`postern config default` prints an example)"
    );
}

#[test]
fn names_are_unique() {
    assert_eq!(
        one_error(&format!("{LISTENER}{LISTENER}{BACKEND}").replacen("127.0.0.1:993", "127.0.0.1:1993", 1)),
        "postern.toml:7: listener[1].name: listener name \"imaps\" is already used by listener[0]; names must be unique"
    );
    assert_eq!(
        one_error(&format!("{LISTENER}{BACKEND}{BACKEND}")),
        "postern.toml:10: backend[1].name: backend name \"imap\" is already used by backend[0]; names must be unique"
    );
}

#[test]
fn listener_naming_a_missing_backend() {
    assert_eq!(
        one_error(&format!("{LISTENER}{BACKEND}").replace("backend = \"imap\"", "backend = \"imapx\"")),
        "postern.toml:5: listener[0].backend: backend \"imapx\" is not defined; define a [[backend]] with name = \"imapx\" or fix the name (defined: \"imap\")"
    );
    assert_eq!(
        one_error(LISTENER),
        "postern.toml:5: listener[0].backend: backend \"imap\" is not defined; define a [[backend]] with name = \"imap\" or fix the name (defined: none)"
    );
}

#[test]
fn duplicate_listen_address_across_listeners() {
    let second = LISTENER.replace("imaps", "imaps2");
    assert_eq!(
        one_error(&format!("{LISTENER}{second}{BACKEND}")),
        "postern.toml:9: listener[1].listen[0]: 127.0.0.1:993 is also bound by listener \"imaps\"; each address may appear once"
    );
    // The v4 and v6 wildcards do not collide (v6 sockets are IPV6_V6ONLY), and port 0
    // (a fresh port each time, used by tests) never collides.
    let second = second.replace("127.0.0.1:993", "[::]:993");
    let first = LISTENER.replace("127.0.0.1:993", "0.0.0.0:993");
    assert!(check(&format!("{first}{second}{BACKEND}")).is_ok());
    // A wildcard and a specific address of one family on one port would both bind
    // (SO_REUSEPORT) and silently split the connections.
    let specific = LISTENER.replace("imaps", "imaps2");
    assert_eq!(
        one_error(&format!("{first}{specific}{BACKEND}")),
        "postern.toml:9: listener[1].listen[0]: 127.0.0.1:993 overlaps 0.0.0.0:993 of listener \"imaps\": both would bind (SO_REUSEPORT) and split the connections between them; drop one or use another port"
    );
    assert_eq!(
        one_error(&with_table("[admin]\nlisten = \"127.0.0.1:993\"")),
        "postern.toml:10: admin.listen: 127.0.0.1:993 is also bound by listener \"imaps\"; each address may appear once"
    );
    let zero = LISTENER.replace(":993", ":0");
    assert!(check(&format!(
        "{zero}{}{BACKEND}",
        zero.replace("imaps", "imaps2")
    ))
    .is_ok());
}

#[test]
fn backend_needs_exactly_one_target() {
    let neither = format!("{LISTENER}[[backend]]\nname = \"imap\"\n");
    assert_eq!(
        one_error(&neither),
        "postern.toml:6: backend[0]: backend \"imap\" has neither `servers` nor `exec`; set one, e.g. servers = [\"127.0.0.1:143\"]"
    );
    assert_eq!(
        one_error(&backend_with("exec = [\"/usr/sbin/imapd\"]")),
        "postern.toml:6: backend[0]: backend \"imap\" sets both `servers` and `exec`; keep exactly one"
    );
    assert_eq!(
        one_error(&format!("{LISTENER}{BACKEND}").replace("[\"127.0.0.1:143\"]", "[]")),
        "postern.toml:8: backend[0].servers: is empty; list at least one entry"
    );
    let exec = format!("{LISTENER}[[backend]]\nname = \"imap\"\nexec = [\"imapd\", \"-d\"]\n");
    assert_eq!(
        one_error(&exec),
        "postern.toml:8: backend[0].exec[0]: program \"imapd\" is not an absolute path; write the full path, e.g. \"/usr/sbin/imapd\""
    );
    assert_eq!(
        one_error(&exec.replace("[\"imapd\", \"-d\"]", "[]")),
        "postern.toml:8: backend[0].exec: is empty; list at least one entry"
    );
    assert_eq!(
        one_error(&backend_with("max_children = 5")),
        "postern.toml:9: backend[0].max_children: applies to `exec` backends only; remove it"
    );
    assert_eq!(
        one_error(&exec.replace("\"imapd\"", "\"/nonexistent/imapd\"")),
        "postern.toml:8: backend[0].exec[0]: /nonexistent/imapd does not exist; install the server or fix the path (every session would otherwise get the \"no server available\" goodbye)"
    );
    let plain = std::env::temp_dir().join(format!("postern-not-executable-{}", std::process::id()));
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    let plain_s = plain.display().to_string();
    assert_eq!(
        one_error(&exec.replace("\"imapd\"", &format!("{plain_s:?}"))),
        format!("postern.toml:8: backend[0].exec[0]: {plain_s} is not executable (chmod +x); install the server or fix the path (every session would otherwise get the \"no server available\" goodbye)")
    );
    let _ = std::fs::remove_file(&plain);
    let c = check(&exec.replace("\"imapd\"", "\"/bin/cat\"")).unwrap();
    assert_eq!(
        c.backends[0].target,
        postern_config::BackendTarget::Exec {
            argv: vec!["/bin/cat".into(), "-d".into()],
            max_children: 1000
        }
    );
}

#[test]
fn server_addresses() {
    let servers = "[\"mail1.internal:143\", \"[2001:db8::1]:143\", \"unix:/run/dovecot/imap\", \"10.0.0.1:143\"]";
    let c = check(&format!("{LISTENER}{BACKEND}").replace("[\"127.0.0.1:143\"]", servers)).unwrap();
    let postern_config::BackendTarget::Servers(list) = &c.backends[0].target else {
        panic!("servers")
    };
    let shown: Vec<String> = list.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "mail1.internal:143",
            "[2001:db8::1]:143",
            "unix:/run/dovecot/imap",
            "10.0.0.1:143"
        ]
    );

    let bad = "[\"::1:143\", \"unix:dovecot\", \"host\", \"10.0.0.1:143\", \"10.0.0.1:143\", \"fe80::1%eth0:143\"]";
    assert_eq!(
        errors(&format!("{LISTENER}{BACKEND}").replace("[\"127.0.0.1:143\"]", bad)),
        [
            "postern.toml:8: backend[0].servers[0]: \"::1:143\" is not a server address (an IPv6 address needs brackets and a port, e.g. \"[::1]:143\"); use \"host:port\", \"[v6addr]:port\" or \"unix:/absolute/path\"",
            "postern.toml:8: backend[0].servers[1]: \"unix:dovecot\" is not a server address (the unix socket path must be absolute); use \"host:port\", \"[v6addr]:port\" or \"unix:/absolute/path\"",
            "postern.toml:8: backend[0].servers[2]: \"host\" is not a server address (no port); use \"host:port\", \"[v6addr]:port\" or \"unix:/absolute/path\"",
            "postern.toml:8: backend[0].servers[4]: \"10.0.0.1:143\" is not a server address (listed twice in this backend; remove the duplicate); use \"host:port\", \"[v6addr]:port\" or \"unix:/absolute/path\"",
            "postern.toml:8: backend[0].servers[5]: \"fe80::1%eth0:143\" is not a server address (put an IPv6 address in brackets, e.g. \"[::1]:143\"); use \"host:port\", \"[v6addr]:port\" or \"unix:/absolute/path\"",
        ]
    );
}

#[test]
fn listeners_sharing_a_backend_speak_one_protocol() {
    let pop3 = "[[listener]]\nname = \"pop3s\"\nprotocol = \"pop3\"\nlisten = [\"127.0.0.1:995\"]\nbackend = \"imap\"\n";
    assert_eq!(
        one_error(&format!("{LISTENER}{pop3}{BACKEND}")),
        "postern.toml:10: listener[1].backend: listener \"pop3s\" speaks pop3 but shares backend \"imap\" with listener \"imaps\", which speaks imap; give each protocol its own [[backend]]"
    );
    // An unused backend is allowed, validated, and left out of the running model.
    let spare = BACKEND.replace("\"imap\"", "\"spare\"");
    let c = check(&format!("{BACKEND}{spare}{LISTENER}")).unwrap();
    assert_eq!(c.backends.len(), 1);
    assert_eq!(c.backends[0].name, "imap");
    assert_eq!(c.listeners[0].backend(&c).name, "imap");
    assert_eq!(c.unused_backends, ["spare"]);
    assert!(c
        .summary()
        .contains("unused backends (no listener uses them; ignored): spare"));
    // The listener's index is renumbered when an unused backend comes first.
    let c = check(&format!("{spare}{BACKEND}{LISTENER}")).unwrap();
    assert_eq!(c.listeners[0].backend(&c).name, "imap");
    // Its errors are still reported.
    let bad = spare.replace("127.0.0.1:143", "nope");
    assert_eq!(
        one_error(&format!("{BACKEND}{bad}{LISTENER}")),
        "postern.toml:6: backend[1].servers[0]: \"nope\" is not a server address (no port); use \"host:port\", \"[v6addr]:port\" or \"unix:/absolute/path\""
    );
}

#[test]
fn drain_spread_within_shutdown_grace() {
    assert_eq!(
        one_error(&with_table("[server]\nshutdown_grace = \"10s\"\ndrain_spread = \"20s\"")),
        "postern.toml:11: server.drain_spread: 20s is longer than server.shutdown_grace (10s); make it at most the grace"
    );
    // An unset spread follows a short grace instead of failing.
    let c = check(&with_table("[server]\nshutdown_grace = \"2s\"")).unwrap();
    assert_eq!(c.server.drain_spread, Duration::from_secs(2));
}

#[test]
fn health_timeout_within_interval() {
    assert_eq!(
        one_error(&backend_with("[backend.health]\ninterval = \"1s\"\ntimeout = \"2s\"")),
        "postern.toml:11: backend[0].health.timeout: 2s is longer than the probe interval (1s); make the timeout at most the interval"
    );
    let c = check(&backend_with("[backend.health]\ninterval = \"1s\"")).unwrap();
    assert_eq!(c.backends[0].health.timeout, Duration::from_secs(1));
}

#[test]
fn certificate_and_key_files_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("fullchain.pem");
    std::fs::write(&cert, "not parsed here").unwrap();
    let missing = dir.path().join("privkey.pem");
    let table = format!("[[tls.certificate]]\ncert = {:?}\nkey = {:?}\n\n[[tls.certificate]]\ncert = \"/nonexistent/combined.pem\"", cert, missing);
    assert_eq!(
        errors(&with_table(&table)),
        [
            format!("postern.toml:11: tls.certificate[0].key: {} does not exist; point `key` at the PEM private key of this certificate, or remove `key` if the `cert` file also holds the key", missing.display()),
            "postern.toml:14: tls.certificate[1].cert: /nonexistent/combined.pem does not exist; point `cert` at your PEM certificate chain, create one with `postern cert generate`, or remove this [[tls.certificate]] to use a generated self-signed certificate".to_owned(),
        ]
    );
    let table = format!("[[tls.certificate]]\ncert = {:?}", dir.path());
    assert_eq!(
        one_error(&with_table(&table)),
        format!(
            "postern.toml:10: tls.certificate[0].cert: {} is a directory; name the file in it",
            dir.path().display()
        )
    );
}

#[test]
fn relative_paths_are_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    std::fs::write(dir.path().join("tls/combined.pem"), "x").unwrap();
    let file = dir.path().join("postern.toml");
    std::fs::write(
        &file,
        with_table(
            "[server]\nstate_dir = \"state\"\n[[tls.certificate]]\ncert = \"tls/combined.pem\"",
        ),
    )
    .unwrap();
    let c = load(&file).unwrap();
    assert_eq!(
        c.tls.certificates[0].cert,
        dir.path().join("tls/combined.pem")
    );
    assert_eq!(c.tls.certificates[0].key, None);
    assert_eq!(c.server.state_dir, dir.path().join("state"));
}

#[test]
fn unreadable_file_is_named() {
    let err = load(std::path::Path::new("/nonexistent/postern.toml"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "/nonexistent/postern.toml: cannot read the configuration file: No such file or directory (os error 2); check the path given with -c or $POSTERN_CONFIG"
    );
}

#[test]
fn semantic_errors_are_all_reported_in_file_order() {
    let text = format!(
        "[server]\nmax_connections = 0\n\n{}{BACKEND}[log]\nformat = \"xml\"\n",
        LISTENER
            .replace("\"imap\"\nlisten", "\"imap4\"\nlisten")
            .replace("backend = \"imap\"", "backend = \"nope\"")
    );
    let errors = errors(&text);
    let keys: Vec<&str> = errors
        .iter()
        .map(|e| e.split(": ").nth(1).unwrap_or_default())
        .collect();
    assert_eq!(
        keys,
        [
            "server.max_connections",
            "listener[0].protocol",
            "listener[0].backend",
            "log.format"
        ],
        "{errors:#?}"
    );
}

#[test]
fn embedded_default_summary_names_listeners_and_backends() {
    let summary = postern_config::embedded_default().unwrap().summary();
    assert!(
        summary.contains("imaps        imap  implicit  [::]:993, 0.0.0.0:993 -> imap (idle 30m)"),
        "{summary}"
    );
    assert!(
        summary.contains("imap        imap  127.0.0.1:143 (least-connections"),
        "{summary}"
    );
    assert!(summary.contains("self-signed"), "{summary}");
}

#[test]
fn causes_are_kept_as_sources() {
    use std::error::Error as _;
    let source_of = |text: &str| {
        let errors = postern_config::from_toml(text, postern_config::ConfigSource::Embedded)
            .err()
            .unwrap();
        errors.errors()[0].kind.source().map(ToString::to_string)
    };
    assert_eq!(
        source_of(&listener_with("idle_timeout = \"30\"")).as_deref(),
        Some("time unit needed, for example 30sec or 30ms")
    );
    assert!(source_of(&with_table("[server\nworkers = 1")).is_some());
    assert!(source_of(&with_table("[server]\nworkers = \"2\"")).is_some());
    let missing = load(std::path::Path::new("/nonexistent/postern.toml")).unwrap_err();
    assert!(missing.errors()[0].kind.source().is_some());
}
