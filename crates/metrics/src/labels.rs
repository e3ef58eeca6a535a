//! The closed sets of label values that code (not configuration) chooses: one enum per label,
//! so a misspelt value does not compile and the label set cannot grow at run time. Each enum
//! lists its variants in `ALL`, in discriminant order, which is the index into the counters
//! pre-resolved in [`crate::ListenerMetrics`].

use std::fmt;

/// Why a client TLS handshake failed; the label value of
/// `postern_tls_handshake_failures_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// ALPN offered without the listener's protocol (`no_application_protocol`).
    Alpn,
    /// The client closed the connection during the handshake.
    Eof,
    /// Another I/O error during the handshake.
    Io,
    /// No certificate could be selected for the client's SNI.
    NoCert,
    /// The client sent something that is not valid TLS, or TLS we refuse.
    Protocol,
    /// The handshake did not finish within `tls.handshake_timeout`.
    Timeout,
}

impl HandshakeFailure {
    /// Every variant, in discriminant order (the index into the pre-resolved counters).
    pub const ALL: [HandshakeFailure; 6] = [
        HandshakeFailure::Alpn,
        HandshakeFailure::Eof,
        HandshakeFailure::Io,
        HandshakeFailure::NoCert,
        HandshakeFailure::Protocol,
        HandshakeFailure::Timeout,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Alpn => "alpn",
            HandshakeFailure::Eof => "eof",
            HandshakeFailure::Io => "io",
            HandshakeFailure::NoCert => "no_cert",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Timeout => "timeout",
        }
    }
}

/// Why a connection was refused before it became a session; the label value of
/// `postern_connections_rejected_total{reason}` (ARCHITECTURE.md, docs/metrics.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Over `server.max_connections`.
    Limit,
    /// The gateway is draining.
    Shutdown,
    /// Over `limits.per_ip_connections` for the client's address.
    PerIp,
    /// Over `limits.per_ip_rate` for the client's address.
    Rate,
    /// Over `limits.max_prelogin`.
    Prelogin,
    /// The client's address is blocked after `limits.auth_failures` failed logins.
    AuthFailures,
    /// The client's address is in the listener's `deny` or outside its `allow`.
    Denied,
    /// PROXY protocol: a peer not in `proxy_from`, or no valid header in time.
    Proxy,
}

impl RejectReason {
    /// Every variant, in discriminant order (the index into the pre-resolved counters).
    pub const ALL: [RejectReason; 8] = [
        RejectReason::Limit,
        RejectReason::Shutdown,
        RejectReason::PerIp,
        RejectReason::Rate,
        RejectReason::Prelogin,
        RejectReason::AuthFailures,
        RejectReason::Denied,
        RejectReason::Proxy,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Limit => "limit",
            RejectReason::Shutdown => "shutdown",
            RejectReason::PerIp => "per_ip",
            RejectReason::Rate => "rate",
            RejectReason::Prelogin => "prelogin",
            RejectReason::AuthFailures => "auth_failures",
            RejectReason::Denied => "denied",
            RejectReason::Proxy => "proxy",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a client session ended: the `outcome` field of the `session ended` log line and the
/// `outcome` label of `postern_sessions_total`. The session crate decides it, this crate
/// owns it (the label set must be known when a listener's handles are resolved, and
/// metrics depends on no other postern crate).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionOutcome {
    /// Both sides closed (a normal end, also a reset after either side's goodbye).
    Closed,
    /// No byte either way for `idle_timeout` (or the linger after one side closed).
    IdleTimeout,
    /// No backend server could be reached; the client got the protocol's goodbye.
    BackendUnavailable,
    /// The TLS handshake with the client failed or timed out.
    TlsError,
    /// Reading from or writing to the client failed.
    ClientError,
    /// The backend connection failed mid-session.
    BackendError,
    /// The drain asked the session to leave and it did.
    Shutdown,
    /// A STARTTLS client did not upgrade within `plaintext_timeout`.
    PlaintextTimeout,
    /// The client had not logged in within `limits.prelogin_timeout` of its accept.
    PreloginTimeout,
    /// Reserved for a client that broke the protocol; no code path produces it yet.
    ProtocolError,
    /// Reserved for a session refused by a limit; no code path produces it yet (connections
    /// over `max_connections` never become sessions: see `connections_rejected_total`).
    Limit,
}

impl SessionOutcome {
    /// Every variant, in discriminant order (the index into the pre-resolved counters).
    pub const ALL: [SessionOutcome; 11] = [
        SessionOutcome::Closed,
        SessionOutcome::IdleTimeout,
        SessionOutcome::BackendUnavailable,
        SessionOutcome::TlsError,
        SessionOutcome::ClientError,
        SessionOutcome::BackendError,
        SessionOutcome::Shutdown,
        SessionOutcome::PlaintextTimeout,
        SessionOutcome::PreloginTimeout,
        SessionOutcome::ProtocolError,
        SessionOutcome::Limit,
    ];

    /// The log field and label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionOutcome::Closed => "closed",
            SessionOutcome::IdleTimeout => "idle_timeout",
            SessionOutcome::BackendUnavailable => "backend_unavailable",
            SessionOutcome::TlsError => "tls_error",
            SessionOutcome::ClientError => "client_error",
            SessionOutcome::BackendError => "backend_error",
            SessionOutcome::Shutdown => "shutdown",
            SessionOutcome::PlaintextTimeout => "plaintext_timeout",
            SessionOutcome::PreloginTimeout => "prelogin_timeout",
            SessionOutcome::ProtocolError => "protocol_error",
            SessionOutcome::Limit => "limit",
        }
    }
}

impl fmt::Display for SessionOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
