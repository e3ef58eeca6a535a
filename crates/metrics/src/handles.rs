//! Pre-resolved metric handles handed to listeners, sessions, the backend pool and the TLS
//! store. Resolving labels happens here, once; updating a handle is one atomic operation.

use std::sync::Arc;

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

use crate::labels::{HandshakeFailure, RejectReason, SessionOutcome};
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
    /// `postern_logins_total{listener,result="ok"}`: logins the backend accepted.
    pub logins_ok: IntCounter,
    /// `postern_logins_total{listener,result="failed"}`: login attempts the backend refused.
    pub logins_failed: IntCounter,
    // Shared between clones: one allocation per listener, not per session.
    handshake_failures: Arc<[IntCounter; HandshakeFailure::ALL.len()]>,
    rejected: Arc<[IntCounter; RejectReason::ALL.len()]>,
    outcomes: Arc<[IntCounter; SessionOutcome::ALL.len()]>,
}

impl ListenerMetrics {
    /// Counts one failed handshake in
    /// `postern_tls_handshake_failures_total{listener,reason}`.
    pub fn handshake_failure(&self, reason: HandshakeFailure) {
        self.handshake_failures[reason as usize].inc();
    }

    /// Counts one refused connection in
    /// `postern_connections_rejected_total{listener,reason}`.
    pub fn rejected(&self, reason: RejectReason) {
        self.rejected[reason as usize].inc();
    }

    /// Counts one ended session in `postern_sessions_total{listener,outcome}` (extra).
    pub fn session_outcome(&self, outcome: SessionOutcome) {
        self.outcomes[outcome as usize].inc();
    }
}

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
    /// `postern_backend_users{backend,server}` (extra): distinct users with routed sessions.
    pub users: IntGauge,
    /// `postern_backend_server_state{backend,server,state}` (extra), in the order of
    /// [`SERVER_STATES`].
    states: Arc<[IntGauge; SERVER_STATES.len()]>,
}

/// The `state` label values of `postern_backend_server_state`.
pub const SERVER_STATES: [&str; 3] = ["online", "standby", "offline"];

impl ServerMetrics {
    /// Sets `postern_backend_server_state` to 1 for `state` (one of [`SERVER_STATES`]) and 0
    /// for the others.
    pub fn set_state(&self, state: &str) {
        for (name, gauge) in SERVER_STATES.iter().zip(self.states.iter()) {
            gauge.set(i64::from(*name == state));
        }
    }
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
        logins_ok: by_reason(&f.logins, "ok"),
        logins_failed: by_reason(&f.logins, "failed"),
        handshake_failures: Arc::new(
            HandshakeFailure::ALL.map(|r| by_reason(&f.handshake_failures, r.as_str())),
        ),
        rejected: Arc::new(RejectReason::ALL.map(|r| by_reason(&f.rejected, r.as_str()))),
        outcomes: Arc::new(SessionOutcome::ALL.map(|o| by_reason(&f.sessions, o.as_str()))),
    }
}

pub(crate) fn server(f: &Families, backend: &str, server: &str) -> ServerMetrics {
    let labels = [backend, server];
    ServerMetrics {
        connect_duration: f.backend_connect_duration.with_label_values(&labels),
        connect_failures: f.backend_connect_failures.with_label_values(&labels),
        up: f.backend_up.with_label_values(&labels),
        active: f.backend_active.with_label_values(&labels),
        users: f.backend_users.with_label_values(&labels),
        states: Arc::new(
            SERVER_STATES.map(|s| f.backend_state.with_label_values(&[backend, server, s])),
        ),
    }
}

pub(crate) fn remove_server(f: &Families, backend: &str, server: &str) {
    let labels = [backend, server];
    // An absent series is no error here: it was never touched, or already removed.
    let _ = f.backend_connect_duration.remove_label_values(&labels);
    let _ = f.backend_connect_failures.remove_label_values(&labels);
    let _ = f.backend_up.remove_label_values(&labels);
    let _ = f.backend_active.remove_label_values(&labels);
    let _ = f.backend_users.remove_label_values(&labels);
    for state in SERVER_STATES {
        let _ = f
            .backend_state
            .remove_label_values(&[backend, server, state]);
    }
}

pub(crate) fn tls(f: &Families) -> TlsMetrics {
    TlsMetrics {
        expiry: f.cert_expiry.clone(),
        reloads_ok: f.cert_reloads.with_label_values(&["ok"]),
        reloads_error: f.cert_reloads.with_label_values(&["error"]),
    }
}
