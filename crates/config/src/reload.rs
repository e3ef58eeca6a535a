//! Which changes between two configurations need a restart.
//!
//! A reload (SIGHUP) applies everything else to new sessions; the keys listed here decide
//! which sockets are bound, which threads run and which user postern is, so a running
//! process cannot change them. docs/configuration.md's "Reload or restart" section says
//! the same in words; keep the two together.

use crate::Config;

impl Config {
    /// The keys whose change from `self` (running) to `next` (just loaded) takes effect
    /// only after a restart, each as a short description such as `server.workers` or
    /// `listener "imaps" listen`, in a stable order. Empty when `next` can be applied
    /// whole.
    pub fn restart_needed(&self, next: &Config) -> Vec<String> {
        let mut changed = Vec::new();
        let mut check = |differs: bool, key: String| {
            if differs {
                changed.push(key);
            }
        };
        let (s, n) = (&self.server, &next.server);
        check(s.workers != n.workers, "server.workers".into());
        check(s.user != n.user, "server.user".into());
        check(s.group != n.group, "server.group".into());
        check(s.state_dir != n.state_dir, "server.state_dir".into());
        check(
            self.admin.listen != next.admin.listen,
            "admin.listen".into(),
        );
        check(self.log.format != next.log.format, "log.format".into());
        check(self.tls.watch != next.tls.watch, "tls.watch".into());
        // The certificate store and the ticket keys are built once at start
        // (the listeners' rustls configurations hold them); the files they name are re-read
        // on change, but which files, and how they are checked, is fixed until a restart.
        let (t, u) = (&self.tls, &next.tls);
        check(t.min_version != u.min_version, "tls.min_version".into());
        check(
            t.key_permissions != u.key_permissions,
            "tls.key_permissions".into(),
        );
        check(t.certificates != u.certificates, "tls.certificate".into());
        check(
            t.ticket_key_file != u.ticket_key_file,
            "tls.ticket_key_file".into(),
        );
        let challenge = |c: &Config| c.tls.acme.as_ref().map(|a| a.challenge_listen.clone());
        check(
            challenge(self) != challenge(next),
            "tls.acme.challenge_listen".into(),
        );
        // The ACME task takes new settings on reload; starting or stopping it needs a restart.
        check(
            self.tls.acme.is_some() != next.tls.acme.is_some(),
            "tls.acme".into(),
        );
        for old in &self.listeners {
            match next.listeners.iter().find(|l| l.name == old.name) {
                None => check(true, format!("listener {:?} removed", old.name)),
                Some(new) => {
                    let name = &old.name;
                    check(
                        old.protocol != new.protocol,
                        format!("listener {name:?} protocol"),
                    );
                    check(old.tls != new.tls, format!("listener {name:?} tls"));
                    check(
                        old.listen != new.listen,
                        format!("listener {name:?} listen"),
                    );
                }
            }
        }
        for new in &next.listeners {
            if !self.listeners.iter().any(|l| l.name == new.name) {
                check(true, format!("listener {:?} added", new.name));
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use crate::{from_toml, Config, ConfigSource};

    const BASE: &str = "[[listener]]\nname = \"imaps\"\nprotocol = \"imap\"\nlisten = [\"127.0.0.1:993\"]\nbackend = \"imap\"\n[[backend]]\nname = \"imap\"\nservers = [\"127.0.0.1:143\"]\n";

    fn config(extra: &str) -> Config {
        from_toml(&format!("{BASE}{extra}"), ConfigSource::Embedded).unwrap()
    }

    #[test]
    fn backends_limits_and_listener_policy_apply_on_reload() {
        let old = config("");
        let new = config(
            "[[backend]]\nname = \"spare\"\nservers = [\"127.0.0.1:1143\"]\n[limits]\nper_ip_connections = 5\n[log]\nlevel = \"debug\"\n",
        );
        assert!(old.restart_needed(&new).is_empty());
        let new = from_toml(
            &BASE.replace(
                "backend = \"imap\"\n",
                "backend = \"imap\"\ndeny = [\"192.0.2.0/24\"]\nidle_timeout = \"5m\"\n",
            ),
            ConfigSource::Embedded,
        )
        .unwrap();
        assert!(old.restart_needed(&new).is_empty());
    }

    #[test]
    fn bound_addresses_threads_and_identity_need_a_restart() {
        let old = config("");
        // Not the CPU count the default resolves to, whatever the machine.
        let workers = old.server.workers.get() + 1;
        let new = from_toml(
            &format!(
                "{}[server]\nworkers = {workers}\nuser = \"postern\"\n[admin]\nlisten = \"127.0.0.1:9191\"\n[log]\nformat = \"json\"\n[tls]\nwatch = false\n[tls.acme]\ndomains = [\"mail.example.org\"]\n[[listener]]\nname = \"pop3s\"\nprotocol = \"pop3\"\nlisten = [\"127.0.0.1:995\"]\nbackend = \"pop3\"\n[[backend]]\nname = \"pop3\"\nservers = [\"127.0.0.1:110\"]\n",
                BASE.replace("127.0.0.1:993", "127.0.0.1:9993")
            ),
            ConfigSource::Embedded,
        )
        .unwrap();
        assert_eq!(
            old.restart_needed(&new),
            [
                "server.workers",
                "server.user",
                "admin.listen",
                "log.format",
                "tls.watch",
                "tls.acme.challenge_listen",
                "tls.acme",
                "listener \"imaps\" listen",
                "listener \"pop3s\" added",
            ]
        );
        assert_eq!(
            new.restart_needed(&old).last().map(String::as_str),
            Some("listener \"pop3s\" removed")
        );
    }
}
