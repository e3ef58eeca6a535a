//! The file schema, exactly as written in TOML, and the parser that reads text into it
//! (`parse`).
//!
//! Every table denies unknown keys. Enumerations, durations, addresses and networks are
//! kept as strings here and turned into model values in `validate`, so their errors are
//! collected (all reported at once) and can list the allowed values. No `flatten` or
//! `untagged`: both defeat `deny_unknown_fields` and blur error paths. An optional file
//! path is an `Option<String>` where SPEC writes `""` for "none", and validation treats
//! `""` as absent.

#[cfg(test)]
mod coverage;
mod parse;

use std::collections::BTreeMap;

use serde::Deserialize;

pub(crate) use parse::deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) server: RawServer,
    #[serde(default)]
    pub(crate) admin: RawAdmin,
    #[serde(default)]
    pub(crate) log: RawLog,
    #[serde(default)]
    pub(crate) tls: RawTls,
    #[serde(default)]
    pub(crate) limits: RawLimits,
    #[serde(default)]
    pub(crate) listener: Vec<RawListener>,
    #[serde(default)]
    pub(crate) backend: Vec<RawBackend>,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) workers: Option<u64>,
    pub(crate) max_connections: Option<u64>,
    pub(crate) shutdown_grace: Option<String>,
    pub(crate) drain_spread: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) group: Option<String>,
    pub(crate) state_dir: Option<String>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) listen: Option<String>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub(crate) format: Option<String>,
    pub(crate) level: Option<String>,
}

/// `[tls]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) min_version: Option<String>,
    pub(crate) handshake_timeout: Option<String>,
    pub(crate) key_permissions: Option<String>,
    pub(crate) watch: Option<bool>,
    pub(crate) ticket_key_file: Option<String>,
    #[serde(default)]
    pub(crate) certificate: Vec<RawCertificate>,
    pub(crate) acme: Option<RawAcme>,
}

/// `[[tls.certificate]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub(crate) cert: String,
    pub(crate) key: Option<String>,
}

/// `[[listener]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub(crate) name: String,
    pub(crate) protocol: String,
    pub(crate) tls: Option<String>,
    pub(crate) listen: Vec<String>,
    pub(crate) backend: String,
    pub(crate) idle_timeout: Option<String>,
    pub(crate) plaintext_timeout: Option<String>,
    pub(crate) max_line_length: Option<u64>,
    pub(crate) max_plaintext_commands: Option<u64>,
    pub(crate) allow: Option<Vec<String>>,
    pub(crate) deny: Option<Vec<String>>,
    pub(crate) proxy_protocol: Option<String>,
    pub(crate) proxy_from: Option<Vec<String>>,
}

/// `[[backend]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    pub(crate) name: String,
    pub(crate) servers: Option<Vec<String>>,
    pub(crate) exec: Option<Vec<String>>,
    pub(crate) max_children: Option<u64>,
    pub(crate) balance: Option<String>,
    pub(crate) forward_client: Option<String>,
    pub(crate) connect_timeout: Option<String>,
    pub(crate) max_connections_per_server: Option<u64>,
    pub(crate) warm: Option<u64>,
    pub(crate) tls: Option<String>,
    pub(crate) tls_ca: Option<String>,
    pub(crate) tls_name: Option<String>,
    pub(crate) resolve_interval: Option<String>,
    pub(crate) route: Option<String>,
    pub(crate) user_map: Option<String>,
    /// server (as written in `servers`) → weight; a BTreeMap so errors come in key order.
    pub(crate) weights: Option<BTreeMap<String, u64>>,
    #[serde(default)]
    pub(crate) health: RawHealth,
}

/// `[backend.health]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub(crate) interval: Option<String>,
    pub(crate) timeout: Option<String>,
    pub(crate) fall: Option<u64>,
    pub(crate) rise: Option<u64>,
}

/// `[tls.acme]`; its presence turns ACME on.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAcme {
    pub(crate) domains: Vec<String>,
    pub(crate) contact: Option<Vec<String>>,
    pub(crate) directory: Option<String>,
    pub(crate) challenge: Option<String>,
    pub(crate) challenge_listen: Option<Vec<String>>,
    pub(crate) ca_roots: Option<String>,
    pub(crate) renew_before: Option<String>,
}

/// `[limits]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub(crate) per_ip_connections: Option<u64>,
    pub(crate) per_ip_rate: Option<u64>,
    pub(crate) prelogin_timeout: Option<String>,
    pub(crate) max_prelogin: Option<u64>,
    pub(crate) auth_failures: Option<u64>,
    pub(crate) auth_failure_window: Option<String>,
    pub(crate) exempt: Option<Vec<String>>,
}
