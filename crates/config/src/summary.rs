//! The one-screen summary printed by `postern check-config`.

use std::fmt::Write as _;

use humantime::format_duration;

use crate::{BackendConfig, BackendTarget, Config, ListenerConfig, Route, ServerAddr};

impl Config {
    /// Listeners → backends (addresses, protocol, TLS mode, access lists, PROXY, servers,
    /// backend TLS, route), then certificates, ACME, limits and the process-wide settings.
    /// Does not repeat [`Config::source`].
    pub fn summary(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_summary(&mut out);
        out
    }

    fn write_summary(&self, out: &mut String) -> std::fmt::Result {
        let lw = widest(self.listeners.iter().map(|l| &l.name));
        writeln!(out, "listeners:")?;
        for l in &self.listeners {
            let addrs: Vec<String> = l.listen.iter().map(ToString::to_string).collect();
            writeln!(
                out,
                "  {:lw$}  {:4}  {:8}  {} -> {} (idle {})",
                l.name,
                l.protocol.as_str(),
                l.tls.as_str(),
                addrs.join(", "),
                l.backend(self).name,
                format_duration(l.idle_timeout),
            )?;
            if let Some(access) = access(l) {
                writeln!(out, "  {:lw$}  {access}", "")?;
            }
        }
        let bw = widest(self.backends.iter().map(|b| &b.name));
        writeln!(out, "backends:")?;
        for b in &self.backends {
            let protocol = b.protocol.as_str();
            match &b.target {
                BackendTarget::Servers(servers) => {
                    let servers: Vec<String> = servers.iter().map(ToString::to_string).collect();
                    let pick = match &b.route {
                        Route::Connection => b.balance.as_str(),
                        Route::User(_) => "by user",
                    };
                    writeln!(
                        out,
                        "  {:bw$}  {protocol:4}  {} ({pick}, forward {}, connect {}, health every {})",
                        b.name,
                        servers.join(", "),
                        b.forward_client.as_str(),
                        format_duration(b.connect_timeout),
                        format_duration(b.health.interval),
                    )?;
                }
                BackendTarget::Exec { argv, max_children } => {
                    writeln!(
                        out,
                        "  {:bw$}  {protocol:4}  exec {} (at most {max_children} at once)",
                        b.name,
                        argv.join(" "),
                    )?;
                }
            }
            for line in backend_details(b) {
                writeln!(out, "  {:bw$}  {line}", "")?;
            }
        }
        if !self.unused_backends.is_empty() {
            writeln!(
                out,
                "unused backends (no listener uses them; ignored): {}",
                self.unused_backends.join(", ")
            )?;
        }
        self.write_tls(out)?;
        let limits = &self.limits;
        let sessions = limits
            .per_ip_connections
            .map_or("no session limit".to_owned(), |n| {
                format!("at most {n} sessions")
            });
        let rate = limits.per_ip_rate.map_or("no rate limit".to_owned(), |n| {
            format!(
                "{n} new connections/s (burst {})",
                n.get().saturating_mul(2)
            )
        });
        let brake = match limits.auth_failures {
            Some(n) => format!(
                "refused for {} after {n} failed logins",
                format_duration(limits.auth_failure_window)
            ),
            None => "no failed-login brake".to_owned(),
        };
        writeln!(
            out,
            "limits per client address (IPv6 per /64): {sessions}, {rate}, {brake}; exempt: {}",
            limits.exempt,
        )?;
        writeln!(
            out,
            "limits before login: {}, at most {} sessions at once",
            format_duration(limits.prelogin_timeout),
            limits.max_prelogin,
        )?;
        let user = match (&self.server.user, &self.server.group) {
            (Some(u), Some(g)) => format!(", runs as {u}:{g}"),
            (Some(u), None) => format!(", runs as {u}"),
            (None, Some(g)) => format!(", group {g}"),
            (None, None) => String::new(),
        };
        writeln!(
            out,
            "server: {} workers, max {} connections, grace {}{user}",
            self.server.workers,
            self.server.max_connections,
            format_duration(self.server.shutdown_grace),
        )?;
        writeln!(
            out,
            "admin: http://{}/metrics; log {} {}",
            self.admin.listen,
            self.log.format.as_str(),
            self.log.level
        )
    }

