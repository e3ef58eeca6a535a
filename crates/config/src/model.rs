//! The validated configuration: what the rest of postern consumes.
//!
//! Every value here has passed validation; defaults are already applied. Runtime crates
//! receive these types and never see TOML.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

pub use postern_proto::Protocol;

/// The whole validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where this configuration came from (a file, or the embedded default).
    pub source: ConfigSource,
    /// `[server]`
    pub server: ServerConfig,
    /// `[admin]`
    pub admin: AdminConfig,
    /// `[log]`
    pub log: LogConfig,
    /// `[tls]`
    pub tls: TlsConfig,
    /// `[[listener]]`, in file order. Names are unique.
    pub listeners: Vec<ListenerConfig>,
    /// `[[backend]]`, in file order. Names are unique.
    pub backends: Vec<BackendConfig>,
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

/// `[server]`
#[derive(Clone, Debug)]
pub struct ServerConfig {
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

/// `[tls]`
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// Lowest TLS version accepted.
    pub min_version: TlsVersion,
    /// Deadline for the TLS handshake.
    pub handshake_timeout: Duration,
    /// What to do with a private key readable or writable by group/others.
    pub key_permissions: KeyPermissions,
    /// Reload certificates when their files change.
    pub watch: bool,
    /// `[[tls.certificate]]`; empty means "generate a self-signed certificate in state_dir".
    /// The first entry is the default for clients that send no (or an unknown) SNI name.
    pub certificates: Vec<CertificateConfig>,
}

/// Lowest accepted TLS version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

/// Key file permission policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyPermissions {
    /// Log one warning naming the file, its mode and the fix.
    Warn,
    /// Refuse the key (at start: exit; on reload: keep the old one).
    Strict,
}

/// One `[[tls.certificate]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateConfig {
    /// PEM chain, leaf first; may also hold the key (stunnel-style combined file).
    pub cert: PathBuf,
    /// PEM private key; `None` when `cert` holds the key.
    pub key: Option<PathBuf>,
}

/// How TLS starts on a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS from the first byte (993, 995, 465).
    Implicit,
    /// Plaintext greeting, then STARTTLS / STLS (143, 110, 587).
    Starttls,
}

impl TlsMode {
    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            TlsMode::Implicit => "implicit",
            TlsMode::Starttls => "starttls",
        }
    }
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
}

/// One `[[backend]]`.
#[derive(Clone, Debug)]
pub struct BackendConfig {
    /// Name used by listeners and as the `backend` metric label.
    pub name: String,
    /// The protocol of the listeners that use it (all of them must agree; validated).
    /// `None` when no listener uses this backend.
    pub protocol: Option<Protocol>,
    /// Where sessions go.
    pub target: BackendTarget,
    /// Server selection.
    pub balance: Balance,
    /// How the backend learns the client's address.
    pub forward_client: ForwardClient,
    /// Deadline for connect + greeting (+ forwarding exchange) to one server.
    pub connect_timeout: Duration,
    /// `[backend.health]`
    pub health: HealthConfig,
    /// Sessions one server may hold at once; 0 = unlimited (`max_connections_per_server`).
    pub max_connections_per_server: usize,
    /// Pre-connected, pre-greeted spare connections kept per server (`warm`, default 0).
    pub warm: usize,
}

/// Where a backend's sessions go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendTarget {
    /// Network or unix-socket servers (at least one).
    Servers(Vec<ServerAddr>),
    /// inetd style: run this program per session, the session on its stdin/stdout.
    Exec {
        /// argv; `argv[0]` is an absolute path.
        argv: Vec<String>,
        /// Children running at once (`max_children`, default 1000).
        max_children: usize,
    },
}

/// One backend server address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ServerAddr {
    /// `host:port`; `host` is an IP literal or a DNS name resolved at connect time.
    Tcp {
        /// Host name or IP literal (IPv6 without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// `unix:/path`
    Unix(PathBuf),
}

impl fmt::Display for ServerAddr {
    /// The config spelling, also used as the `server` metric label.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            ServerAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            ServerAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Server selection policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    /// The healthy server with the fewest open sessions.
    LeastConnections,
    /// Healthy servers in turn.
    RoundRobin,
    /// A consistent hash of the client IP address.
    ClientHash,
}

/// How the backend learns the client's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardClient {
    /// Not at all.
    None,
    /// PROXY protocol v1 header first on the connection.
    ProxyV1,
    /// PROXY protocol v2 header first on the connection.
    ProxyV2,
    /// IMAP `ID` with x-originating-*, POP3/SMTP `XCLIENT`, after the greeting.
    Protocol,
}

/// `[backend.health]`
#[derive(Clone, Copy, Debug)]
pub struct HealthConfig {
    /// Time between probes of one server.
    pub interval: Duration,
    /// Deadline for one probe (connect + greeting).
    pub timeout: Duration,
    /// Consecutive failures that mark a server down (`fall`, default 3).
    pub fall: u32,
    /// Consecutive successes that bring it back (`rise`, default 2).
    pub rise: u32,
}
