//! Raw schema → validated model. Defaults are applied here and only here; every semantic
//! problem is collected before returning.

mod backends;
mod listeners;
mod schema;

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::ConfigErrorKind as Kind;
use crate::lines::Lines;
use crate::raw::{RawAdmin, RawConfig, RawLog, RawServer, RawTls};
use crate::{
    AdminConfig, CertificateConfig, Config, ConfigError, ConfigErrors, ConfigSource,
    KeyPermissions, LogConfig, LogFormat, ServerConfig, TlsConfig, TlsVersion,
};

/// Parses `text` and validates it into a [`Config`].
pub(crate) fn parse_and_validate(text: &str, source: ConfigSource) -> Result<Config, ConfigErrors> {
    let file = source.to_string();
    let lines = Lines::new(text);
    let (raw, schema_errors) =
        schema::deserialize(text, &file, &lines).map_err(ConfigErrors::from_vec)?;

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
        let tls = self.tls(raw.tls);
        let mut backends = self.backends(raw.backend);
        let listeners = self.listeners(raw.listener, &mut backends);
        self.admin_conflicts(&admin, &listeners);
        Config {
            source,
            server,
            admin,
            log,
            tls,
            listeners,
            backends,
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

    fn server(&mut self, raw: RawServer) -> ServerConfig {
        let workers = match raw.workers {
            None | Some(0) => std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
            Some(n) => {
                let n = self.number(
                    "server.workers",
                    Some(n),
                    1,
                    1,
                    MAX_WORKERS,
                    "0 (one per CPU) to 1024",
                );
                NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
            }
        };
        let max_connections = self.number(
            "server.max_connections",
            raw.max_connections,
            100_000,
            1,
            10_000_000,
            "1 to 10000000",
        );
        let shutdown_grace = self.duration(
            "server.shutdown_grace",
            raw.shutdown_grace.as_deref(),
            secs(30),
            Duration::ZERO,
            hours(24),
        );
        // An unset drain_spread follows a short explicit grace rather than failing on it.
        let spread_default = secs(5).min(shutdown_grace);
        let drain_spread = self.duration(
            "server.drain_spread",
            raw.drain_spread.as_deref(),
            spread_default,
            Duration::ZERO,
            hours(24),
        );
        if drain_spread > shutdown_grace {
            self.error(
                "server.drain_spread",
                Kind::DrainSpreadTooLong {
                    spread: drain_spread,
                    grace: shutdown_grace,
                },
            );
        }
        let user = self.non_empty("server.user", raw.user);
        let group = self.non_empty("server.group", raw.group);
        let state_dir = match self.non_empty("server.state_dir", raw.state_dir) {
            Some(dir) => self.resolve(&dir),
            None => crate::state_dir::default_state_dir(),
        };
        ServerConfig {
            workers,
            max_connections,
            shutdown_grace,
            drain_spread,
            user,
            group,
            state_dir,
        }
    }

    fn admin(&mut self, raw: RawAdmin) -> AdminConfig {
        let listen = match raw.listen {
            None => std::net::SocketAddr::from(([127, 0, 0, 1], 9190)),
            Some(value) => self.listen_addr("admin.listen", &value),
        };
        AdminConfig { listen }
    }

    fn admin_conflicts(&mut self, admin: &AdminConfig, listeners: &[crate::ListenerConfig]) {
        let clash = listeners.iter().find_map(|l| {
            l.listen
                .iter()
                .find(|a| listeners::overlaps(admin.listen, **a))
                .map(|a| (l, *a))
        });
        if let Some((l, other)) = clash {
            let kind = if other == admin.listen {
                Kind::DuplicateListen {
                    addr: other,
                    first: l.name.clone(),
                }
            } else {
                Kind::OverlappingListen {
                    addr: admin.listen,
                    other,
                    listener: l.name.clone(),
                }
            };
            self.error("admin.listen", kind);
        }
    }

    fn log(&mut self, raw: RawLog) -> LogConfig {
        let format = self.choice(
            "log.format",
            raw.format.as_deref(),
            LogFormat::Text,
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        );
        let level = self
            .non_empty("log.level", raw.level)
            .unwrap_or_else(|| "info".to_owned());
        LogConfig { format, level }
    }

    fn tls(&mut self, raw: RawTls) -> TlsConfig {
        let min_version = self.choice(
            "tls.min_version",
            raw.min_version.as_deref(),
            TlsVersion::V1_2,
            &[("1.2", TlsVersion::V1_2), ("1.3", TlsVersion::V1_3)],
        );
        let handshake_timeout = self.duration(
            "tls.handshake_timeout",
            raw.handshake_timeout.as_deref(),
            secs(10),
            millis(100),
            minutes(5),
        );
        let key_permissions = self.choice(
            "tls.key_permissions",
            raw.key_permissions.as_deref(),
            KeyPermissions::Warn,
            &[
                ("warn", KeyPermissions::Warn),
                ("strict", KeyPermissions::Strict),
            ],
        );
        let mut certificates = Vec::with_capacity(raw.certificate.len());
        for (i, c) in raw.certificate.into_iter().enumerate() {
            let cert_key = format!("tls.certificate[{i}].cert");
            let cert = self.existing_file(&cert_key, &c.cert, CERT_HINT);
            let key = c
                .key
                .map(|k| self.existing_file(&format!("tls.certificate[{i}].key"), &k, KEY_HINT));
            certificates.push(CertificateConfig { cert, key });
        }
        TlsConfig {
            min_version,
            handshake_timeout,
            key_permissions,
            watch: raw.watch.unwrap_or(true),
            certificates,
        }
    }

    // ---- helpers shared by the table validators ----

    pub(crate) fn duration(
        &mut self,
        key: &str,
        value: Option<&str>,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        let parsed = match humantime::parse_duration(value.trim()) {
            Ok(d) => d,
            Err(e) => {
                self.error(
                    key,
                    Kind::BadDuration {
                        value: value.to_owned(),
                        reason: e.to_string(),
                    },
                );
                return default;
            }
        };
        if parsed < min || parsed > max {
            let reason = if min.is_zero() {
                format!("use at most {}", humantime::format_duration(max))
            } else {
                format!(
                    "use {} to {}",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                )
            };
            self.error(
                key,
                Kind::OutOfRange {
                    value: format!("{value:?}"),
                    reason,
                },
            );
            return default;
        }
        parsed
    }

    pub(crate) fn number(
        &mut self,
        key: &str,
        value: Option<u64>,
        default: usize,
        min: u64,
        max: u64,
        range: &str,
    ) -> usize {
        let Some(n) = value else { return default };
        if n < min || n > max {
            self.error(
                key,
                Kind::OutOfRange {
                    value: n.to_string(),
                    reason: format!("use {range}"),
                },
            );
            return default;
        }
        usize::try_from(n).unwrap_or(default)
    }

    pub(crate) fn choice<T: Copy>(
        &mut self,
        key: &str,
        value: Option<&str>,
        default: T,
        table: &'static [(&'static str, T)],
    ) -> T {
        let Some(value) = value else { return default };
        if let Some((_, t)) = table.iter().find(|(name, _)| *name == value) {
            return *t;
        }
        let allowed: Vec<String> = table.iter().map(|(name, _)| format!("{name:?}")).collect();
        self.error(
            key,
            Kind::BadEnum {
                value: value.to_owned(),
                allowed: allowed.join(", "),
            },
        );
        default
    }

    pub(crate) fn non_empty(&mut self, key: &str, value: Option<String>) -> Option<String> {
        match value {
            Some(v) if v.trim().is_empty() => {
                self.error(
                    key,
                    Kind::InvalidValue {
                        message: "is empty; remove the key or give a value".to_owned(),
                    },
                );
                None
            }
            other => other,
        }
    }

    pub(crate) fn listen_addr(&mut self, key: &str, value: &str) -> std::net::SocketAddr {
        crate::addr::parse_listen(value).unwrap_or_else(|reason| {
            self.error(
                key,
                Kind::BadListenAddress {
                    value: value.to_owned(),
                    reason,
                },
            );
            std::net::SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    /// A relative path is taken relative to the config file's directory.
    fn resolve(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        match &self.base_dir {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    fn existing_file(&mut self, key: &str, value: &str, hint: &'static str) -> PathBuf {
        if value.trim().is_empty() {
            self.error(
                key,
                Kind::InvalidValue {
                    message: format!("is empty; {hint}"),
                },
            );
            return PathBuf::new();
        }
        let path = self.resolve(value);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                let problem = "is a directory; name the PEM file in it".to_owned();
                self.error(
                    key,
                    Kind::FileUnusable {
                        path: path.clone(),
                        problem,
                    },
                );
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.error(
                    key,
                    Kind::FileMissing {
                        path: path.clone(),
                        hint,
                    },
                );
            }
            Err(e) => {
                let problem =
                    format!("cannot be checked ({e}); check the permissions of its directories");
                self.error(
                    key,
                    Kind::FileUnusable {
                        path: path.clone(),
                        problem,
                    },
                );
            }
        }
        path
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

const MAX_WORKERS: u64 = 1024;
const CERT_HINT: &str =
    "point `cert` at your PEM certificate chain, create one with `postern cert generate`, \
or remove this [[tls.certificate]] to use a generated self-signed certificate";
const KEY_HINT: &str = "point `key` at the PEM private key of this certificate, \
or remove `key` if the `cert` file also holds the key";
