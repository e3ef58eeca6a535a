//! postern's Prometheus metrics and the admin HTTP endpoint.
//!
//! Purpose: register every metric family of docs/metrics.md (the contract plus a few extras, see
//! [`names`]) in one explicit [`prometheus::Registry`] owned by [`Metrics`], hand out
//! pre-resolved per-listener / per-server handles, encode the text exposition, and serve
//! `/metrics`, `/healthz` and `/readyz` ([`serve_admin`]).
//!
//! Must not depend on: any other postern crate, rustls, the config model. Callers pass plain
//! names (listener, backend, server, certificate) which become label values.
//!
//! Invariants:
//! - No global state: no default registry, no statics; a `Metrics` value is passed around.
//! - Hot path is lock- and allocation-free: every handle in [`ListenerMetrics`] and
//!   [`ServerMetrics`] is resolved with `with_label_values` once, at construction, and
//!   updating it is an atomic operation. Label values come from configured names or closed
//!   sets (the enums of [`labels`]: [`HandshakeFailure`], [`SessionOutcome`]), never from
//!   client input.
//! - Names follow `postern_<subsystem>_<thing>_<unit>`: counters end `_total`, histograms
//!   `_seconds`; every family has help text (checked by the backstop test).

pub mod admin;
pub mod buckets;
mod error_chain;
mod file_version;
mod handles;
pub mod labels;
pub mod names;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub use admin::serve_admin;
pub use error_chain::ErrorChain;
pub use file_version::FileVersion;
pub use handles::{ListenerMetrics, ServerMetrics, TlsMetrics, SERVER_STATES};
pub use labels::{HandshakeFailure, RejectReason, SessionOutcome};
pub use prometheus::{Histogram, IntCounter, IntGauge};

/// All of postern's metric families, registered in one registry. Cheap to clone (every
/// field is an `Arc` inside).
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    f: Families,
}

#[derive(Clone, Debug)]
struct Families {
    accepted: IntCounterVec,
    active: IntGaugeVec,
    rejected: IntCounterVec,
    handshake_duration: HistogramVec,
    handshake_failures: IntCounterVec,
    backend_connect_duration: HistogramVec,
    backend_connect_failures: IntCounterVec,
    backend_up: IntGaugeVec,
    backend_active: IntGaugeVec,
    backend_users: IntGaugeVec,
    backend_state: IntGaugeVec,
    session_duration: HistogramVec,
    bytes: IntCounterVec,
    cert_expiry: IntGaugeVec,
    cert_reloads: IntCounterVec,
    config_reloads: IntCounterVec,
    starttls_discarded: IntCounterVec,
    accept_errors: IntCounterVec,
    sessions: IntCounterVec,
    logins: IntCounterVec,
    max_connections: IntGauge,
}

