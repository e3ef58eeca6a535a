//! The validated configuration: what the rest of postern consumes.
//!
//! Every value here has passed validation; defaults are already applied. Runtime crates
//! receive these types and never see TOML. Where a combination of keys is invalid, the
//! model has no way to express it (a backend's TLS settings exist only when `tls` is not
//! `none`, a listener's PROXY settings only when `proxy_protocol` is not `none`...).

mod backend;
mod limits;
mod net;
mod tls;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

pub use postern_proto::Protocol;

pub use backend::*;
pub use limits::*;
pub use net::*;
pub use tls::*;

/// The whole validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where this configuration came from (a file, or the embedded default).
    pub source: ConfigSource,
    /// `[server]`
    pub server: ProcessConfig,
    /// `[admin]`
    pub admin: AdminConfig,
    /// `[log]`
    pub log: LogConfig,
    /// `[tls]`
    pub tls: TlsConfig,
    /// `[[listener]]`, in file order. Names are unique.
    pub listeners: Vec<ListenerConfig>,
    /// `[limits]`
    pub limits: LimitsConfig,
    /// The `[[backend]]`s that a listener uses, in file order. Names are unique.
    pub backends: Vec<BackendConfig>,
    /// Names of the `[[backend]]`s no listener uses. They were validated like the others
    /// but are not part of the running configuration: no pool, no health checks, no
    /// effect on `/readyz`. `check-config` and the start log name them.
    pub unused_backends: Vec<String>,
}

/// Where a configuration was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file on disk.
    File(PathBuf),
    /// The default compiled into the binary.
    Embedded,
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "{}", p.display()),
            ConfigSource::Embedded => f.write_str("<embedded default>"),
        }
    }
}

/// `[server]`: settings of the postern process as a whole (threads, capacity, drain,
/// privileges, state). Not to be confused with a backend server ([`ServerAddr`]).
#[derive(Clone, Debug)]
pub struct ProcessConfig {
    /// Acceptor/worker threads; `workers = 0` in the file resolves to the CPU count.
    pub workers: NonZeroUsize,
    /// Sessions open at once across all listeners; over it new connections are closed at once.
    pub max_connections: usize,
    /// How long open sessions may run after SIGTERM before they are closed.
    pub shutdown_grace: Duration,
    /// The window over which goodbyes to remaining sessions are spread at the end of the
    /// grace (`server.drain_spread`, default 5s, must not exceed `shutdown_grace`).
    pub drain_spread: Duration,
    /// Drop to this user after binding.
    pub user: Option<String>,
    /// Drop to this group after binding (default: the user's primary group).
    pub group: Option<String>,
    /// Where the self-signed certificate is kept. When the file does not set it:
    /// `$STATE_DIRECTORY`, else `/var/lib/postern`, else `$XDG_STATE_HOME/postern`.
    pub state_dir: PathBuf,
}

/// `[admin]`
#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// Address of the admin HTTP endpoint (`/metrics`, `/healthz`, `/readyz`).
    pub listen: SocketAddr,
}

/// `[log]`
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter directive such as `info` or `postern=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable `key=value` lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// One `[[listener]]`.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// Label on every metric and log line of this listener.
    pub name: String,
    /// The protocol spoken.
    pub protocol: Protocol,
    /// Implicit TLS or STARTTLS.
    pub tls: TlsMode,
    /// Addresses to bind (each gets `server.workers` SO_REUSEPORT sockets).
    pub listen: Vec<SocketAddr>,
    /// Index into [`Config::backends`] (validated to exist).
    pub backend: usize,
    /// No bytes either way for this long closes the session.
    pub idle_timeout: Duration,
    /// Deadline for the whole plaintext phase of a STARTTLS listener, greeting to STARTTLS
    /// (`plaintext_timeout`, default 60s).
    pub plaintext_timeout: Duration,
    /// Longest command line accepted before TLS / before authentication
    /// (`max_line_length`, default 4096 bytes).
    pub max_line_length: usize,
    /// Commands accepted before STARTTLS before the client is disconnected
    /// (`max_plaintext_commands`, default 20).
    pub max_plaintext_commands: usize,
    /// `allow`: when not empty, only clients in these networks are served.
    pub allow: NetworkSet,
    /// `deny`: clients in these networks are refused; deny wins over allow.
    pub deny: NetworkSet,
    /// `proxy_protocol` and `proxy_from`; `None` for `proxy_protocol = "none"`.
    pub proxy: Option<ProxyConfig>,
}

impl ListenerConfig {
    /// Whether `allow`/`deny` let `client` in: not in `deny`, and in `allow` when `allow`
    /// is not empty. `client` is the real client address (from the PROXY header when the
    /// listener takes one). IPv4-mapped IPv6 addresses match IPv4 networks.
    pub fn admits(&self, client: IpAddr) -> bool {
        !self.deny.contains(client) && (self.allow.is_empty() || self.allow.contains(client))
    }
}

/// A listener's PROXY protocol settings (`proxy_protocol` other than `none`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Which header versions are accepted.
    pub version: ProxyVersion,
    /// `proxy_from`: the peers (load balancers) that may send the header; never empty.
    /// A connection from any other peer is refused (reason `proxy`).
    pub from: NetworkSet,
}

/// The PROXY protocol versions a listener accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyVersion {
    /// Only the text header (`PROXY TCP4 ...\r\n`).
    V1,
    /// Only the binary header.
    V2,
    /// Either, told apart by the first bytes.
    Any,
}