    fn write_tls(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "certificates:")?;
        if self.tls.certificates.is_empty() {
            let until = if self.tls.acme.is_some() {
                " until the ACME certificate is issued"
            } else {
                ""
            };
            writeln!(
                out,
                "  none configured: a self-signed certificate is generated in {}{until}",
                self.server.state_dir.display()
            )?;
        }
        for (i, c) in self.tls.certificates.iter().enumerate() {
            let default = if i == 0 { " (default)" } else { "" };
            match &c.key {
                Some(key) => writeln!(out, "  {} + {}{default}", c.cert.display(), key.display())?,
                None => writeln!(out, "  {} (cert and key){default}", c.cert.display())?,
            }
        }
        if let Some(acme) = &self.tls.acme {
            let listen: Vec<String> = acme
                .challenge_listen
                .iter()
                .map(ToString::to_string)
                .collect();
            let roots = acme
                .ca_roots
                .as_ref()
                .map_or("the system roots".to_owned(), |p| p.display().to_string());
            writeln!(
                out,
                "acme: {} from {} (CA verified by {roots})",
                acme.domains.join(", "),
                acme.directory,
            )?;
            writeln!(
                out,
                "  challenge {}, answered on {}; renewed {} before expiry; kept in {}",
                acme.challenge.as_str(),
                listen.join(", "),
                format_duration(acme.renew_before),
                acme.store.display(),
            )?;
        }
        let tickets = match &self.tls.ticket_key_file {
            Some(p) => format!("session tickets from {}", p.display()),
            None => "session tickets from per-process keys".to_owned(),
        };
        writeln!(
            out,
            "tls: min {}, handshake {}, key permissions {}, watch {}, {tickets}",
            self.tls.min_version.as_str(),
            format_duration(self.tls.handshake_timeout),
            self.tls.key_permissions.as_str(),
            if self.tls.watch { "on" } else { "off" },
        )
    }
}

/// `allow 10.0.0.0/8; deny ...; PROXY v2 from ...`, or `None` when the listener serves
/// every address directly.
/// The column width that fits every name.
fn widest<'a>(names: impl Iterator<Item = &'a String>) -> usize {
    names.map(String::len).max().unwrap_or(0)
}

fn access(l: &ListenerConfig) -> Option<String> {
    let mut parts = Vec::new();
    if !l.allow.is_empty() {
        parts.push(format!("allow only {}", l.allow));
    }
    if !l.deny.is_empty() {
        parts.push(format!("deny {}", l.deny));
    }
    if let Some(p) = &l.proxy {
        parts.push(format!(
            "PROXY {} header required from {}",
            p.version.as_str(),
            p.from
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Lines about a backend's TLS, DNS and route, when they differ from plain TCP by
/// connection.
fn backend_details(b: &BackendConfig) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(tls) = &b.tls {
        let name = tls
            .name
            .as_ref()
            .map_or("each server's host".to_owned(), |n| format!("{n:?}"));
        let ca = tls
            .ca
            .as_ref()
            .map_or("the system roots".to_owned(), |p| p.display().to_string());
        lines.push(format!(
            "TLS {} to the servers, verified as {name} against {ca}",
            tls.mode.as_str()
        ));
    } else if let BackendTarget::Servers(servers) = &b.target {
        let remote = servers.iter().any(|s| match s {
            ServerAddr::Tcp { host, .. } => !host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()),
            ServerAddr::Unix(_) => false,
        });
        if remote {
            lines.push(
                "plaintext (tls = \"none\") to servers off this host: logins cross the network in clear"
                    .to_owned(),
            );
        }
    }
    if let BackendTarget::Servers(servers) = &b.target {
        let names = servers.iter().any(|s| match s {
            ServerAddr::Tcp { host, .. } => host.parse::<std::net::IpAddr>().is_err(),
            ServerAddr::Unix(_) => false,
        });
        if names {
            lines.push(format!(
                "host names re-resolved every {}",
                format_duration(b.resolve_interval)
            ));
        }
    }
    if let Route::User(route) = &b.route {
        let map = route
            .user_map
            .as_ref()
            .map_or("no user_map".to_owned(), |p| {
                format!("user_map {}", p.display())
            });
        let weights = if route.weights.is_empty() {
            "every server weighs 1".to_owned()
        } else {
            let w: Vec<String> = route
                .weights
                .iter()
                .map(|(s, w)| format!("{s} = {w}"))
                .collect();
            format!("weights {} (others 1)", w.join(", "))
        };
        lines.push(format!("route by user: {map}, {weights}"));
    }
    lines
}
