//! The one-screen summary printed by `postern check-config`.

use std::fmt::Write as _;

use humantime::format_duration;

use crate::{BackendTarget, Config};

impl Config {
    /// Listeners → backends (addresses, protocol, TLS mode, servers), then certificates
    /// and the server-wide settings. Does not repeat [`Config::source`].
    pub fn summary(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_summary(&mut out);
        out
    }

    fn write_summary(&self, out: &mut String) -> std::fmt::Result {
        let lw = self
            .listeners
            .iter()
            .map(|l| l.name.len())
            .max()
            .unwrap_or(0);
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
        }
        let bw = self
            .backends
            .iter()
            .map(|b| b.name.len())
            .max()
            .unwrap_or(0);
        writeln!(out, "backends:")?;
        for b in &self.backends {
            let protocol = b.protocol.map_or("-", |p| p.as_str());
            match &b.target {
                BackendTarget::Servers(servers) => {
                    let servers: Vec<String> = servers.iter().map(ToString::to_string).collect();
                    writeln!(
                        out,
                        "  {:bw$}  {protocol:4}  {} ({}, forward {}, connect {}, health every {})",
                        b.name,
                        servers.join(", "),
                        b.balance.as_str(),
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
            if b.protocol.is_none() {
                writeln!(out, "  {:bw$}  (no listener uses this backend)", "")?;
            }
        }
        writeln!(out, "certificates:")?;
        if self.tls.certificates.is_empty() {
            writeln!(
                out,
                "  none configured: a self-signed certificate is generated in {}",
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
        writeln!(
            out,
            "tls: min {}, handshake {}, key permissions {}, watch {}",
            self.tls.min_version.as_str(),
            format_duration(self.tls.handshake_timeout),
            self.tls.key_permissions.as_str(),
            if self.tls.watch { "on" } else { "off" },
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
}
