//! Pre-resolved metric handles handed to listeners, sessions, the backend pool and the TLS
//! store. Resolving labels happens here, once; updating a handle is one atomic operation.

use std::sync::Arc;

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

use crate::Families;

/// Per-listener handles; every series carries `listener="<name>"`.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    /// `postern_connections_accepted_total{listener}`
    pub accepted: IntCounter,
    /// `postern_connections_active{listener}`
    pub active: IntGauge,
    /// `postern_connections_rejected_total{listener,reason="limit"}`
    pub rejected_limit: IntCounter,
    /// `postern_connections_rejected_total{listener,reason="shutdown"}`
    pub rejected_shutdown: IntCounter,
    /// `postern_tls_handshake_duration_seconds{listener}`, successful handshakes only.
    pub handshake_duration: Histogram,
    /// `postern_session_duration_seconds{listener}`
    pub session_duration: Histogram,
    /// `postern_bytes_total{listener,direction="client_to_backend"}`
    pub bytes_client_to_backend: IntCounter,
    /// `postern_bytes_total{listener,direction="backend_to_client"}`
    pub bytes_backend_to_client: IntCounter,
    /// `postern_starttls_discarded_bytes_total{listener}` (extra)
    pub starttls_discarded_bytes: IntCounter,
    /// `postern_accept_errors_total{listener}` (extra)
    pub accept_errors: IntCounter,
    // Shared between clones: one allocation per listener, not per session.
    handshake_failures: Arc<[IntCounter; HandshakeFailure::ALL.len()]>,
    outcomes: Arc<[IntCounter; SESSION_OUTCOMES.len()]>,
    outcome_other: IntCounter,
}

impl ListenerMetrics {
    /// Counts one failed handshake in
    /// `postern_tls_handshake_failures_total{listener,reason}`.
    pub fn handshake_failure(&self, reason: HandshakeFailure) {
        self.handshake_failures[reason as usize].inc();
    }

    /// Counts one ended session in `postern_sessions_total{listener,outcome}` (extra).
    /// Outcomes outside [`SESSION_OUTCOMES`] are counted as `other`, so a new outcome string
    /// cannot grow the label set.
    pub fn session_outcome(&self, outcome: &'static str) {
        match SESSION_OUTCOMES.iter().position(|known| *known == outcome) {
            Some(i) => self.outcomes[i].inc(),
            None => self.outcome_other.inc(),
        }
    }
}

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

/// The closed set of `outcome` label values of `postern_sessions_total`; anything else is
/// counted as `other`. Matches SPEC §5's `outcome` log field vocabulary.
pub const SESSION_OUTCOMES: [&str; 10] = [
    "closed",
    "idle_timeout",
    "backend_unavailable",
    "tls_error",
    "client_error",
    "backend_error",
    "shutdown",
    "plaintext_timeout",
    "protocol_error",
    "limit",
];

/// Handles for one server of one backend; series carry `backend` and `server`.
#[derive(Clone, Debug)]
pub struct ServerMetrics {
    /// `postern_backend_connect_duration_seconds{backend,server}`, successful connects.
    pub connect_duration: Histogram,
    /// `postern_backend_connect_failures_total{backend,server}`
    pub connect_failures: IntCounter,
    /// `postern_backend_up{backend,server}`: 1 healthy, 0 down.
    pub up: IntGauge,
    /// `postern_backend_connections_active{backend,server}` (extra)
    pub active: IntGauge,
}

/// Certificate metrics. Not on the hot path: labels are resolved per call.
#[derive(Clone, Debug)]
pub struct TlsMetrics {
    expiry: prometheus::IntGaugeVec,
    reloads_ok: IntCounter,
    reloads_error: IntCounter,
}

impl TlsMetrics {
    /// Sets `postern_certificate_expiry_timestamp_seconds{name}` to the certificate's notAfter.
    pub fn set_expiry(&self, name: &str, not_after_unix: i64) {
        self.expiry.with_label_values(&[name]).set(not_after_unix);
    }

    /// Drops the expiry series of a certificate that is no longer loaded, so a removed
    /// certificate does not keep firing expiry alerts.
    pub fn remove_expiry(&self, name: &str) {
        // An unknown name is not an error worth reporting: the series is already absent.
        let _ = self.expiry.remove_label_values(&[name]);
    }

    /// Counts `postern_certificate_reloads_total{result="ok"}`.
    pub fn reload_ok(&self) {
        self.reloads_ok.inc();
    }

    /// Counts `postern_certificate_reloads_total{result="error"}`.
    pub fn reload_error(&self) {
        self.reloads_error.inc();
    }
}

pub(crate) fn listener(f: &Families, name: &str) -> ListenerMetrics {
    let by_reason = |vec: &IntCounterVec, reason: &str| vec.with_label_values(&[name, reason]);
    ListenerMetrics {
        accepted: f.accepted.with_label_values(&[name]),
        active: f.active.with_label_values(&[name]),
        rejected_limit: by_reason(&f.rejected, "limit"),
        rejected_shutdown: by_reason(&f.rejected, "shutdown"),
        handshake_duration: f.handshake_duration.with_label_values(&[name]),
        session_duration: f.session_duration.with_label_values(&[name]),
        bytes_client_to_backend: by_reason(&f.bytes, "client_to_backend"),
        bytes_backend_to_client: by_reason(&f.bytes, "backend_to_client"),
        starttls_discarded_bytes: f.starttls_discarded.with_label_values(&[name]),
        accept_errors: f.accept_errors.with_label_values(&[name]),
        handshake_failures: Arc::new(
            HandshakeFailure::ALL.map(|r| by_reason(&f.handshake_failures, r.as_str())),
        ),
        outcomes: Arc::new(SESSION_OUTCOMES.map(|o| by_reason(&f.sessions, o))),
        outcome_other: by_reason(&f.sessions, "other"),
    }
}

pub(crate) fn server(f: &Families, backend: &str, server: &str) -> ServerMetrics {
    let labels = [backend, server];
    ServerMetrics {
        connect_duration: f.backend_connect_duration.with_label_values(&labels),
        connect_failures: f.backend_connect_failures.with_label_values(&labels),
        up: f.backend_up.with_label_values(&labels),
        active: f.backend_active.with_label_values(&labels),
    }
}

pub(crate) fn tls(f: &Families) -> TlsMetrics {
    TlsMetrics {
        expiry: f.cert_expiry.clone(),
        reloads_ok: f.cert_reloads.with_label_values(&["ok"]),
        reloads_error: f.cert_reloads.with_label_values(&["error"]),
    }
}
