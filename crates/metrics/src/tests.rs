use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use prometheus::proto::MetricType;

use super::*;

/// Touches every handle once, so every family has at least one series in the output.
fn exercised() -> Metrics {
    let m = Metrics::new("0.1.0-test");
    m.set_max_connections(100_000);
    for name in ["imaps", "pop3s"] {
        let l = m.listener(name);
        l.accepted.inc();
        l.active.inc();
        l.rejected_limit.inc();
        l.rejected_shutdown.inc();
        l.handshake_duration.observe(0.0042);
        l.session_duration.observe(1234.5);
        l.bytes_client_to_backend.inc_by(10);
        l.bytes_backend_to_client.inc_by(20);
        l.starttls_discarded_bytes.inc_by(3);
        l.accept_errors.inc();
        l.logins_ok.inc();
        l.logins_failed.inc_by(2);
        for reason in HandshakeFailure::ALL {
            l.handshake_failure(reason);
        }
        // `limit` and `shutdown` were counted through their fields above.
        for reason in &RejectReason::ALL[2..] {
            l.rejected(*reason);
        }
        for outcome in SessionOutcome::ALL {
            l.session_outcome(outcome);
        }
    }
    let s = m.server("imap", "127.0.0.1:143");
    s.connect_duration.observe(0.0003);
    s.connect_failures.inc();
    s.up.set(1);
    s.active.inc();
    s.users.inc();
    s.set_state("online");
    let tls = m.tls();
    tls.set_expiry("mail.example.com", 1_800_000_000);
    tls.reload_ok();
    tls.reload_error();
    m
}

fn expected_labels() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        (names::CONNECTIONS_ACCEPTED_TOTAL, &["listener"][..]),
        (names::CONNECTIONS_ACTIVE, &["listener"][..]),
        (
            names::CONNECTIONS_REJECTED_TOTAL,
            &["listener", "reason"][..],
        ),
        (names::TLS_HANDSHAKE_DURATION_SECONDS, &["listener"][..]),
        (
            names::TLS_HANDSHAKE_FAILURES_TOTAL,
            &["listener", "reason"][..],
        ),
        (
            names::BACKEND_CONNECT_DURATION_SECONDS,
            &["backend", "server"][..],
        ),
        (
            names::BACKEND_CONNECT_FAILURES_TOTAL,
            &["backend", "server"][..],
        ),
        (names::BACKEND_UP, &["backend", "server"][..]),
        (names::SESSION_DURATION_SECONDS, &["listener"][..]),
        (names::BYTES_TOTAL, &["direction", "listener"][..]),
        (names::CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS, &["name"][..]),
        (names::CERTIFICATE_RELOADS_TOTAL, &["result"][..]),
        (names::CONFIG_RELOADS_TOTAL, &["result"][..]),
        (names::BUILD_INFO, &["version"][..]),
        (names::LOGINS_TOTAL, &["listener", "result"][..]),
        (names::STARTTLS_DISCARDED_BYTES_TOTAL, &["listener"][..]),
        (names::ACCEPT_ERRORS_TOTAL, &["listener"][..]),
        (names::SESSIONS_TOTAL, &["listener", "outcome"][..]),
        (
            names::BACKEND_CONNECTIONS_ACTIVE,
            &["backend", "server"][..],
        ),
        (names::CONNECTIONS_MAX, &[][..]),
        (names::BACKEND_USERS, &["backend", "server"][..]),
        (
            names::BACKEND_SERVER_STATE,
            &["backend", "server", "state"][..],
        ),
    ])
}

