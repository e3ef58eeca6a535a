//! `[[listener]]` tables, and the listener → backend links.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::conflicts::overlaps;
use super::{hours, minutes, secs, Validator};
use crate::error::ConfigErrorKind as Kind;
use crate::raw::RawListener;
use crate::{ListenerConfig, Protocol, ProxyConfig, ProxyVersion, TlsMode};

impl Validator<'_> {
    /// Validates the listeners against the backend names of the file (`backends`, in file
    /// order) and returns, beside them, the protocol each backend is used with (`None` for
    /// a backend no listener uses). Each listener's `backend` is an index into `backends`
    /// for now; [`Validator::backends`] renumbers it once unused backends are left out.
    pub(super) fn listeners(
        &mut self,
        raw: Vec<RawListener>,
        backends: &[String],
    ) -> (Vec<ListenerConfig>, Vec<Option<Protocol>>) {
        let mut protocols: Vec<Option<Protocol>> = vec![None; backends.len()];
        if raw.is_empty() {
            self.error("listener", Kind::NoListeners);
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut bound: HashMap<SocketAddr, String> = HashMap::new();
        // backend index → first listener (name, protocol) using it
        let mut users: HashMap<usize, (String, Protocol)> = HashMap::new();
        let mut listeners = Vec::with_capacity(raw.len());
        for (i, l) in raw.into_iter().enumerate() {
            let key = format!("listener[{i}]");
            if l.name.trim().is_empty() {
                self.error(
                    &format!("{key}.name"),
                    Kind::InvalidValue {
                        message: "is empty; give the listener a name".to_owned(),
                    },
                );
            } else if let Some(&first) = names.get(&l.name) {
                self.error(
                    &format!("{key}.name"),
                    Kind::DuplicateName {
                        what: "listener",
                        name: l.name.clone(),
                        first,
                    },
                );
            } else {
                names.insert(l.name.clone(), i);
            }
            let listener = self.listener(&key, l, backends, &mut bound);
            if let Some(name) = backends.get(listener.backend) {
                match users.get(&listener.backend) {
                    None => {
                        users.insert(listener.backend, (listener.name.clone(), listener.protocol));
                        protocols[listener.backend] = Some(listener.protocol);
                    }
                    Some((first, first_protocol)) if *first_protocol != listener.protocol => {
                        let kind = Kind::ProtocolMismatch {
                            backend: name.clone(),
                            listener: listener.name.clone(),
                            protocol: listener.protocol.as_str(),
                            first: first.clone(),
                            first_protocol: first_protocol.as_str(),
                        };
                        self.error(&format!("{key}.backend"), kind);
                    }
                    Some(_) => {}
                }
            }
            listeners.push(listener);
        }
        (listeners, protocols)
    }

    fn listener(
        &mut self,
        key: &str,
        l: RawListener,
        backends: &[String],
        bound: &mut HashMap<SocketAddr, String>,
    ) -> ListenerConfig {
        let protocol = Protocol::parse(&l.protocol).unwrap_or_else(|| {
            self.error(
                &format!("{key}.protocol"),
                Kind::BadEnum {
                    value: l.protocol.clone(),
                    allowed: "\"imap\", \"pop3\", \"smtp\", \"sieve\"".to_owned(),
                },
            );
            Protocol::Imap
        });
        let tls = self.choice(
            &format!("{key}.tls"),
            l.tls.as_deref(),
            TlsMode::Implicit,
            &[
                ("implicit", TlsMode::Implicit),
                ("starttls", TlsMode::Starttls),
            ],
        );
        if l.listen.is_empty() {
            self.error(&format!("{key}.listen"), Kind::Empty);
        }
        let mut listen = Vec::with_capacity(l.listen.len());
        for (j, value) in l.listen.iter().enumerate() {
            let akey = format!("{key}.listen[{j}]");
            let addr = self.listen_addr(&akey, value);
            // Port 0 asks the kernel for a fresh port each time, so it never collides.
            if addr.port() != 0 {
                if let Some(first) = bound.get(&addr) {
                    self.error(
                        &akey,
                        Kind::DuplicateListen {
                            addr,
                            first: first.clone(),
                        },
                    );
                } else if let Some((other, listener)) =
                    bound.iter().find(|(other, _)| overlaps(addr, **other))
                {
                    let kind = Kind::OverlappingListen {
                        addr,
                        other: *other,
                        listener: listener.clone(),
                    };
                    self.error(&akey, kind);
                } else {
                    bound.insert(addr, l.name.clone());
                }
            }
            listen.push(addr);
        }
        let backend = match backends.iter().position(|b| *b == l.backend) {
            Some(index) => index,
            None => {
                let mut defined: Vec<String> = backends.iter().map(|b| format!("{b:?}")).collect();
                defined.dedup();
                let defined = if defined.is_empty() {
                    "none".to_owned()
                } else {
                    defined.join(", ")
                };
                self.error(
                    &format!("{key}.backend"),
                    Kind::UnknownBackend {
                        name: l.backend.clone(),
                        defined,
                    },
                );
                usize::MAX
            }
        };
        let idle_timeout = self.duration(
            &format!("{key}.idle_timeout"),
            l.idle_timeout.as_deref(),
            minutes(30),
            secs(1),
            hours(24 * 7),
        );
        let plaintext_timeout = self.duration(
            &format!("{key}.plaintext_timeout"),
            l.plaintext_timeout.as_deref(),
            secs(60),
            secs(1),
            hours(1),
        );
        let max_line_length = self.number(
            &format!("{key}.max_line_length"),
            l.max_line_length,
            4096,
            512,
            1 << 20,
            "512 to 1048576 bytes (IMAP and SMTP need at least 512)",
        );
        let max_plaintext_commands = self.number(
            &format!("{key}.max_plaintext_commands"),
            l.max_plaintext_commands,
            20,
            1,
            1000,
            "1 to 1000",
        );
        let allow = self.networks(&format!("{key}.allow"), l.allow.as_deref(), &[]);
        let deny = self.networks(&format!("{key}.deny"), l.deny.as_deref(), &[]);
        let proxy = self.proxy(key, l.proxy_protocol.as_deref(), l.proxy_from.as_deref());
        ListenerConfig {
            name: l.name,
            protocol,
            tls,
            listen,
            backend,
            idle_timeout,
            plaintext_timeout,
            max_line_length,
            max_plaintext_commands,
            allow,
            deny,
            proxy,
        }
    }

    /// `proxy_protocol` and `proxy_from`, which go together.
    fn proxy(
        &mut self,
        key: &str,
        version: Option<&str>,
        from: Option<&[String]>,
    ) -> Option<ProxyConfig> {
        let version = self.choice(
            &format!("{key}.proxy_protocol"),
            version,
            None,
            &[
                ("none", None),
                ("v1", Some(ProxyVersion::V1)),
                ("v2", Some(ProxyVersion::V2)),
                ("any", Some(ProxyVersion::Any)),
            ],
        );
        let from_key = format!("{key}.proxy_from");
        let Some(version) = version else {
            if from.is_some_and(|f| !f.is_empty()) {
                self.error(&from_key, Kind::ProxyFromWithoutProxy);
            }
            return None;
        };
        let written = from.is_some();
        let from = self.networks(&from_key, from, &[]);
        if from.is_empty() {
            // Point at proxy_from when it is written (empty), else at proxy_protocol.
            let key = if written {
                from_key.clone()
            } else {
                format!("{key}.proxy_protocol")
            };
            self.error(&key, Kind::ProxyWithoutFrom);
        }
        // A header from anywhere would let every client on the internet claim any address,
        // getting round allow/deny, the limits and the logs.
        if from.iter().any(|n| n.prefix_len() == 0) {
            self.error(&from_key, Kind::ProxyFromEverywhere);
        }
        Some(ProxyConfig { version, from })
    }
}
