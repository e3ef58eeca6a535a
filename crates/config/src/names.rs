//! Config spellings of the model's enums, for logs, metric labels and the summary.

use crate::{Balance, ForwardClient, KeyPermissions, LogFormat, ProxyVersion, TlsVersion};

impl LogFormat {
    /// The config spelling (`text`, `json`).
    pub const fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl TlsVersion {
    /// The config spelling (`1.2`, `1.3`).
    pub const fn as_str(self) -> &'static str {
        match self {
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        }
    }
}

impl KeyPermissions {
    /// The config spelling (`warn`, `strict`).
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyPermissions::Warn => "warn",
            KeyPermissions::Strict => "strict",
        }
    }
}

impl Balance {
    /// The config spelling (`least-connections`, `round-robin`, `client-hash`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Balance::LeastConnections => "least-connections",
            Balance::RoundRobin => "round-robin",
            Balance::ClientHash => "client-hash",
        }
    }
}

impl ForwardClient {
    /// The config spelling (`none`, `proxy-v1`, `proxy-v2`, `protocol`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ForwardClient::None => "none",
            ForwardClient::ProxyV1 => "proxy-v1",
            ForwardClient::ProxyV2 => "proxy-v2",
            ForwardClient::Protocol => "protocol",
        }
    }
}

impl ProxyVersion {
    /// The config spelling (`v1`, `v2`, `any`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ProxyVersion::V1 => "v1",
            ProxyVersion::V2 => "v2",
            ProxyVersion::Any => "any",
        }
    }
}
