//! Configuration reload (README.md, Command line): re-read the file, validate it as `check-config` does,
//! keep the running value of every key that needs a restart, build the new pools and
//! policies, then swap them in. Any failure before the swap changes nothing.

use std::path::PathBuf;

use postern_config::{BackendConfig, Config, ConfigErrors, ConfigSource, TlsConfig};
use postern_metrics::ErrorChain;
use postern_tls::TlsError;

/// Why a reload kept the running configuration.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration came from no file (the embedded default): nothing to re-read.
    #[error("postern runs on the embedded default configuration; there is no file to re-read (start it with -c PATH or $POSTERN_CONFIG)")]
    NoFile,
    /// The file does not validate (every problem is listed, as `check-config` prints them).
    #[error("{0}")]
    Invalid(#[source] ConfigErrors),
    /// A certificate or key of the new file does not load.
    #[error("{}: {}", .file.display(), ErrorChain(.source))]
    Tls {
        /// The configuration file.
        file: PathBuf,
        /// The certificate problem.
        #[source]
        source: TlsError,
    },
    /// The user routing of the new configuration is refused (a `user_map` that does not
    /// parse).
    #[error(transparent)]
    Director(postern_director::DirectorError),
    /// A new backend's TLS material (`tls_ca`, the system roots) does not load.
    #[error(transparent)]
    Backend(postern_backend_pool::BuildError),
    /// Loading ran into a runtime problem (the blocking task failed).
    #[error("the reload task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl ReloadError {
    /// One line per problem, for the log.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ReloadError::Invalid(errors) => errors.errors().iter().map(|e| e.to_string()).collect(),
            other => vec![ErrorChain(other).to_string()],
        }
    }
}

/// Reads and validates the file `running` came from, as `check-config` does (the config
/// and the certificates and keys it names). Blocking: run it off the runtime threads.
pub(crate) fn load(running: &ConfigSource) -> Result<Config, ReloadError> {
    let ConfigSource::File(path) = running else {
        return Err(ReloadError::NoFile);
    };
    let next = postern_config::load(path).map_err(ReloadError::Invalid)?;
    postern_tls::Tls::check(&next.tls, &next.server.state_dir).map_err(|source| {
        ReloadError::Tls {
            file: path.clone(),
            source,
        }
    })?;
    Ok(next)
}

/// What a reload applies: `next` with the running value of every key that needs a restart.
#[derive(Debug)]
pub(crate) struct Merged {
    pub(crate) config: Config,
    /// The keys that changed but need a restart (`Config::restart_needed`).
    pub(crate) restart: Vec<String>,
}

/// Merges `next` into `running`: listeners stay the running ones (same names, order,
/// addresses, protocol and TLS mode; a removed listener keeps its running settings, an added
/// one waits for a restart), each with its settings and backend from `next`; process, admin,
/// log format and certificate keys stay as they run. Backends that no running listener uses
/// are left out (no pool, no health checks).
pub(crate) fn merge(running: &Config, next: Config) -> Merged {
    let restart = running.restart_needed(&next);
    let mut backends: Vec<BackendConfig> = Vec::new();
    let mut index_of = |b: &BackendConfig| match backends.iter().position(|x| x == b) {
        Some(i) => i,
        None => {
            backends.push(b.clone());
            backends.len() - 1
        }
    };
    let mut listeners = Vec::with_capacity(running.listeners.len());
    for old in &running.listeners {
        let new = next.listeners.iter().find(|l| l.name == old.name);
        let listener = match new {
            // Same protocol as it runs with: the new settings and backend apply.
            Some(new) if new.protocol == old.protocol => {
                let mut l = new.clone();
                l.tls = old.tls;
                l.listen = old.listen.clone();
                l.backend = index_of(new.backend(&next));
                l
            }
            // Removed, or its protocol changed (its backend speaks the new one): it keeps
            // running as it is until the restart that applies the change.
            _ => {
                let mut l = old.clone();
                l.backend = index_of(old.backend(running));
                l
            }
        };
        listeners.push(listener);
    }
    let config = Config {
        source: next.source.clone(),
        server: postern_config::ProcessConfig {
            workers: running.server.workers,
            user: running.server.user.clone(),
            group: running.server.group.clone(),
            state_dir: running.server.state_dir.clone(),
            ..next.server.clone()
        },
        admin: running.admin.clone(),
        log: postern_config::LogConfig {
            format: running.log.format,
            level: next.log.level.clone(),
        },
        tls: TlsConfig {
            handshake_timeout: next.tls.handshake_timeout,
            // The running ACME task takes the new settings, on the sockets it has.
            acme: match (&running.tls.acme, &next.tls.acme) {
                (Some(old), Some(new)) => Some(postern_config::AcmeConfig {
                    challenge_listen: old.challenge_listen.clone(),
                    ..new.clone()
                }),
                (old, _) => old.clone(),
            },
            ..running.tls.clone()
        },
        listeners,
        limits: next.limits.clone(),
        backends,
        unused_backends: next.unused_backends.clone(),
    };
    Merged { config, restart }
}

#[cfg(test)]
mod tests;
