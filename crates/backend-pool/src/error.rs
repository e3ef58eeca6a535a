//! Errors of the pool: [`PoolError`] for a session that gets no backend, [`ServerError`]
//! for one failed attempt on one server (also logged, and the source of `PoolError`).

use std::io;
use std::time::Duration;

/// Why [`crate::Pool::connect`] could not hand out a backend connection. The session
/// answers every variant with the protocol's "unavailable" goodbye (ARCHITECTURE.md, Path of one session).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Every server is marked down by health checks.
    #[error("backend `{backend}`: all {servers} server(s) are marked down; check that they run and accept connections")]
    AllDown {
        /// The `[[backend]]` name.
        backend: String,
        /// How many servers the backend lists.
        servers: usize,
    },
    /// Every server that is up already holds `max_connections_per_server` sessions.
    #[error("backend `{backend}`: every server that is up holds max_connections_per_server = {limit} sessions; raise the limit or add servers")]
    AllFull {
        /// The `[[backend]]` name.
        backend: String,
        /// The configured per-server limit.
        limit: usize,
    },
    /// Servers were tried and none produced a usable connection (see the source for the last
    /// failure; each failure was also logged with its server).
    #[error("backend `{backend}`: no server could take the session ({tried} tried)")]
    NoServerAvailable {
        /// The `[[backend]]` name.
        backend: String,
        /// How many servers were tried.
        tried: usize,
        /// The failure of the last server tried.
        #[source]
        last_error: ServerError,
    },
    /// The failover budget (2 × `connect_timeout`) ran out before any server was tried.
    #[error("backend `{backend}`: no server answered within {after:?}")]
    Deadline {
        /// The `[[backend]]` name.
        backend: String,
        /// The budget that ran out.
        after: Duration,
    },
    /// `route = "user"`: the server placement chose is not (or no longer) in the pool.
    #[error("backend `{backend}`: server {server} is not one of its servers (the configuration changed?)")]
    ServerGone {
        /// The `[[backend]]` name.
        backend: String,
        /// The server label.
        server: String,
    },
    /// `route = "user"`: the server placement chose holds `max_connections_per_server`.
    #[error("backend `{backend}`: server {server} holds max_connections_per_server = {limit} sessions; raise the limit (a user's sessions cannot go to another server)")]
    ServerFull {
        /// The `[[backend]]` name.
        backend: String,
        /// The server label.
        server: String,
        /// The configured per-server limit.
        limit: usize,
    },
    /// `route = "user"`: the server placement chose failed (see the source).
    #[error("backend `{backend}`: the user's server failed")]
    ServerFailed {
        /// The `[[backend]]` name.
        backend: String,
        /// The failure.
        #[source]
        source: ServerError,
    },
    /// An exec backend already runs `max_children` children.
    #[error("backend `{backend}`: {max} exec children already running (max_children); raise max_children or lower the load")]
    TooManyChildren {
        /// The `[[backend]]` name.
        backend: String,
        /// The configured `max_children`.
        max: usize,
    },
    /// An exec backend's program could not be started.
    #[error(
        "backend `{backend}`: cannot start `{program}`; check that it exists and is executable"
    )]
    Spawn {
        /// The `[[backend]]` name.
        backend: String,
        /// The program (`argv[0]`).
        program: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl PoolError {
    /// A stable label for logs and metrics (closed set).
    pub fn reason(&self) -> &'static str {
        match self {
            PoolError::AllDown { .. } => "all_down",
            PoolError::AllFull { .. } => "all_full",
            PoolError::NoServerAvailable { .. } => "no_server_available",
            PoolError::Deadline { .. } => "deadline",
            PoolError::TooManyChildren { .. } => "too_many_children",
            PoolError::Spawn { .. } => "spawn",
            PoolError::ServerGone { .. } => "server_gone",
            PoolError::ServerFull { .. } => "server_full",
            PoolError::ServerFailed { .. } => "server_failed",
        }
    }
}

