//! Raw schema → validated model. Defaults are applied here and only here; every semantic
//! problem is collected before returning.
//!
//! One file per part of the file: `process` (`[server]`, `[admin]`, `[log]`), `tls`
//! (`[tls]`, `[tls.acme]`), `limits`, `listeners`, `backends` (and `routing` for a
//! backend's TLS and route), `conflicts` (checks across tables); `values` holds the
//! helpers that turn one raw value into a model value.

mod backends;
mod conflicts;
mod limits;
mod listeners;
mod process;
mod routing;
mod tls;
mod values;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::ConfigErrorKind as Kind;
use crate::lines::Lines;
use crate::raw::RawConfig;
use crate::{Config, ConfigError, ConfigErrors, ConfigSource};

/// Parses `text` and validates it into a [`Config`].
pub(crate) fn parse_and_validate(text: &str, source: ConfigSource) -> Result<Config, ConfigErrors> {
    let file = source.to_string();
    let lines = Lines::new(text);
    let (raw, schema_errors) =
        crate::raw::deserialize(text, &file, &lines).map_err(ConfigErrors::from_vec)?;

    let base_dir = match &source {
        ConfigSource::File(path) => path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(Path::to_path_buf),
        ConfigSource::Embedded => None,
    };
    let mut v = Validator {
        file,
        lines,
        base_dir,
        errors: schema_errors,
    };
    let config = v.config(raw, source);
    if v.errors.is_empty() {
        Ok(config)
    } else {
        // File order reads best; errors without a line (defaults) go last.
        v.errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        Err(ConfigErrors::from_vec(v.errors))
    }
}

/// Collects errors while building the model; values that fail fall back to defaults so
/// validation can go on and report everything.
pub(crate) struct Validator<'i> {
    file: String,
    lines: Lines<'i>,
    base_dir: Option<PathBuf>,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn config(&mut self, raw: RawConfig, source: ConfigSource) -> Config {
        let server = self.server(raw.server);
        let admin = self.admin(raw.admin);
        let log = self.log(raw.log);
        let tls = self.tls(raw.tls, &server.state_dir);
        let limits = self.limits(raw.limits, tls.handshake_timeout);
        let names: Vec<String> = raw.backend.iter().map(|b| b.name.clone()).collect();
        let (mut listeners, protocols) = self.listeners(raw.listener, &names);
        let (backends, unused_backends) = self.backends(raw.backend, &protocols, &mut listeners);
        self.admin_conflicts(&admin, &listeners);
        if let Some(acme) = &tls.acme {
            self.acme_conflicts(acme, &admin, &listeners);
        }
        Config {
            source,
            server,
            admin,
            log,
            tls,
            limits,
            listeners,
            backends,
            unused_backends,
        }
    }

    pub(crate) fn error(&mut self, key: &str, kind: Kind) {
        let line = self.lines.line_of(key);
        self.errors.push(ConfigError {
            file: self.file.clone(),
            key: key.to_owned(),
            line,
            kind,
        });
    }
}

pub(crate) const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub(crate) const fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

pub(crate) const fn minutes(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

pub(crate) const fn hours(h: u64) -> Duration {
    Duration::from_secs(h * 3600)
}

pub(crate) const fn days(d: u64) -> Duration {
    Duration::from_secs(d * 86_400)
}
