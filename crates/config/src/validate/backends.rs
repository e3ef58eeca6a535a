//! `[[backend]]` tables.

use std::collections::HashMap;

use super::{millis, minutes, secs, Validator};
use crate::error::ConfigErrorKind as Kind;
use crate::raw::{RawBackend, RawHealth};
use crate::{
    BackendConfig, BackendTarget, Balance, ForwardClient, HealthConfig, ListenerConfig, Protocol,
};

impl Validator<'_> {
    /// Validates every backend; returns those a listener uses (`protocols[i]` is `Some`),
    /// with the listeners' `backend` indexes renumbered to point into that list, and the
    /// names of the unused ones.
    pub(super) fn backends(
        &mut self,
        raw: Vec<RawBackend>,
        protocols: &[Option<Protocol>],
        listeners: &mut [ListenerConfig],
    ) -> (Vec<BackendConfig>, Vec<String>) {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut backends = Vec::with_capacity(raw.len());
        let mut unused = Vec::new();
        // file index → index among the used backends
        let mut renumber: Vec<usize> = Vec::with_capacity(raw.len());
        for (i, b) in raw.into_iter().enumerate() {
            let key = format!("backend[{i}]");
            if b.name.trim().is_empty() {
                self.error(
                    &format!("{key}.name"),
                    Kind::InvalidValue {
                        message: "is empty; give the backend a name".to_owned(),
                    },
                );
            } else if let Some(&first) = seen.get(&b.name) {
                self.error(
                    &format!("{key}.name"),
                    Kind::DuplicateName {
                        what: "backend",
                        name: b.name.clone(),
                        first,
                    },
                );
            } else {
                seen.insert(b.name.clone(), i);
            }
            let name = b.name.clone();
            match self.backend(&key, b, protocols.get(i).copied().flatten()) {
                Some(backend) => {
                    renumber.push(backends.len());
                    backends.push(backend);
                }
                None => {
                    renumber.push(usize::MAX);
                    unused.push(name);
                }
            }
        }
        for l in listeners.iter_mut() {
            // An unknown backend name was reported already and keeps its out-of-range index.
            l.backend = renumber.get(l.backend).copied().unwrap_or(usize::MAX);
        }
        (backends, unused)
    }

    /// One backend, validated the same whether or not a listener uses it; `None` when no
    /// listener uses it (`protocol` is the protocol of those that do).
    fn backend(
        &mut self,
        key: &str,
        b: RawBackend,
        protocol: Option<Protocol>,
    ) -> Option<BackendConfig> {
        let target = self.target(key, &b);
        let balance = self.choice(
            &format!("{key}.balance"),
            b.balance.as_deref(),
            Balance::LeastConnections,
            &[
                ("least-connections", Balance::LeastConnections),
                ("round-robin", Balance::RoundRobin),
                ("client-hash", Balance::ClientHash),
            ],
        );
        let forward_client = self.choice(
            &format!("{key}.forward_client"),
            b.forward_client.as_deref(),
            ForwardClient::None,
            &[
                ("none", ForwardClient::None),
                ("proxy-v1", ForwardClient::ProxyV1),
                ("proxy-v2", ForwardClient::ProxyV2),
                ("protocol", ForwardClient::Protocol),
            ],
        );
        let connect_timeout = self.duration(
            &format!("{key}.connect_timeout"),
            b.connect_timeout.as_deref(),
            secs(3),
            millis(10),
            minutes(5),
        );
        let tls = self.backend_tls(key, &b, &target);
        let resolve_interval = self.resolve_interval(key, &b, &target);
        let route = self.route(key, &b, &target);
        let health = self.health(&format!("{key}.health"), b.health);
        let max_connections_per_server = self.number(
            &format!("{key}.max_connections_per_server"),
            b.max_connections_per_server,
            0,
            0,
            10_000_000,
            "0 (unlimited) to 10000000",
        );
        let warm = self.number(&format!("{key}.warm"), b.warm, 0, 0, 10_000, "0 to 10000");
        if warm > 0 && max_connections_per_server > 0 && warm > max_connections_per_server {
            self.error(
                &format!("{key}.warm"),
                Kind::OutOfRange {
                    value: warm.to_string(),
                    reason: format!("more spare connections than max_connections_per_server ({max_connections_per_server}) allows; lower warm"),
                },
            );
        }
        if warm > 0 && matches!(target, BackendTarget::Exec { .. }) {
            self.error(
                &format!("{key}.warm"),
                Kind::InvalidValue {
                    message: "applies to `servers` backends only; remove it from this exec backend"
                        .to_owned(),
                },
            );
        }
        protocol.map(|protocol| BackendConfig {
            name: b.name,
            protocol,
            target,
            balance,
            forward_client,
            connect_timeout,
            health,
            max_connections_per_server,
            warm,
            tls,
            resolve_interval,
            route,
        })
    }

    fn target(&mut self, key: &str, b: &RawBackend) -> BackendTarget {
        match (&b.servers, &b.exec) {
            (Some(_), Some(_)) => {
                self.error(
                    key,
                    Kind::BothTargets {
                        name: b.name.clone(),
                    },
                );
                BackendTarget::Servers(Vec::new())
            }
            (None, None) => {
                self.error(
                    key,
                    Kind::NoTarget {
                        name: b.name.clone(),
                    },
                );
                BackendTarget::Servers(Vec::new())
            }
            (Some(servers), None) => {
                if b.max_children.is_some() {
                    self.error(
                        &format!("{key}.max_children"),
                        Kind::InvalidValue {
                            message: "applies to `exec` backends only; remove it".to_owned(),
                        },
                    );
                }
                BackendTarget::Servers(self.servers(key, servers))
            }
            (None, Some(argv)) => {
                let exec_key = format!("{key}.exec");
                match argv.first() {
                    None => self.error(&exec_key, Kind::Empty),
                    Some(program) if !program.starts_with('/') => {
                        self.error(
                            &format!("{exec_key}[0]"),
                            Kind::ExecNotAbsolute {
                                program: program.clone(),
                            },
                        );
                    }
                    Some(program) => {
                        if let Some(problem) = not_runnable(std::path::Path::new(program)) {
                            self.error(
                                &format!("{exec_key}[0]"),
                                Kind::ExecNotRunnable {
                                    program: program.clone(),
                                    problem,
                                },
                            );
                        }
                    }
                }
                let max_children = self.number(
                    &format!("{key}.max_children"),
                    b.max_children,
                    1000,
                    1,
                    100_000,
                    "1 to 100000",
                );
                BackendTarget::Exec {
                    argv: argv.clone(),
                    max_children,
                }
            }
        }
    }

    fn servers(&mut self, key: &str, servers: &[String]) -> Vec<crate::ServerAddr> {
        if servers.is_empty() {
            self.error(&format!("{key}.servers"), Kind::Empty);
        }
        let mut parsed: Vec<crate::ServerAddr> = Vec::with_capacity(servers.len());
        for (j, s) in servers.iter().enumerate() {
            let skey = format!("{key}.servers[{j}]");
            match crate::addr::parse_server(s) {
                Ok(addr) if parsed.contains(&addr) => {
                    let reason = "listed twice in this backend; remove the duplicate".to_owned();
                    self.error(
                        &skey,
                        Kind::BadServerAddress {
                            value: s.clone(),
                            reason,
                        },
                    );
                }
                Ok(addr) => parsed.push(addr),
                Err(reason) => self.error(
                    &skey,
                    Kind::BadServerAddress {
                        value: s.clone(),
                        reason,
                    },
                ),
            }
        }
        parsed
    }

    fn health(&mut self, key: &str, h: RawHealth) -> HealthConfig {
        let interval = self.duration(
            &format!("{key}.interval"),
            h.interval.as_deref(),
            secs(5),
            millis(100),
            minutes(60),
        );
        // An unset timeout follows a short explicit interval rather than failing on it.
        let timeout_default = secs(2).min(interval);
        let timeout = self.duration(
            &format!("{key}.timeout"),
            h.timeout.as_deref(),
            timeout_default,
            millis(10),
            minutes(5),
        );
        if timeout > interval {
            self.error(
                &format!("{key}.timeout"),
                Kind::HealthTimeoutTooLong { timeout, interval },
            );
        }
        let fall = self.number(&format!("{key}.fall"), h.fall, 3, 1, 100, "1 to 100");
        let rise = self.number(&format!("{key}.rise"), h.rise, 2, 1, 100, "1 to 100");
        HealthConfig {
            interval,
            timeout,
            fall: u32::try_from(fall).unwrap_or(3),
            rise: u32::try_from(rise).unwrap_or(2),
        }
    }
}

/// Why `program` cannot be run, if it cannot: missing, not a file, or no execute bit.
fn not_runnable(program: &std::path::Path) -> Option<&'static str> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(program) {
        Err(_) => Some("does not exist"),
        Ok(m) if !m.is_file() => Some("is not a file"),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Some("is not executable (chmod +x)"),
        Ok(_) => None,
    }
}