/// One failed attempt (session connect or health probe) on one server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The TCP or unix-socket connect failed (or the host name did not resolve).
    #[error("{server}: connect failed")]
    Connect {
        /// Server label (config spelling).
        server: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A stage did not finish in time.
    #[error("{server}: no {stage} within {after:?}")]
    Timeout {
        /// Server label (config spelling).
        server: String,
        /// `connect`, `greeting`, `forwarding reply`, ...
        stage: &'static str,
        /// The deadline that passed.
        after: Duration,
    },
    /// Reading or writing failed.
    #[error("{server}: I/O error during {stage}")]
    Io {
        /// Server label (config spelling).
        server: String,
        /// `PROXY header`, `greeting`, `forwarding command`, ...
        stage: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The server closed the connection early.
    #[error("{server}: connection closed during {stage}")]
    Closed {
        /// Server label (config spelling).
        server: String,
        /// The stage.
        stage: &'static str,
    },
    /// The server greeted with a refusal (`* BYE`, `-ERR`, `421`, ...).
    #[error("{server}: refused service: {line:?}")]
    Refused {
        /// Server label (config spelling).
        server: String,
        /// The refusal line (truncated, lossy UTF-8).
        line: String,
    },
    /// The bytes were not a greeting of the protocol (wrong service on that port?).
    #[error("{server}: not a {protocol} greeting: {start:?}; is this the right port?")]
    NotAGreeting {
        /// Server label (config spelling).
        server: String,
        /// The expected protocol.
        protocol: &'static str,
        /// The first bytes received (truncated, lossy UTF-8).
        start: String,
    },
    /// The backend refused or did not understand the client-address forwarding command.
    #[error("{server}: refused the client address forwarding command: {line:?}; add postern's address to the backend's trusted networks (Dovecot: login_trusted_networks)")]
    ForwardRefused {
        /// Server label (config spelling).
        server: String,
        /// The reply (truncated, lossy UTF-8).
        line: String,
    },
    /// The TLS handshake failed: the certificate did not verify (another CA, another
    /// name, expired) or the server does not speak TLS there.
    #[error("{server}: TLS handshake failed")]
    Tls {
        /// Server label (config spelling).
        server: String,
        /// rustls' error, wrapped by tokio-rustls (its message says which check failed).
        #[source]
        source: io::Error,
    },
    /// There is no name to verify the server's certificate against.
    #[error(
        "{server}: {name:?} is not a name a certificate can be verified against; set tls_name"
    )]
    TlsName {
        /// Server label (config spelling).
        server: String,
        /// The host that was to be verified.
        name: String,
    },
    /// `tls = "starttls"` and the server does not offer STARTTLS (STLS): it is not used
    /// in plaintext (rule B1).
    #[error(
        "{server}: does not offer {command}; tls = \"starttls\" never falls back to plaintext"
    )]
    StarttlsNotOffered {
        /// Server label (config spelling).
        server: String,
        /// `STARTTLS` or `STLS`.
        command: &'static str,
    },
    /// The server answered STARTTLS (STLS) with something other than its go-ahead, or
    /// greeted with PREAUTH (a session that would start authenticated in plaintext).
    #[error("{server}: STARTTLS refused: {line:?}")]
    StarttlsRefused {
        /// Server label (config spelling).
        server: String,
        /// The reply (truncated, lossy UTF-8).
        line: String,
    },
    /// After STARTTLS the server did not answer `CAPABILITY` over TLS.
    #[error("{server}: no capabilities over TLS after STARTTLS")]
    NoCapabilities {
        /// Server label (config spelling).
        server: String,
    },
    /// The PROXY header could not be encoded for these addresses.
    #[error("{server}: cannot encode the PROXY header")]
    ProxyHeader {
        /// Server label (config spelling).
        server: String,
        /// The encoder's error.
        #[source]
        source: proxy_header::Error,
    },
}

/// Why a pool could not be built from its configuration (TLS material that does not load).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `tls_ca` does not load.
    #[error("backend `{backend}`: tls_ca {} {what} ({detail}); point it at the PEM bundle of the CA that signed the servers' certificates", .path.display())]
    Ca {
        /// The `[[backend]]` name.
        backend: String,
        /// The `tls_ca` file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        what: &'static str,
        /// The reader's or parser's message.
        detail: String,
    },
    /// `tls_ca` is not set and the system has no usable root certificates.
    #[error("backend `{backend}`: no system root certificates found ({detail}); install the ca-certificates package or set tls_ca")]
    NoSystemRoots {
        /// The `[[backend]]` name.
        backend: String,
        /// What the loader reported.
        detail: String,
    },
    /// `tls_name` is not a name rustls can verify.
    #[error("backend `{backend}`: tls_name {name:?} is neither a DNS name nor an IP address")]
    TlsName {
        /// The `[[backend]]` name.
        backend: String,
        /// The configured name.
        name: String,
    },
    /// The TLS library refused the client configuration.
    #[error("backend `{backend}`: the TLS client configuration was refused")]
    TlsLibrary {
        /// The `[[backend]]` name.
        backend: String,
        /// rustls' error.
        #[source]
        source: rustls::Error,
    },
}

/// At most this much of a peer's line goes into an error message.
const MAX_QUOTED: usize = 120;

/// The first line of `bytes`, lossy and truncated, for error messages.
pub(crate) fn quote(bytes: &[u8]) -> String {
    let end = memchr_newline(bytes).unwrap_or(bytes.len()).min(MAX_QUOTED);
    String::from_utf8_lossy(&bytes[..end]).trim_end().to_owned()
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}
