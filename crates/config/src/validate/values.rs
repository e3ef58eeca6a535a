//! Turning one raw value into a model value: durations, numbers, enumerations, files,
//! addresses, networks. Each helper records its error and returns a fallback, so that
//! validation goes on and reports every problem at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Validator;
use crate::error::ConfigErrorKind as Kind;
use crate::NetworkSet;

impl Validator<'_> {
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
                        source: e,
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
    pub(super) fn resolve(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        match &self.base_dir {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    pub(super) fn existing_file(&mut self, key: &str, value: &str, hint: &'static str) -> PathBuf {
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
                self.error(key, Kind::IsDirectory { path: path.clone() });
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
            Err(source) => {
                self.error(
                    key,
                    Kind::FileUnchecked {
                        path: path.clone(),
                        source,
                    },
                );
            }
        }
        path
    }

    /// An optional file: absent or `""` is `None` ("" is how SPEC writes "not set");
    /// otherwise the file must exist.
    pub(super) fn optional_file(
        &mut self,
        key: &str,
        value: Option<&str>,
        hint: &'static str,
    ) -> Option<PathBuf> {
        match value {
            None => None,
            Some(v) if v.trim().is_empty() => None,
            Some(v) => Some(self.existing_file(key, v, hint)),
        }
    }

    /// A list of CIDR networks; `default` when the key is absent.
    pub(super) fn networks(
        &mut self,
        key: &str,
        values: Option<&[String]>,
        default: &[&str],
    ) -> NetworkSet {
        let Some(values) = values else {
            let nets = default
                .iter()
                .filter_map(|n| crate::addr::parse_network(n).ok());
            return NetworkSet::new(nets);
        };
        let mut nets = Vec::with_capacity(values.len());
        for (i, value) in values.iter().enumerate() {
            match crate::addr::parse_network(value) {
                Ok(net) => nets.push(net),
                Err(reason) => self.error(
                    &format!("{key}[{i}]"),
                    Kind::BadNetwork {
                        value: value.clone(),
                        reason,
                    },
                ),
            }
        }
        NetworkSet::new(nets)
    }

    /// A list of listen addresses, each at most once.
    pub(super) fn listen_addrs(&mut self, key: &str, values: &[String]) -> Vec<SocketAddr> {
        if values.is_empty() {
            self.error(key, Kind::Empty);
        }
        let mut addrs: Vec<SocketAddr> = Vec::with_capacity(values.len());
        for (i, value) in values.iter().enumerate() {
            let akey = format!("{key}[{i}]");
            let addr = self.listen_addr(&akey, value);
            if addrs.contains(&addr) {
                self.error(
                    &akey,
                    Kind::ListedTwice {
                        value: value.clone(),
                    },
                );
            } else {
                addrs.push(addr);
            }
        }
        addrs
    }

    /// Records that `key` does not apply in this table (`why`), when it is `set` to
    /// something other than its default (SPEC's own examples write `tls_ca = ""`,
    /// `weights = {}` beside `tls = "none"`, `route = "connection"`).
    pub(super) fn not_applicable(&mut self, key: &str, set: bool, why: &str) {
        if set {
            self.error(
                key,
                Kind::InvalidValue {
                    message: format!("{why}; remove it"),
                },
            );
        }
    }
}
