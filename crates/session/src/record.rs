//! The session record: what one session leaves behind, and the one place that turns it into
//! the `session ended` log line (docs/metrics.md) and the session metrics.

use std::net::SocketAddr;
use std::time::Duration;

use crate::client_tls::ClientTls;
use postern_metrics::{ListenerMetrics, SessionOutcome};
use tracing::info;

use crate::relay::Totals;

/// How a session ended and what it learned on the way. A field stays empty when the session
/// ended before the step that learns it (no `tls` before the handshake, no `backend` before
/// a server answered).
#[derive(Debug)]
pub(crate) struct SessionRecord {
    pub(crate) outcome: SessionOutcome,
    pub(crate) tls: Option<TlsFacts>,
    /// The server the session was relayed to.
    pub(crate) backend: Option<String>,
    /// The login name the backend confirmed (as the login guard read it).
    pub(crate) user: Option<String>,
    pub(crate) totals: Totals,
}

/// What the TLS handshake settled.
#[derive(Debug, Default)]
pub(crate) struct TlsFacts {
    /// `TLSv1.3`, `TLSv1.2` (or `other`).
    pub(crate) version: Option<&'static str>,
    /// The server name the client asked for.
    pub(crate) sni: Option<String>,
}

impl TlsFacts {
    pub(crate) fn of<S>(conn: &ClientTls<S>) -> Self {
        TlsFacts {
            version: conn.protocol_version().map(version_name),
            sni: conn.server_name().map(str::to_owned),
        }
    }
}

impl SessionRecord {
    /// The record of a session that ended with `outcome` before learning anything.
    pub(crate) fn ended(outcome: SessionOutcome) -> Self {
        SessionRecord {
            outcome,
            tls: None,
            backend: None,
            user: None,
            totals: Totals::default(),
        }
    }

    /// Observes the duration, counts the outcome and writes the `session ended` line.
    pub(crate) fn report(
        &self,
        listener: &str,
        peer: SocketAddr,
        duration: Duration,
        metrics: &ListenerMetrics,
    ) {
        metrics.session_duration.observe(duration.as_secs_f64());
        metrics.session_outcome(self.outcome);
        let tls = self.tls.as_ref();
        info!(
            listener = %listener,
            peer = %peer,
            user = self.user.as_deref().unwrap_or(""),
            backend = self.backend.as_deref().unwrap_or(""),
            duration = (duration.as_millis() as f64) / 1000.0,
            bytes_up = self.totals.up,
            bytes_down = self.totals.down,
            tls = tls.and_then(|t| t.version).unwrap_or(""),
            sni = tls.and_then(|t| t.sni.as_deref()).unwrap_or(""),
            outcome = self.outcome.as_str(),
            "session ended"
        );
    }
}

fn version_name(v: rustls::ProtocolVersion) -> &'static str {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "other",
    }
}
