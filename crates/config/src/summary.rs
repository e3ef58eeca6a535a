//! The one-screen summary printed by `postern check-config`.

use std::fmt::Write as _;

use humantime::format_duration;

use crate::{BackendTarget, Config};

impl Config {
    /// Listeners → backends (addresses, protocol, TLS mode, servers), then certificates
    /// and the server-wide settings.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_summary(&mut out);
        out
    }

    fn write_summary(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "config: {}", self.source)?;
        writeln!(out, "listeners:")?;
        for l in &self.listeners {
            let addrs: Vec<String> = l.listen.iter().map(ToString::to_string).collect();
            let backend = l.backend(self);
            writeln!(
                out,
                "  {} ({} {}) {} -> backend {} (idle {})",
                l.name,
                l.protocol.as_str(),
                l.tls.as_str(),
                addrs.join(", "),
                backend.name,
                format_duration(l.idle_timeout),
            )?;
        }
        writeln!(out, "backends:")?;
        for b in &self.backends {
            let protocol = b.protocol.map_or("unused", |p| p.as_str());
            match &b.target {
                BackendTarget::Servers(servers) => {
                    let servers: Vec<String> = servers.iter().map(ToString::to_string).collect();
                    writeln!(
                        out,
                        "  {} ({protocol}): {} [{}, forward {}, connect {}, health every {}]",
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
                        "  {} ({protocol}): exec {} [at most {max_children} at once]",
                        b.name,
                        argv.join(" ")
                    )?;
                }
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
                Some(key) => writeln!(
                    out,
                    "  {} + key {}{default}",
                    c.cert.display(),
                    key.display()
                )?,
                None => writeln!(
                    out,
                    "  {} (combined cert and key){default}",
                    c.cert.display()
                )?,
            }
        }
        let min = self.tls.min_version.as_str();
        let perms = self.tls.key_permissions.as_str();
        let format = self.log.format.as_str();
        writeln!(
            out,
            "tls: min {min}, handshake {}, key permissions {perms}, watch {}",
            format_duration(self.tls.handshake_timeout),
            self.tls.watch,
        )?;
        writeln!(
            out,
            "server: {} workers, max {} connections, grace {}; admin http://{}; log {format} {}",
            self.server.workers,
            self.server.max_connections,
            format_duration(self.server.shutdown_grace),
            self.admin.listen,
            self.log.level,
        )
    }
}
