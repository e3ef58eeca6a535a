"""Checks the operator-facing observability assets against the metric names of docs/metrics.md.

- deploy/prometheus/alerts.yml passes `promtool check rules`, and each alert fires (and stays
  quiet) as intended on synthetic series (`promtool test rules`);
- deploy/grafana/postern.json parses, is wired to a `${DS_PROMETHEUS}` data source and a
  `listener` variable, every query is valid PromQL, and every metric it names exists.

Needs only promtool (Debian package `prometheus`); a missing promtool is a failure, not a skip.
Run: pytest tests/assets/test_observability_assets.py
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "postern.json"

# docs/metrics.md, names fixed.
SPEC_METRICS = {
    "postern_connections_accepted_total",
    "postern_connections_active",
    "postern_connections_rejected_total",
    "postern_tls_handshake_duration_seconds",
    "postern_tls_handshake_failures_total",
    "postern_backend_connect_duration_seconds",
    "postern_backend_connect_failures_total",
    "postern_backend_up",
    "postern_session_duration_seconds",
    "postern_bytes_total",
    "postern_certificate_expiry_timestamp_seconds",
    "postern_certificate_reloads_total",
    "postern_build_info",
}
# Exported in addition (crates/metrics/src/names.rs, EXTRAS).
EXTRA_METRICS = {
    "postern_starttls_discarded_bytes_total",
    "postern_accept_errors_total",
    "postern_sessions_total",
    "postern_backend_connections_active",
    "postern_connections_max",
}
HISTOGRAMS = {
    "postern_tls_handshake_duration_seconds",
    "postern_backend_connect_duration_seconds",
    "postern_session_duration_seconds",
}
KNOWN = SPEC_METRICS | EXTRA_METRICS
METRIC_RE = re.compile(r"\bpostern_[a-z0-9_]+")
TIMEOUT = 60


def promtool() -> str:
    path = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if path is None:
        pytest.fail("promtool not found: install the Debian package `prometheus` (apt-get install prometheus)")
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=TIMEOUT, check=False)


def referenced_metrics(text: str) -> set:
    """Metric names in PromQL text, histogram series suffixes folded into their family."""
    names = set()
    for name in METRIC_RE.findall(text):
        for suffix in ("_bucket", "_count", "_sum"):
            if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
                name = name[: -len(suffix)]
        names.add(name)
    return names


# ---------------------------------------------------------------- alerts


def test_alert_rules_pass_promtool_check_rules():
    result = run_promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, f"promtool check rules {ALERTS}:\n{result.stdout}{result.stderr}"
    assert "SUCCESS" in result.stdout, result.stdout


def test_alert_rules_name_only_known_metrics():
    used = referenced_metrics(ALERTS.read_text())
    assert used, "no postern metrics referenced in alerts.yml"
    assert used <= KNOWN, f"unknown metrics in {ALERTS}: {sorted(used - KNOWN)}"


def extract_alert_rules(text: str) -> list:
    """Reads name, expr, for and labels of each alert from alerts.yml.

    promtool's unit tests compare rendered annotations verbatim, which would pin the help
    texts; the rules are therefore re-emitted without annotations. This parser only knows
    the layout of alerts.yml (plain or `|` block `expr`), and checks it found every alert.
    """
    rules, current, block_indent, in_labels = [], None, None, False
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if block_indent is not None:
            if stripped and indent <= block_indent:
                block_indent = None
            else:
                current["expr"] += line.strip() + "\n"
                continue
        if stripped.startswith("- alert:"):
            current = {"alert": stripped.split(":", 1)[1].strip(), "expr": "", "labels": {}}
            rules.append(current)
            in_labels = False
        elif current is None or stripped.startswith("#") or not stripped:
            continue
        elif stripped.startswith("expr:"):
            value = stripped.split(":", 1)[1].strip()
            if value == "|":
                block_indent = indent
            else:
                current["expr"] = value
            in_labels = False
        elif stripped.startswith("for:"):
            current["for"] = stripped.split(":", 1)[1].strip()
            in_labels = False
        elif stripped == "labels:":
            in_labels = True
        elif stripped == "annotations:":
            in_labels = False
        elif in_labels and ":" in stripped:
            key, value = stripped.split(":", 1)
            current["labels"][key.strip()] = value.strip()
    assert len(rules) == text.count("- alert:"), "alerts.yml layout not understood"
    for rule in rules:
        assert rule["expr"].strip(), f"{rule['alert']}: empty expr"
    return rules


def gw(**labels):
    """A series selector with the scrape labels every series carries."""
    labels = {"instance": "gw1", "job": "postern", **labels}
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def alert(name, eval_time, *expected):
    return {
        "alertname": name,
        "eval_time": eval_time,
        "exp_alerts": [{"exp_labels": {"instance": "gw1", "job": "postern", **labels}} for labels in expected],
    }


ALERT_TESTS = [
    {   # certificate expiry; time() starts at 0, so the value is the time left
        "interval": "1m",
        "input_series": [
            {"series": "postern_certificate_expiry_timestamp_seconds" + gw(name="later"), "values": f"{60 * 86400}x200"},
            {"series": "postern_certificate_expiry_timestamp_seconds" + gw(name="soon"), "values": f"{10 * 86400}x200"},
            {"series": "postern_certificate_expiry_timestamp_seconds" + gw(name="tomorrow"), "values": f"{2 * 86400}x200"},
        ],
        "alert_rule_test": [
            alert("PosternCertificateExpiresSoon", "30m"),  # pending: `for: 1h`
            alert("PosternCertificateExpiresSoon", "2h",
                  {"name": "soon", "severity": "warning"}, {"name": "tomorrow", "severity": "warning"}),
            alert("PosternCertificateExpiresVerySoon", "2h", {"name": "tomorrow", "severity": "critical"}),
        ],
    },
    {   # reload failures: one error at minute 5
        "interval": "1m",
        "input_series": [
            {"series": "postern_certificate_reloads_total" + gw(result="error"), "values": "0x4 1x40"},
            {"series": "postern_certificate_reloads_total" + gw(result="ok"), "values": "0+1x45"},
        ],
        "alert_rule_test": [
            alert("PosternCertificateReloadFailing", "3m"),
            alert("PosternCertificateReloadFailing", "10m", {"result": "error", "severity": "warning"}),
            alert("PosternCertificateReloadFailing", "30m"),  # older than 15 minutes
        ],
    },
    {   # imap: one of two servers down; pop3: both down
        "interval": "1m",
        "input_series": [
            {"series": "postern_backend_up" + gw(backend="imap", server="a:143"), "values": "0x10"},
            {"series": "postern_backend_up" + gw(backend="imap", server="b:143"), "values": "1x10"},
            {"series": "postern_backend_up" + gw(backend="pop3", server="a:110"), "values": "0x10"},
            {"series": "postern_backend_up" + gw(backend="pop3", server="b:110"), "values": "0x10"},
        ],
        "alert_rule_test": [
            alert("PosternBackendServerDown", "30s"),
            alert("PosternBackendServerDown", "2m",
                  {"backend": "imap", "server": "a:143", "severity": "warning"},
                  {"backend": "pop3", "server": "a:110", "severity": "warning"},
                  {"backend": "pop3", "server": "b:110", "severity": "warning"}),
            alert("PosternBackendAllServersDown", "2m", {"backend": "pop3", "severity": "critical"}),
        ],
    },
    {   # imaps 10 failures per 100 successes (9%), pop3s 2 per 100 (2%), quiet: failures only, rare
        "interval": "1m",
        "input_series": [
            {"series": "postern_tls_handshake_duration_seconds_count" + gw(listener="imaps"), "values": "0+100x40"},
            {"series": "postern_tls_handshake_failures_total" + gw(listener="imaps", reason="timeout"), "values": "0+6x40"},
            {"series": "postern_tls_handshake_failures_total" + gw(listener="imaps", reason="no_cert"), "values": "0+4x40"},
            {"series": "postern_tls_handshake_duration_seconds_count" + gw(listener="pop3s"), "values": "0+100x40"},
            {"series": "postern_tls_handshake_failures_total" + gw(listener="pop3s", reason="eof"), "values": "0+2x40"},
            {"series": "postern_tls_handshake_duration_seconds_count" + gw(listener="quiet"), "values": "0x40"},
            {"series": "postern_tls_handshake_failures_total" + gw(listener="quiet", reason="eof"), "values": "0+0.2x40"},
        ],
        "alert_rule_test": [
            alert("PosternHandshakeFailureRatioHigh", "8m"),  # pending: `for: 10m`
            alert("PosternHandshakeFailureRatioHigh", "20m", {"listener": "imaps", "severity": "warning"}),
        ],
    },
    {   # gw1 at 95% of max_connections, gw2 at 10%, gw3 with max unset (0)
        "interval": "1m",
        "input_series": [
            {"series": "postern_connections_max" + gw(), "values": "1000x20"},
            {"series": "postern_connections_active" + gw(listener="imaps"), "values": "800x20"},
            {"series": "postern_connections_active" + gw(listener="pop3s"), "values": "150x20"},
            {"series": "postern_connections_max" + gw(instance="gw2"), "values": "1000x20"},
            {"series": "postern_connections_active" + gw(instance="gw2", listener="imaps"), "values": "100x20"},
            {"series": "postern_connections_max" + gw(instance="gw3"), "values": "0x20"},
            {"series": "postern_connections_active" + gw(instance="gw3", listener="imaps"), "values": "5x20"},
            {"series": "postern_connections_rejected_total" + gw(listener="imaps", reason="limit"), "values": "0 0 0 5x20"},
            {"series": "postern_connections_rejected_total" + gw(listener="imaps", reason="shutdown"), "values": "0+1x20"},
        ],
        "alert_rule_test": [
            alert("PosternConnectionsNearLimit", "3m"),  # pending: `for: 5m`
            alert("PosternConnectionsNearLimit", "10m", {"severity": "warning"}),
            alert("PosternConnectionsRejectedAtLimit", "1m"),
            alert("PosternConnectionsRejectedAtLimit", "5m", {"listener": "imaps", "reason": "limit", "severity": "warning"}),
        ],
    },
]


def test_alerts_fire_as_intended(tmp_path):
    rules = extract_alert_rules(ALERTS.read_text())
    # JSON is YAML, so no YAML library is needed to talk to promtool.
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(json.dumps({"groups": [{"name": "postern-alerts", "rules": rules}]}))
    tested = {case["alertname"] for test in ALERT_TESTS for case in test["alert_rule_test"]}
    assert tested == {r["alert"] for r in rules}, "every alert needs a unit test"
    tests_file = tmp_path / "tests.yml"
    tests_file.write_text(json.dumps({"rule_files": [str(rules_file)], "evaluation_interval": "1m", "tests": ALERT_TESTS}))
    result = run_promtool("test", "rules", str(tests_file))
    assert result.returncode == 0, f"promtool test rules:\n{result.stdout}{result.stderr}"


# ---------------------------------------------------------------- dashboard


def dashboard() -> dict:
    try:
        return json.loads(DASHBOARD.read_text())
    except json.JSONDecodeError as error:
        pytest.fail(f"{DASHBOARD} is not valid JSON: {error}")


def all_panels(dash: dict) -> list:
    panels = []
    for panel in dash["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def queries(dash: dict) -> list:
    found = [t["expr"] for p in all_panels(dash) for t in p.get("targets", []) if "expr" in t]
    for var in dash["templating"]["list"]:
        query = var.get("query")
        if var.get("type") == "query":
            found.append(query["query"] if isinstance(query, dict) else query)
    return found


def test_dashboard_is_wired_to_a_prometheus_datasource_and_a_listener_variable():
    dash = dashboard()
    assert 36 <= dash["schemaVersion"] <= 41, dash["schemaVersion"]
    assert any(i["name"] == "DS_PROMETHEUS" and i["pluginId"] == "prometheus" for i in dash["__inputs"])
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["listener"]["type"] == "query"
    ids = [p["id"] for p in all_panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in all_panels(dash):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"


def test_dashboard_shows_what_an_operator_needs():
    used = set()
    for expr in queries(dashboard()):
        used |= referenced_metrics(expr)
    for needed in [
        "postern_connections_accepted_total",
        "postern_connections_active",
        "postern_tls_handshake_duration_seconds",
        "postern_tls_handshake_failures_total",
        "postern_backend_up",
        "postern_backend_connect_duration_seconds",
        "postern_backend_connect_failures_total",
        "postern_session_duration_seconds",
        "postern_bytes_total",
        "postern_certificate_expiry_timestamp_seconds",
        "postern_certificate_reloads_total",
    ]:
        assert needed in used, f"dashboard has no panel for {needed}"
    exprs = " ".join(queries(dashboard()))
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le, listener) (rate(postern_tls_handshake_duration_seconds_bucket" in exprs


def test_dashboard_names_only_known_metrics():
    used = set()
    for expr in queries(dashboard()):
        used |= referenced_metrics(expr)
    assert used <= KNOWN, f"unknown metrics in {DASHBOARD}: {sorted(used - KNOWN)}"


def test_dashboard_queries_are_valid_promql(tmp_path):
    # Grafana variables replaced by values of the same shape; promtool parses each query as
    # a recording rule.
    substitutions = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m"}
    rules = []
    for i, expr in enumerate(e for e in queries(dashboard()) if not e.startswith("label_values(")):
        for var, value in substitutions.items():
            expr = expr.replace(var, value)
        expr = re.sub(r"\$\{?[A-Za-z_]+\}?", ".*", expr)
        rules.append({"record": f"postern:dashboard_query_{i}", "expr": expr})
    rules_file = tmp_path / "dashboard_queries.yml"
    rules_file.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(rules_file))
    assert result.returncode == 0, f"invalid PromQL in {DASHBOARD}:\n{result.stdout}{result.stderr}"
