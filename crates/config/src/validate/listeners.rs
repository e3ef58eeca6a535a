//! `[[listener]]` tables, and the listener → backend links.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::{hours, minutes, secs, Validator};
use crate::error::ConfigErrorKind as Kind;
use crate::raw::RawListener;
use crate::{BackendConfig, ListenerConfig, Protocol, TlsMode};

impl Validator<'_> {
    /// Validates the listeners and records on each backend the protocol its listeners speak.
    pub(super) fn listeners(
        &mut self,
        raw: Vec<RawListener>,
        backends: &mut [BackendConfig],
    ) -> Vec<ListenerConfig> {
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
            if let Some(backend) = backends.get_mut(listener.backend) {
                match users.get(&listener.backend) {
                    None => {
                        users.insert(listener.backend, (listener.name.clone(), listener.protocol));
                        backend.protocol = Some(listener.protocol);
                    }
                    Some((first, first_protocol)) if *first_protocol != listener.protocol => {
                        let kind = Kind::ProtocolMismatch {
                            backend: backend.name.clone(),
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
        listeners
    }

    fn listener(
        &mut self,
        key: &str,
        l: RawListener,
        backends: &[BackendConfig],
        bound: &mut HashMap<SocketAddr, String>,
    ) -> ListenerConfig {
        let protocol = Protocol::parse(&l.protocol).unwrap_or_else(|| {
            self.error(
                &format!("{key}.protocol"),
                Kind::BadEnum {
                    value: l.protocol.clone(),
                    allowed: "\"imap\", \"pop3\", \"smtp\"".to_owned(),
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
        let backend = match backends.iter().position(|b| b.name == l.backend) {
            Some(index) => index,
            None => {
                let mut defined: Vec<String> =
                    backends.iter().map(|b| format!("{:?}", b.name)).collect();
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
        }
    }
}

/// Whether binding both addresses would make them share connections: the same port and
/// family, one of them the wildcard. IPv6 sockets are IPV6_V6ONLY, so `[::]` does not
/// cover IPv4.
pub(super) fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