#[test]
fn every_family_follows_the_naming_conventions() {
    let families = exercised().registry().gather();
    let expected = expected_labels();
    for family in &families {
        let name = family.name();
        assert!(
            name.starts_with("postern_"),
            "{name}: missing postern_ prefix"
        );
        assert!(!family.help().is_empty(), "{name}: no help text");
        match family.get_field_type() {
            MetricType::COUNTER => {
                assert!(name.ends_with("_total"), "{name}: counter without _total")
            }
            MetricType::HISTOGRAM => assert!(
                name.ends_with("_seconds"),
                "{name}: histogram without _seconds"
            ),
            MetricType::GAUGE => assert!(
                !name.ends_with("_total"),
                "{name}: gauge named like a counter"
            ),
            other => panic!("{name}: unexpected metric type {other:?}"),
        }
        let want = expected
            .get(name)
            .unwrap_or_else(|| panic!("{name}: not in names::SPEC or names::EXTRAS"));
        for metric in family.get_metric() {
            let got: Vec<&str> = metric.get_label().iter().map(|l| l.name()).collect();
            assert_eq!(got, *want, "{name}: label set");
        }
    }
    let gathered: BTreeSet<&str> = families.iter().map(|f| f.name()).collect();
    let catalogue: BTreeSet<&str> = names::SPEC.iter().chain(names::EXTRAS).copied().collect();
    assert_eq!(
        gathered, catalogue,
        "gathered families differ from the names catalogue"
    );
    assert_eq!(
        catalogue,
        expected.keys().copied().collect(),
        "catalogue and label table disagree"
    );
}

#[test]
fn every_spec_name_is_present_in_the_text_output() {
    let text = exercised().encode();
    for name in names::SPEC {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing from:\n{text}"
        );
    }
    assert!(
        text.contains("postern_build_info{version=\"0.1.0-test\"} 1\n"),
        "{text}"
    );
}

#[test]
fn fresh_registry_already_exports_the_unlabelled_and_reload_series() {
    let text = Metrics::new("v").encode();
    assert!(
        text.contains("postern_certificate_reloads_total{result=\"error\"} 0\n"),
        "{text}"
    );
    assert!(
        text.contains("postern_certificate_reloads_total{result=\"ok\"} 0\n"),
        "{text}"
    );
    assert!(text.contains("postern_connections_max 0\n"), "{text}");
}

#[test]
fn both_login_results_exist_once_a_listener_is_resolved() {
    // So `increase(postern_logins_total{result="failed"}[5m])` sees the first failure.
    let m = Metrics::new("v");
    let _ = m.listener("imaps");
    let text = m.encode();
    for result in ["ok", "failed"] {
        let line = format!("postern_logins_total{{listener=\"imaps\",result=\"{result}\"}} 0\n");
        assert!(text.contains(&line), "{text}");
    }
}

#[test]
fn handles_update_the_series_they_name() {
    let m = exercised();
    let text = m.encode();
    for line in [
        "postern_connections_accepted_total{listener=\"imaps\"} 1",
        "postern_connections_rejected_total{listener=\"imaps\",reason=\"limit\"} 1",
        "postern_connections_rejected_total{listener=\"imaps\",reason=\"shutdown\"} 1",
        "postern_connections_rejected_total{listener=\"imaps\",reason=\"proxy\"} 1",
        "postern_bytes_total{direction=\"client_to_backend\",listener=\"imaps\"} 10",
        "postern_bytes_total{direction=\"backend_to_client\",listener=\"imaps\"} 20",
        "postern_tls_handshake_failures_total{listener=\"imaps\",reason=\"no_cert\"} 1",
        "postern_tls_handshake_failures_total{listener=\"imaps\",reason=\"timeout\"} 1",
        "postern_sessions_total{listener=\"imaps\",outcome=\"idle_timeout\"} 1",
        "postern_logins_total{listener=\"imaps\",result=\"ok\"} 1",
        "postern_logins_total{listener=\"imaps\",result=\"failed\"} 2",
        "postern_tls_handshake_duration_seconds_bucket{listener=\"imaps\",le=\"0.005\"} 1",
        "postern_tls_handshake_duration_seconds_bucket{listener=\"imaps\",le=\"0.0025\"} 0",
        "postern_session_duration_seconds_bucket{listener=\"imaps\",le=\"1800\"} 1",
        "postern_backend_connect_duration_seconds_count{backend=\"imap\",server=\"127.0.0.1:143\"} 1",
        "postern_backend_up{backend=\"imap\",server=\"127.0.0.1:143\"} 1",
        "postern_certificate_expiry_timestamp_seconds{name=\"mail.example.com\"} 1800000000",
        "postern_connections_max 100000",
    ] {
        assert!(text.contains(&format!("{line}\n")), "missing {line:?} in:\n{text}");
    }
    // The outcome label set is closed by the type: there is no catch-all series.
    assert!(!text.contains("outcome=\"other\""), "{text}");
    m.tls().remove_expiry("mail.example.com");
    assert!(!m.encode().contains("mail.example.com"));
}

