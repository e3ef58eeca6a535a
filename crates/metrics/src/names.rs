//! Every public metric name in one place, so a reviewer sees the whole catalogue (docs/metrics.md
//! documents each). Changing one of these is a breaking change for dashboards and
//! alerts under `deploy/`.

// The contract: the families dashboards and alerts may rely on from the first release.
pub const CONNECTIONS_ACCEPTED_TOTAL: &str = "postern_connections_accepted_total";
pub const CONNECTIONS_ACTIVE: &str = "postern_connections_active";
pub const CONNECTIONS_REJECTED_TOTAL: &str = "postern_connections_rejected_total";
pub const TLS_HANDSHAKE_DURATION_SECONDS: &str = "postern_tls_handshake_duration_seconds";
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "postern_tls_handshake_failures_total";
pub const BACKEND_CONNECT_DURATION_SECONDS: &str = "postern_backend_connect_duration_seconds";
pub const BACKEND_CONNECT_FAILURES_TOTAL: &str = "postern_backend_connect_failures_total";
pub const BACKEND_UP: &str = "postern_backend_up";
pub const SESSION_DURATION_SECONDS: &str = "postern_session_duration_seconds";
pub const BYTES_TOTAL: &str = "postern_bytes_total";
pub const CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS: &str =
    "postern_certificate_expiry_timestamp_seconds";
pub const CERTIFICATE_RELOADS_TOTAL: &str = "postern_certificate_reloads_total";
pub const BUILD_INFO: &str = "postern_build_info";
pub const CONFIG_RELOADS_TOTAL: &str = "postern_config_reloads_total";
pub const LOGINS_TOTAL: &str = "postern_logins_total";

// Extras (added later; additive, may be used by deploy/).
pub const STARTTLS_DISCARDED_BYTES_TOTAL: &str = "postern_starttls_discarded_bytes_total";
pub const ACCEPT_ERRORS_TOTAL: &str = "postern_accept_errors_total";
pub const SESSIONS_TOTAL: &str = "postern_sessions_total";
pub const BACKEND_CONNECTIONS_ACTIVE: &str = "postern_backend_connections_active";
pub const CONNECTIONS_MAX: &str = "postern_connections_max";
pub const BACKEND_USERS: &str = "postern_backend_users";
pub const BACKEND_SERVER_STATE: &str = "postern_backend_server_state";

/// The names of the original contract.
pub const SPEC: &[&str] = &[
    CONNECTIONS_ACCEPTED_TOTAL,
    CONNECTIONS_ACTIVE,
    CONNECTIONS_REJECTED_TOTAL,
    TLS_HANDSHAKE_DURATION_SECONDS,
    TLS_HANDSHAKE_FAILURES_TOTAL,
    BACKEND_CONNECT_DURATION_SECONDS,
    BACKEND_CONNECT_FAILURES_TOTAL,
    BACKEND_UP,
    SESSION_DURATION_SECONDS,
    BYTES_TOTAL,
    CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS,
    CERTIFICATE_RELOADS_TOTAL,
    BUILD_INFO,
    CONFIG_RELOADS_TOTAL,
    LOGINS_TOTAL,
];

/// Families postern exports beyond the original contract.
pub const EXTRAS: &[&str] = &[
    STARTTLS_DISCARDED_BYTES_TOTAL,
    ACCEPT_ERRORS_TOTAL,
    SESSIONS_TOTAL,
    BACKEND_CONNECTIONS_ACTIVE,
    CONNECTIONS_MAX,
    BACKEND_USERS,
    BACKEND_SERVER_STATE,
];
