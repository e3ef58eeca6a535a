use postern_config::{from_toml, BackendTarget, Config, ConfigSource, Protocol};

use super::merge;

const BASE: &str = r#"
[server]
workers = 2
[[listener]]
name = "imaps"
protocol = "imap"
listen = ["127.0.0.1:9993"]
backend = "imap"
[[listener]]
name = "pop3s"
protocol = "pop3"
listen = ["127.0.0.1:9995"]
backend = "pop3"
[[backend]]
name = "imap"
servers = ["127.0.0.1:143"]
[[backend]]
name = "pop3"
servers = ["127.0.0.1:110"]
"#;

fn config(text: &str) -> Config {
    from_toml(text, ConfigSource::Embedded).unwrap()
}

fn servers(c: &Config, listener: usize) -> Vec<String> {
    match &c.listeners[listener].backend(c).target {
        BackendTarget::Servers(s) => s.iter().map(ToString::to_string).collect(),
        BackendTarget::Exec { .. } => vec![],
    }
}

#[test]
fn new_backends_and_listener_settings_apply_but_restart_keys_keep_their_value() {
    let running = config(BASE);
    let next = config(
        &BASE
            .replace("workers = 2", "workers = 3")
            .replace("127.0.0.1:143", "127.0.0.1:1143")
            .replace("127.0.0.1:9993", "127.0.0.1:8993")
            .replace(
                "backend = \"imap\"\n",
                "backend = \"imap\"\ndeny = [\"192.0.2.0/24\"]\nidle_timeout = \"5m\"\n",
            ),
    );
    let merged = merge(&running, next);
    assert_eq!(
        merged.restart,
        ["server.workers", "listener \"imaps\" listen"]
    );
    let c = &merged.config;
    assert_eq!(c.server.workers.get(), 2);
    assert_eq!(c.listeners[0].listen, running.listeners[0].listen);
    assert_eq!(c.listeners[0].idle_timeout.as_secs(), 300);
    assert!(c.listeners[0].deny.contains("192.0.2.9".parse().unwrap()));
    assert_eq!(servers(c, 0), ["127.0.0.1:1143"]);
    assert_eq!(servers(c, 1), ["127.0.0.1:110"]);
}

#[test]
fn a_removed_listener_keeps_running_and_an_added_one_waits() {
    let running = config(BASE);
    let without_pop3 = BASE
        .split("[[listener]]\nname = \"pop3s\"")
        .next()
        .unwrap()
        .to_owned()
        + "[[backend]]\nname = \"imap\"\nservers = [\"127.0.0.1:2143\"]\n";
    let next = config(&(without_pop3.replace("[[backend]]\nname = \"imap\"\nservers = [\"127.0.0.1:143\"]\n", "")
        + "[[listener]]\nname = \"extra\"\nprotocol = \"imap\"\nlisten = [\"127.0.0.1:7993\"]\nbackend = \"imap\"\n"));
    let merged = merge(&running, next);
    assert_eq!(
        merged.restart,
        ["listener \"pop3s\" removed", "listener \"extra\" added"]
    );
    let c = &merged.config;
    let names: Vec<&str> = c.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["imaps", "pop3s"]);
    assert_eq!(servers(c, 0), ["127.0.0.1:2143"]);
    // pop3s keeps its backend, which the new file no longer has
    assert_eq!(servers(c, 1), ["127.0.0.1:110"]);
    assert_eq!(c.listeners[1].backend(c).protocol, Protocol::Pop3);
    assert_eq!(c.backends.len(), 2);
}

#[test]
fn a_listener_whose_protocol_changed_keeps_its_running_backend() {
    let running = config(BASE);
    let next = config(
        &BASE
            .replacen("protocol = \"pop3\"", "protocol = \"imap\"", 1)
            .replace(
                "name = \"pop3\"\nservers = [\"127.0.0.1:110\"]",
                "name = \"pop3\"\nservers = [\"127.0.0.1:1110\"]",
            ),
    );
    let merged = merge(&running, next);
    assert_eq!(merged.restart, ["listener \"pop3s\" protocol"]);
    let c = &merged.config;
    assert_eq!(c.listeners[1].protocol, Protocol::Pop3);
    assert_eq!(servers(c, 1), ["127.0.0.1:110"]);
}