#[test]
fn clones_share_the_same_series() {
    let m = Metrics::new("v");
    let a = m.listener("imaps");
    let b = a.clone();
    let c = m.listener("imaps");
    a.accepted.inc();
    b.accepted.inc();
    c.handshake_failure(HandshakeFailure::Alpn);
    b.handshake_failure(HandshakeFailure::Alpn);
    assert_eq!(c.accepted.get(), 2);
    let text = m.clone().encode();
    assert!(text
        .contains("postern_tls_handshake_failures_total{listener=\"imaps\",reason=\"alpn\"} 2\n"));
}

#[test]
fn handshake_failure_table_is_in_discriminant_order() {
    for (i, reason) in HandshakeFailure::ALL.into_iter().enumerate() {
        assert_eq!(reason as usize, i, "{reason:?}");
    }
    let labels: BTreeSet<&str> = HandshakeFailure::ALL.iter().map(|r| r.as_str()).collect();
    let want = BTreeSet::from(["timeout", "protocol", "no_cert", "alpn", "eof", "io"]);
    assert_eq!(labels, want);
}

#[test]
fn session_outcome_table_is_in_discriminant_order() {
    for (i, outcome) in SessionOutcome::ALL.into_iter().enumerate() {
        assert_eq!(outcome as usize, i, "{outcome:?}");
        assert_eq!(outcome.to_string(), outcome.as_str());
    }
    let labels: BTreeSet<&str> = SessionOutcome::ALL.iter().map(|o| o.as_str()).collect();
    assert_eq!(
        labels.len(),
        SessionOutcome::ALL.len(),
        "label values must be distinct"
    );
}

#[test]
fn buckets_cover_the_required_ranges() {
    assert_eq!(buckets::FAST_SECONDS.first(), Some(&0.0001));
    assert_eq!(buckets::FAST_SECONDS.last(), Some(&10.0));
    assert_eq!(buckets::SESSION_SECONDS.first(), Some(&1.0));
    assert_eq!(buckets::SESSION_SECONDS.last(), Some(&86400.0));
    for b in [buckets::FAST_SECONDS, buckets::SESSION_SECONDS] {
        assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?} not increasing");
    }
}

const PROMTOOL: &str = "/usr/bin/promtool";

#[test]
fn exposition_passes_promtool_check_metrics() {
    assert!(
        std::path::Path::new(PROMTOOL).exists(),
        "{PROMTOOL} not found: install the Debian package `prometheus` (apt-get install prometheus) to run this test"
    );
    let text = exercised().encode();
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {PROMTOOL}: {e}"));
    child
        .stdin
        .take()
        .unwrap_or_else(|| panic!("promtool stdin not piped"))
        .write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("writing to promtool: {e}"));
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for promtool: {e}"));
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- input ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// docs/metrics.md is the reference admins read: every family and every closed label value
/// must be in it.
#[test]
fn the_metrics_reference_documents_every_family_and_label_value() {
    let doc = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/metrics.md"
    ));
    let mut missing: Vec<String> = names::SPEC
        .iter()
        .chain(names::EXTRAS)
        .filter(|name| !doc.contains(&format!("`{name}`")))
        .map(|name| format!("metric {name}"))
        .collect();
    let values = HandshakeFailure::ALL
        .map(HandshakeFailure::as_str)
        .into_iter()
        .chain(labels::RejectReason::ALL.map(labels::RejectReason::as_str))
        .chain(SessionOutcome::ALL.map(SessionOutcome::as_str))
        .chain(handles::SERVER_STATES)
        .chain(["client_to_backend", "backend_to_client", "ok", "error"]);
    missing.extend(
        values
            .filter(|value| !doc.contains(&format!("`{value}`")))
            .map(|value| format!("label value {value}")),
    );
    assert!(
        missing.is_empty(),
        "docs/metrics.md does not document: {}; add each to its table",
        missing.join(", ")
    );
}
