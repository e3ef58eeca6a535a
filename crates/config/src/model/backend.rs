//! `[[backend]]`: where sessions go, how servers are picked, reached and trusted.

use std::fmt;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use crate::{Protocol, TlsMode};

/// One `[[backend]]`. Equality tells a reload whether the backend's pool can stay as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    /// Name used by listeners and as the `backend` metric label.
    pub name: String,
    /// The protocol of the listeners that use it (every backend in [`crate::Config`] has
    /// at least one listener, and they all speak this protocol; validated). Health probes
    /// read this protocol's greeting.
    pub protocol: Protocol,
    /// Where sessions go.
    pub target: BackendTarget,
    /// Server selection for [`Route::Connection`] (with `route = "user"` placement is by
    /// user and `balance` must not be set).
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
    /// `tls`, `tls_ca`, `tls_name`: TLS from postern to the servers; `None` for
    /// `tls = "none"` (the default). Always `None` for exec backends.
    pub tls: Option<BackendTls>,
    /// Host names in `servers` are re-resolved this often (`resolve_interval`, default 30s);
    /// each address a name resolves to is a server of its own.
    pub resolve_interval: Duration,
    /// `route`: per connection (balance) or per user (placement by login name).
    pub route: Route,
}

/// TLS from postern to a backend's servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendTls {
    /// `implicit` (TLS from the first byte) or `starttls` (after the server's greeting).
    pub mode: TlsMode,
    /// `tls_ca`: PEM bundle that verifies the servers' certificates; `None` = the system
    /// roots. The file existed at validation.
    pub ca: Option<PathBuf>,
    /// `tls_name`: the name every server's certificate must carry; `None` = each server's
    /// own host (an IP literal is verified as an IP address). Always set when the backend
    /// has a `unix:` server, which has no host name.
    pub name: Option<String>,
}

/// How a backend picks the server for a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Each connection by itself, by [`BackendConfig::balance`].
    Connection,
    /// By login name: every session of one user reaches the same server.
    User(UserRoute),
}

/// `route = "user"` settings. Only for `servers` backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRoute {
    /// `user_map`: file of `user-or-@domain  host:port` lines, re-read on change; `None` =
    /// no pinned users. The file existed at validation; its lines are the router's to parse.
    pub user_map: Option<PathBuf>,
    /// `weights`: a server's share of users, for the servers given one; every other
    /// server weighs 1. Each key is one of the backend's `servers` (validated); a host name
    /// that resolves to several addresses gives each of them this weight.
    pub weights: Vec<(ServerAddr, NonZeroU32)>,
}

impl UserRoute {
    /// The weight of `server` (1 unless `weights` names it).
    pub fn weight(&self, server: &ServerAddr) -> NonZeroU32 {
        self.weights
            .iter()
            .find(|(s, _)| s == server)
            .map_or(NonZeroU32::MIN, |(_, w)| *w)
    }
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