impl Metrics {
    /// Builds a fresh registry with every family registered and
    /// `postern_build_info{version}` set to 1.
    pub fn new(version: &str) -> Self {
        let registry = Registry::new();
        let r = &registry;
        let f = Families {
            accepted: counter(r, names::CONNECTIONS_ACCEPTED_TOTAL, "TCP connections accepted.", &["listener"]),
            active: gauge(r, names::CONNECTIONS_ACTIVE, "Client connections currently open.", &["listener"]),
            rejected: counter(
                r,
                names::CONNECTIONS_REJECTED_TOTAL,
                "Connections refused after accept, before they became sessions, by reason (limit: over max_connections; shutdown: draining; per_ip, rate, prelogin, auth_failures: [limits]; denied: allow/deny; proxy: PROXY protocol).",
                &["listener", "reason"],
            ),
            handshake_duration: histogram(
                r,
                names::TLS_HANDSHAKE_DURATION_SECONDS,
                "Duration of successful TLS handshakes with clients.",
                &["listener"],
                buckets::FAST_SECONDS,
            ),
            handshake_failures: counter(
                r,
                names::TLS_HANDSHAKE_FAILURES_TOTAL,
                "Failed TLS handshakes with clients, by reason.",
                &["listener", "reason"],
            ),
            backend_connect_duration: histogram(
                r,
                names::BACKEND_CONNECT_DURATION_SECONDS,
                "Duration of successful connects to backend servers.",
                &["backend", "server"],
                buckets::FAST_SECONDS,
            ),
            backend_connect_failures: counter(
                r,
                names::BACKEND_CONNECT_FAILURES_TOTAL,
                "Failed or timed-out connects to backend servers.",
                &["backend", "server"],
            ),
            backend_up: gauge(r, names::BACKEND_UP, "1 if the backend server passed its last health check, else 0.", &["backend", "server"]),
            backend_active: gauge(
                r,
                names::BACKEND_CONNECTIONS_ACTIVE,
                "Sessions currently relayed to the backend server.",
                &["backend", "server"],
            ),
            backend_users: gauge(
                r,
                names::BACKEND_USERS,
                "route = \"user\" backends: distinct users with sessions through this instance on the server.",
                &["backend", "server"],
            ),
            backend_state: gauge(
                r,
                names::BACKEND_SERVER_STATE,
                "1 for the state the server is in (online, standby, offline; postern ctl server), 0 for the others.",
                &["backend", "server", "state"],
            ),
            session_duration: histogram(
                r,
                names::SESSION_DURATION_SECONDS,
                "Duration of client sessions, from accept to close.",
                &["listener"],
                buckets::SESSION_SECONDS,
            ),
            bytes: counter(r, names::BYTES_TOTAL, "Bytes relayed between clients and backends, by direction.", &["listener", "direction"]),
            cert_expiry: gauge(
                r,
                names::CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS,
                "notAfter of the loaded certificate as a Unix timestamp, by certificate name (first SAN).",
                &["name"],
            ),
            cert_reloads: counter(r, names::CERTIFICATE_RELOADS_TOTAL, "Certificate reload attempts, by result.", &["result"]),
            config_reloads: counter(
                r,
                names::CONFIG_RELOADS_TOTAL,
                "Configuration reloads (SIGHUP or a change of the file), by result (error: the old configuration stays).",
                &["result"],
            ),
            starttls_discarded: counter(
                r,
                names::STARTTLS_DISCARDED_BYTES_TOTAL,
                "Plaintext bytes a client sent after STARTTLS and before the handshake, discarded.",
                &["listener"],
            ),
            accept_errors: counter(r, names::ACCEPT_ERRORS_TOTAL, "Errors returned by accept() on the listening sockets.", &["listener"]),
            sessions: counter(r, names::SESSIONS_TOTAL, "Ended client sessions, by outcome.", &["listener", "outcome"]),
            logins: counter(
                r,
                names::LOGINS_TOTAL,
                "Login attempts the backend answered, by result (ok: accepted; failed: refused).",
                &["listener", "result"],
            ),
            max_connections: plain_gauge(r, names::CONNECTIONS_MAX, "Configured server.max_connections (0 until set)."),
        };
        let build_info = gauge(
            r,
            names::BUILD_INFO,
            "Always 1; the version label carries postern's version.",
            &["version"],
        );
        build_info.with_label_values(&[version]).set(1);
        // Both reload results exist from the start so `increase()` sees the first error.
        for result in ["ok", "error"] {
            f.cert_reloads.with_label_values(&[result]);
            f.config_reloads.with_label_values(&[result]);
        }
        Self { registry, f }
    }

    /// Pre-resolved handles for one listener; call once per listener and clone into sessions.
    pub fn listener(&self, name: &str) -> ListenerMetrics {
        handles::listener(&self.f, name)
    }

    /// Pre-resolved handles for one server of a backend.
    pub fn server(&self, backend: &str, server: &str) -> ServerMetrics {
        handles::server(&self.f, backend, server)
    }

    /// Removes every series of one backend server (a DNS-discovered address that left its
    /// pool and has no session left), so that addresses coming and going do not pile up.
    pub fn remove_server(&self, backend: &str, server: &str) {
        handles::remove_server(&self.f, backend, server);
    }

    /// Certificate expiry and reload metrics.
    pub fn tls(&self) -> TlsMetrics {
        handles::tls(&self.f)
    }

    /// Counts one configuration reload in `postern_config_reloads_total{result}`: `ok` when
    /// the new configuration was swapped in, `error` when the old one stays.
    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.f.config_reloads.with_label_values(&[result]).inc();
    }

    /// Exports `server.max_connections` as `postern_connections_max`, so alerts can compare
    /// the active connections against it.
    pub fn set_max_connections(&self, n: i64) {
        self.f.max_connections.set(n);
    }

    /// The registry in Prometheus text exposition format 0.0.4.
    pub fn encode(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        // TextEncoder only fails on a write error, and a Vec never fails to write; an
        // empty body is still a valid (if useless) exposition.
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(%error, "encoding metrics failed");
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// The underlying registry, for tests and for callers that gather families themselves.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// Content type of [`Metrics::encode`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

// The constructors below panic only on an invalid name/label or a duplicate registration,
// both fixed at compile time and covered by every test that calls `Metrics::new`.
#[allow(clippy::expect_used)]
fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("static metric definition is valid");
    r.register(Box::new(vec.clone()))
        .expect("each metric is registered once");
    vec
}

#[allow(clippy::expect_used)]
fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec =
        IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition is valid");
    r.register(Box::new(vec.clone()))
        .expect("each metric is registered once");
    vec
}

#[allow(clippy::expect_used)]
fn plain_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::with_opts(Opts::new(name, help)).expect("static metric definition is valid");
    r.register(Box::new(g.clone()))
        .expect("each metric is registered once");
    g
}

#[allow(clippy::expect_used)]
fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let vec = HistogramVec::new(opts, labels).expect("static metric definition is valid");
    r.register(Box::new(vec.clone()))
        .expect("each metric is registered once");
    vec
}

#[cfg(test)]
mod tests;
