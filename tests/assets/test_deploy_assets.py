"""Checks of the deployment assets under deploy/ (systemd units, Kubernetes manifests,
Dockerfile, deploy/README.md).

What runs here and what it needs:
- systemd: `systemd-analyze verify` and `systemd-analyze security --offline=true` on the
  units, `systemd-sysusers --dry-run` on the sysusers.d entry (Debian package `systemd`;
  PID 1 need not be systemd). `verify` insists that every Exec*= binary exists, so the
  units are verified from a temporary copy whose /usr/local/bin/postern is replaced by the
  built postern ($POSTERN_BIN, else target/debug/postern) or, when there is none, by
  /bin/true.
- Kubernetes: kubectl/kustomize are not on the test machines, so render_kustomization()
  below renders the base itself (resources, configMapGenerator, images: exactly the
  features the base uses; anything else fails the test) and every rendered object is
  validated with `kubernetes-validate --strict` (PyPI package kubernetes-validate; its
  schemas are bundled, no network). The fields the deployment depends on are asserted,
  cross-checked against the pod's postern.toml.
- Docker cannot run on the test machines: the Dockerfile is checked as text.

A missing tool fails the test with the install hint; nothing here is skipped silently.
The only skips: `postern check-config` on the pod's postern.toml, and a short
`postern run` of it that polls the probe endpoints, need a built postern binary
($POSTERN_BIN, else target/debug/postern, as tests/e2e; tests/run builds it first).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

try:
    import yaml
except ImportError as e:  # pragma: no cover - environment problem, reported loudly
    raise ImportError(
        "tests/assets needs PyYAML: pip install -r tests/requirements.txt"
    ) from e

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SYSTEMD = DEPLOY / "systemd"
K8S = DEPLOY / "kubernetes"
DOCKER = DEPLOY / "docker"
UNIT = SYSTEMD / "postern.service"
TEMPLATE_UNIT = SYSTEMD / "postern@.service"
INSTALLED_BINARY = "/usr/local/bin/postern"

# Kubernetes versions the manifests are validated against: the oldest one the base
# supports (preStop `sleep` handler: 1.30 beta, on by default; 1.31 is the validator's
# target) and the newest schema set kubernetes-validate 1.37 ships.
K8S_VERSIONS = ["1.31", "1.37"]

# The seven mail ports: Service port -> (listener name, protocol, tls mode).
MAIL_PORTS = {
    993: ("imaps", "imap", "implicit"),
    995: ("pop3s", "pop3", "implicit"),
    465: ("submissions", "smtp", "implicit"),
    143: ("imap", "imap", "starttls"),
    110: ("pop3", "pop3", "starttls"),
    587: ("submission", "smtp", "starttls"),
    4190: ("sieve", "sieve", "starttls"),
}

SUBPROCESS_TIMEOUT = 120


# --------------------------------------------------------------------------- helpers


def need_tool(name: str, hint: str) -> str:
    """Absolute path of a tool, or a test failure that says how to install it."""
    found = shutil.which(name)
    if found is None:
        # pytest run by a venv's python without the venv's bin dir on PATH.
        candidate = Path(sys.executable).parent / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            found = str(candidate)
    if found is None:
        pytest.fail(f"`{name}` not found on PATH: {hint}", pytrace=False)
    return found


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, **kw
    )


def postern_binary() -> Path | None:
    """The built postern, if any: $POSTERN_BIN, else target/debug/postern (as tests/e2e)."""
    env = os.environ.get("POSTERN_BIN")
    c = Path(env) if env else REPO / "target/debug/postern"
    return c if c.is_file() and os.access(c, os.X_OK) else None


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """systemd unit file -> {section: [(key, value), ...]} (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        assert current is not None, f"{path}: directive before any [Section]: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not a key=value line: {line!r}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def unit_values(unit: dict, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def unit_value(unit: dict, section: str, key: str) -> str:
    values = unit_values(unit, section, key)
    assert len(values) == 1, f"[{section}] {key}= set {len(values)} times: {values}"
    return values[0]


_SPAN_UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def seconds(span: str) -> float:
    """A systemd time span ("45s", "1min 30s") or a postern duration ("30s", "500ms")."""
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts and "".join(n + u for n, u in parts) == re.sub(r"\s", "", span), span
    for number, unit in parts:
        total += float(number) * _SPAN_UNITS[unit or "s"]
    return total


def copy_unit_for_verify(src: Path, tmp: Path, name: str) -> Path:
    """Copy a unit with its Exec*= binary replaced by one that exists on this machine."""
    binary = postern_binary() or Path("/bin/true")
    text = src.read_text().replace(INSTALLED_BINARY, str(binary))
    dst = tmp / name
    dst.write_text(text)
    return dst


# --------------------------------------------------------------------------- systemd

SYSTEMD_HINT = "install the Debian package `systemd` (systemd-analyze; PID 1 need not be systemd)"


@pytest.mark.parametrize(
    "src,name",
    [(UNIT, "postern.service"), (TEMPLATE_UNIT, "postern@blue.service")],
    ids=["postern.service", "postern@.service"],
)
def test_unit_passes_systemd_analyze_verify(tmp_path, src, name):
    tool = need_tool("systemd-analyze", SYSTEMD_HINT)
    unit = copy_unit_for_verify(src, tmp_path, name)
    res = run([tool, "verify", str(unit)])
    complaints = [l for l in (res.stdout + res.stderr).splitlines() if "postern" in l]
    assert res.returncode == 0 and not complaints, (
        f"systemd-analyze verify {src.name}: rc={res.returncode}\n{res.stdout}{res.stderr}"
    )


def test_unit_security_exposure_is_low(tmp_path):
    tool = need_tool("systemd-analyze", SYSTEMD_HINT)
    unit = copy_unit_for_verify(UNIT, tmp_path, "postern.service")
    res = run([tool, "security", "--offline=true", "--no-pager", str(unit)])
    out = res.stdout + res.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
    assert m, f"no exposure level in systemd-analyze security output (rc={res.returncode}):\n{out}"
    level = float(m.group(1))
    # 1.6 when written (systemd 252). 0 = fully locked down, 10 = unprotected;
    # systemd calls < 4.0 "OK". The margin catches a dropped hardening directive.
    assert level <= 2.5, f"exposure level rose to {level}:\n{out}"


def test_unit_directives():
    u = parse_unit(UNIT)
    svc = "Service"
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "User": "postern",
        "Group": "postern",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "StateDirectory": "postern",
        "ConfigurationDirectory": "postern",
        "ReadOnlyPaths": "/etc/postern",
        "UMask": "0077",
        "KillMode": "mixed",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",
        # hardening
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
    }
    wrong = {
        k: (unit_values(u, svc, k), v)
        for k, v in expected.items()
        if unit_values(u, svc, k) != [v]
    }
    assert not wrong, f"postern.service: key: (found, expected): {wrong}"

    assert unit_values(u, svc, "SystemCallFilter") == [
        "@system-service",
        "~@privileged @resources",
    ]
    assert unit_value(u, svc, "ExecStart") == (
        f"{INSTALLED_BINARY} run -c /etc/postern/postern.toml"
    )
    assert unit_value(u, svc, "ExecStartPre") == (
        f"{INSTALLED_BINARY} check-config -c /etc/postern/postern.toml"
    )
    # `systemctl reload` is SIGHUP to postern itself (README, "Command line"), never to exec children.
    assert unit_values(u, svc, "ExecReload") == ["/bin/kill -HUP $MAINPID"]
    # Hundreds of thousands of sessions at ~2 descriptors each.
    assert int(unit_value(u, svc, "LimitNOFILE")) >= 2 * 250_000
    # The watchdog is on, and the stop timeout outlasts the default drain
    # (server.shutdown_grace = 30s) so that systemd never SIGKILLs a drain on time.
    assert seconds(unit_value(u, svc, "WatchdogSec")) > 0
    assert seconds(unit_value(u, svc, "TimeoutStopSec")) > seconds("30s") + 5
    # In a user namespace the ambient CAP_NET_BIND_SERVICE would not cover the host's
    # network namespace: ports < 1024 would fail to bind.
    assert unit_values(u, svc, "PrivateUsers") == []
    assert unit_values(u, "Install", "WantedBy") == ["multi-user.target"]


def _normalised_template(path: Path) -> list[tuple[str, str, str]]:
    out = []
    for section, items in parse_unit(path).items():
        for k, v in items:
            if k in ("Description", "SyslogIdentifier"):
                continue
            out.append((section, k, v.replace("/etc/postern/%i.toml", "/etc/postern/postern.toml")))
    return out


def test_template_unit_does_not_drift_from_main_unit():
    assert _normalised_template(TEMPLATE_UNIT) == _normalised_template(UNIT), (
        "postern@.service must be postern.service with the instance's config path; "
        "apply the same change to both"
    )
    t = parse_unit(TEMPLATE_UNIT)
    assert unit_value(t, "Service", "ExecStart").endswith("-c /etc/postern/%i.toml")


def test_sysusers_entry(tmp_path):
    tool = need_tool("systemd-sysusers", SYSTEMD_HINT)
    conf = SYSTEMD / "postern.sysusers.conf"
    entries = [
        l.split() for l in conf.read_text().splitlines() if l.strip() and not l.startswith("#")
    ]
    assert len(entries) == 1 and entries[0][:3] == ["u", "postern", "-"], entries
    assert entries[0][-1] == "/var/lib/postern"
    # --root on an empty tree + --dry-run: parses the file, writes nothing anywhere.
    res = run([tool, f"--root={tmp_path}", "--dry-run", str(conf)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Creating user 'postern'" in res.stdout + res.stderr
    assert not (tmp_path / "etc/passwd").exists()


# --------------------------------------------------------------------------- kubernetes

SUPPORTED_KUSTOMIZE_KEYS = {"apiVersion", "kind", "resources", "configMapGenerator", "images"}


def _content_hash(data: dict) -> str:
    blob = json.dumps(data, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def render_kustomization(base: Path) -> list[dict]:
    """A minimal `kustomize build` for the features deploy/kubernetes uses.

    Like kustomize, generated ConfigMaps get a content-hash name suffix and the
    Deployment's references to them are rewritten; `images` replaces container images
    by name. Any other kustomization feature fails loudly instead of being ignored.
    """
    kust = yaml.safe_load((base / "kustomization.yaml").read_text())
    unknown = set(kust) - SUPPORTED_KUSTOMIZE_KEYS
    assert not unknown, f"render_kustomization() does not implement {sorted(unknown)}: extend it"
    assert kust["kind"] == "Kustomization"

    objects: list[dict] = []
    for rel in kust.get("resources", []):
        path = base / rel
        assert path.is_file(), f"kustomization.yaml lists {rel}, which is not a file"
        objects += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]

    renamed: dict[str, str] = {}
    for gen in kust.get("configMapGenerator", []):
        assert set(gen) <= {"name", "files"}, f"unsupported generator options: {gen}"
        data = {}
        for f in gen["files"]:
            key, _, rel = f.rpartition("=") if "=" in f else (Path(f).name, "", f)
            data[key] = (base / rel).read_text()
        name = f"{gen['name']}-{_content_hash(data)}"
        renamed[gen["name"]] = name
        objects.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
        )

    images = {i["name"]: i for i in kust.get("images", [])}
    for obj in objects:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = obj["spec"]["template"]["spec"]
        for vol in pod.get("volumes", []):
            cm = vol.get("configMap")
            if cm and cm["name"] in renamed:
                cm["name"] = renamed[cm["name"]]
        for c in pod["containers"]:
            name, _, tag = c["image"].partition(":")
            if name in images:
                img = images[name]
                c["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag or 'latest')}"
    return objects


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return render_kustomization(K8S)


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def pod_config(rendered) -> dict:
    cm = next(o for o in rendered if o["kind"] == "ConfigMap")
    return tomllib.loads(cm["data"]["postern.toml"])


@pytest.fixture(scope="module")
def deployment(rendered) -> dict:
    return one(rendered, "Deployment", "postern")


@pytest.fixture(scope="module")
def container(deployment) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def listen_port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kustomize_base_validates_against_kubernetes_schemas(tmp_path, rendered, version):
    tool = need_tool(
        "kubernetes-validate",
        "pip install -r tests/requirements.txt (PyPI package kubernetes-validate)",
    )
    out = tmp_path / "rendered.yaml"
    out.write_text(yaml.safe_dump_all(rendered, sort_keys=False))
    res = run([tool, "--strict", "-k", version, str(out)])
    text = res.stdout + res.stderr
    assert res.returncode == 0, f"kubernetes-validate -k {version}:\n{text}"
    # Every object was checked against a real schema (an unknown kind only warns).
    assert "WARN" not in text and "ERROR" not in text, text
    assert text.count("passed for resource") == len(rendered), text
    kinds = sorted(o["kind"] for o in rendered)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "Service",
            "Service",
            "ServiceAccount",
        ]
    ), kinds


DOVECOT_K8S = K8S / "dovecot"


@pytest.fixture(scope="module")
def dovecot_rendered() -> list[dict]:
    return render_kustomization(DOVECOT_K8S)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_dovecot_backend_example_validates(tmp_path, dovecot_rendered, version):
    """deploy/kubernetes/dovecot/: the headless Service + StatefulSet backend pattern."""
    tool = need_tool(
        "kubernetes-validate",
        "pip install -r tests/requirements.txt (PyPI package kubernetes-validate)",
    )
    out = tmp_path / "rendered.yaml"
    out.write_text(yaml.safe_dump_all(dovecot_rendered, sort_keys=False))
    res = run([tool, "--strict", "-k", version, str(out)])
    text = res.stdout + res.stderr
    assert res.returncode == 0, f"kubernetes-validate -k {version}:\n{text}"
    assert "WARN" not in text and "ERROR" not in text, text
    assert text.count("passed for resource") == len(dovecot_rendered), text
    assert sorted(o["kind"] for o in dovecot_rendered) == ["ConfigMap", "Service", "StatefulSet"]
    for o in dovecot_rendered:
        assert "namespace" not in o["metadata"], f"{o['kind']}/{o['metadata']['name']}"


def test_postern_backends_use_the_headless_service(dovecot_rendered, pod_config):
    svc = one(dovecot_rendered, "Service", "dovecot")
    sts = one(dovecot_rendered, "StatefulSet", "dovecot")
    spec = svc["spec"]
    assert spec["clusterIP"] == "None", "headless: the name resolves to every pod"
    assert not spec.get("publishNotReadyAddresses", False), "only ready pods are offered"
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    pod = sts["spec"]["template"]
    assert spec["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert "readinessProbe" in container, "readiness decides which pods are in DNS"
    container_ports = {p["name"] for p in container["ports"]}
    svc_ports = {p["name"]: p["port"] for p in spec["ports"]}
    assert {p["targetPort"] for p in spec["ports"]} <= container_ports
    # the generated ConfigMap is the one mounted, and holds the dovecot.conf below
    cm = one(dovecot_rendered, "ConfigMap")
    assert [v["configMap"]["name"] for v in pod["spec"]["volumes"] if "configMap" in v] == [cm["metadata"]["name"]]
    assert cm["data"]["dovecot.conf"] == (DOVECOT_K8S / "dovecot.conf").read_text()

    # postern.toml: each backend is the Service name (re-resolved) on its protocol's port
    service_port = {name: svc_ports[name] for name in ("imap", "pop3", "submission", "sieve")}
    backends = {b["name"]: b for b in pod_config["backend"]}
    assert set(backends) == set(service_port)
    for name, b in backends.items():
        assert b["servers"] == [f"dovecot:{service_port[name]}"], b
        assert 1 <= seconds(b["resolve_interval"]) <= 30, b
        # the example Dovecot expects a PROXY header on every listener
        assert b["forward_client"] == "proxy-v2", b
    conf = (DOVECOT_K8S / "dovecot.conf").read_text()
    listeners = re.findall(r"inet_listener (\w+) \{\s*port = (\d+)(\s*haproxy = yes)?", conf)
    active = {name: bool(proxy) for name, port, proxy in listeners if port != "0"}
    assert active == {"imap": True, "pop3": True, "submission": True, "sieve": True}, active
    assert re.search(r"^haproxy_trusted_networks = \S+", conf, re.M)


def test_dovecot_example_config_parses():
    tool = need_tool("doveconf", "apt-get install dovecot-core (tests/run installs it)")
    res = run([tool, "-n", "-c", str(DOVECOT_K8S / "dovecot.conf")])
    assert res.returncode == 0, res.stdout + res.stderr


def test_manifests_are_namespace_agnostic(rendered):
    for o in rendered:
        assert "namespace" not in o["metadata"], f"{o['kind']}/{o['metadata']['name']}"


def test_pod_config_values(pod_config):
    server = pod_config["server"]
    assert seconds(server["drain_spread"]) <= seconds(server["shutdown_grace"])
    assert "user" not in server and "group" not in server, "the pod never runs as root"
    assert pod_config["admin"]["listen"] == "0.0.0.0:9190", "probes reach admin on the pod IP"
    assert pod_config["log"]["format"] == "json"
    assert pod_config["tls"]["watch"] is True
    assert pod_config["tls"]["certificate"] == [
        {"cert": "/etc/postern/tls/tls.crt", "key": "/etc/postern/tls/tls.key"}
    ]
    names = [l["name"] for l in pod_config["listener"]]
    assert sorted(names) == sorted(n for n, _, _ in MAIL_PORTS.values())
    backends = {b["name"] for b in pod_config["backend"]}
    for l in pod_config["listener"]:
        assert l["backend"] in backends, l
        assert all(listen_port(a) >= 1024 for a in l["listen"]), l


def test_deployment_probes_and_termination(deployment, container, pod_config):
    pod = deployment["spec"]["template"]["spec"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["admin"] == listen_port(pod_config["admin"]["listen"])
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"]) == (path, "admin"), probe
    # Grace counts from the start of preStop: sleep + shutdown_grace must fit, with slack.
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = seconds(pod_config["server"]["shutdown_grace"])
    assert pre_stop >= 1
    assert pod["terminationGracePeriodSeconds"] > pre_stop + grace, (
        pod["terminationGracePeriodSeconds"], pre_stop, grace)
    # The autoscaler owns the replica count; rollouts never drop below it.
    assert "replicas" not in deployment["spec"]
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1


def test_deployment_security_context(deployment, container, pod_config):
    pod = deployment["spec"]["template"]["spec"]
    psc, csc = pod["securityContext"], container["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 65532 and psc["runAsGroup"] == 65532
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"]
    low = [a for l in pod_config["listener"] for a in l["listen"] if listen_port(a) < 1024]
    expected_add = ["NET_BIND_SERVICE"] if low else []
    assert csc["capabilities"].get("add", []) == expected_add
    assert pod["automountServiceAccountToken"] is False
    res = container["resources"]
    assert {"cpu", "memory"} <= set(res["requests"]) and "memory" in res["limits"]


def test_deployment_volumes(deployment, container, pod_config, rendered):
    pod = deployment["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}

    # config: the generated ConfigMap, at the path the container's args name.
    cm = next(o for o in rendered if o["kind"] == "ConfigMap")
    m = mounts["/etc/postern/postern.toml"]
    assert vols[m["name"]]["configMap"]["name"] == cm["metadata"]["name"]
    assert m["subPath"] == "postern.toml" and m["readOnly"] is True
    assert container["args"] == ["run", "-c", "/etc/postern/postern.toml"]

    # certificate: a Secret volume holding the configured cert and key files, mounted
    # whole (a subPath mount never sees the kubelet's update on rotation).
    tls_dirs = {str(Path(p).parent) for c in pod_config["tls"]["certificate"] for p in c.values()}
    assert tls_dirs == {"/etc/postern/tls"}
    m = mounts["/etc/postern/tls"]
    assert "subPath" not in m and m["readOnly"] is True
    secret = vols[m["name"]]["secret"]
    assert secret["secretName"] == "postern-tls"
    # Key readable by the pod's group (fsGroup) only.
    assert secret["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"] == 65532

    # state_dir: a writable emptyDir (the root filesystem is read-only).
    m = mounts[pod_config["server"]["state_dir"]]
    assert "emptyDir" in vols[m["name"]] and not m.get("readOnly", False)


def test_services(rendered, deployment, container, pod_config):
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    listeners = {l["name"]: l for l in pod_config["listener"]}

    svc = one(rendered, "Service", "postern")
    spec = svc["spec"]
    assert spec["type"] == "LoadBalancer"
    assert spec["externalTrafficPolicy"] == "Local", "client addresses must survive"
    assert spec["selector"].items() <= pod_labels.items()
    by_port = {p["port"]: p for p in spec["ports"]}
    assert set(by_port) == set(MAIL_PORTS), "exactly the seven mail ports, no admin port"
    for port, (name, protocol, tls) in MAIL_PORTS.items():
        target = by_port[port]["targetPort"]
        # Service port -> named container port -> postern listener of the same name.
        assert target == name, (port, target)
        listener = listeners[name]
        assert (listener["protocol"], listener["tls"]) == (protocol, tls), name
        assert {listen_port(a) for a in listener["listen"]} == {container_ports[name]}, name

    admin = one(rendered, "Service", "postern-admin")
    assert admin["spec"]["type"] == "ClusterIP"
    assert admin["spec"]["selector"].items() <= pod_labels.items()
    assert [p["targetPort"] for p in admin["spec"]["ports"]] == ["admin"]


def test_disruption_budget_and_autoscaler(rendered, deployment):
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = one(rendered, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    hpa = one(rendered, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"], "drains must be possible"
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


def test_extras_match_the_base(rendered, deployment):
    """extras/ holds the CRD-based objects (no schema in the validator): check by hand."""
    docs = {}
    for f in sorted((K8S / "extras").glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            docs[d["kind"]] = d
    assert set(docs) == {"Certificate", "ServiceMonitor"}

    cert = docs["Certificate"]
    assert cert["apiVersion"] == "cert-manager.io/v1"
    secret_names = [
        v["secret"]["secretName"]
        for v in deployment["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
    ]
    assert cert["spec"]["secretName"] in secret_names
    assert cert["spec"]["dnsNames"] and cert["spec"]["issuerRef"]["name"]

    sm = docs["ServiceMonitor"]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    admin = one(rendered, "Service", "postern-admin")
    assert sm["spec"]["selector"]["matchLabels"].items() <= admin["metadata"]["labels"].items()
    svc_port_names = {p["name"] for p in admin["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in svc_port_names and ep["path"] == "/metrics"
    # The mail LoadBalancer Service must not be scraped (nor match the selector).
    lb = one(rendered, "Service", "postern")
    assert not sm["spec"]["selector"]["matchLabels"].items() <= lb["metadata"]["labels"].items()


# --------------------------------------------------------------------------- with the built binary
# The pod's config, the unit's identity model and the single-host upgrade, run for real.


def built_postern() -> Path:
    binary = postern_binary()
    if binary is None:
        pytest.skip("no built postern (set POSTERN_BIN or build target/debug/postern)")
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_pod_config(binary: Path, tmp: Path, loopback: bool) -> tuple[Path, dict]:
    """The pod's postern.toml with the paths the pod mounts moved into `tmp` (a fresh
    self-signed certificate stands in for the Secret) and, with `loopback`, every
    address moved to 127.0.0.1 on free ports. Returns the file and its parsed content."""
    certs = tmp / "tls"
    gen = run([str(binary), "cert", "generate", "--name", "mail.example.org", "--out", str(certs)])
    assert gen.returncode == 0, gen.stdout + gen.stderr
    text = (K8S / "postern.toml").read_text()
    text = text.replace("/etc/postern/tls/tls.crt", str(certs / "fullchain.pem"))
    text = text.replace("/etc/postern/tls/tls.key", str(certs / "privkey.pem"))
    text = text.replace('"/var/lib/postern"', json.dumps(str(tmp / "state")))
    if loopback:
        text = re.sub(
            r'"0\.0\.0\.0:(\d+)"', lambda m: f'"127.0.0.1:{free_port()}"', text
        )
    cfg = tmp / "postern.toml"
    cfg.write_text(text)
    return cfg, tomllib.loads(text)


def test_pod_config_passes_postern_check_config(tmp_path):
    """The pod's postern.toml against the real config loader (needs a built postern)."""
    binary = built_postern()
    cfg, _ = local_pod_config(binary, tmp_path, loopback=False)
    res = run([str(binary), "check-config", "-c", str(cfg)])
    assert res.returncode == 0, f"postern check-config rc={res.returncode}\n{res.stdout}{res.stderr}"
    # The summary names every listener (and proves this is not a stale binary).
    for name, _, _ in MAIL_PORTS.values():
        assert re.search(rf"^\s*{name}\s", res.stdout, re.M), f"{name} not in summary:\n{res.stdout}"


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def test_pod_config_serves_the_probe_endpoints(tmp_path, deployment, container):
    """postern run with the pod's config (on loopback): the paths and port the
    Deployment probes answer 200, and SIGTERM ends in exit 0 well within the grace."""
    binary = built_postern()
    cfg, conf = local_pod_config(binary, tmp_path, loopback=True)
    admin = conf["admin"]["listen"]
    log = (tmp_path / "postern.log").open("w")
    proc = subprocess.Popen(
        [str(binary), "run", "-c", str(cfg)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        paths = [container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")]
        deadline = time.monotonic() + 20
        while True:
            codes = {p: http_status(f"http://{admin}{p}") for p in paths}
            if all(c == 200 for c in codes.values()):
                break
            assert proc.poll() is None, f"postern exited {proc.returncode}: {(tmp_path / 'postern.log').read_text()}"
            assert time.monotonic() < deadline, f"probe endpoints not 200 within 20s: {codes}"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        grace = seconds(conf["server"]["shutdown_grace"])
        assert proc.wait(timeout=grace) == 0, (tmp_path / "postern.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def blue_green_handover(binary: Path, tmp: Path) -> dict:
    """Runs the single-host upgrade of deploy/README.md with the pod's config on
    loopback: instance "blue" serves, "green" starts on the same mail ports, blue gets
    SIGTERM while four clients connect in a loop and read the STARTTLS listener's
    greeting. Returns the counts of served, refused and failed connections and the
    instances' exit codes. Meant to run inside a private network namespace (see the
    test) because it needs net.ipv4.tcp_migrate_req = 1."""
    cfg, conf = local_pod_config(binary, tmp, loopback=True)
    text = cfg.read_text()
    green_admin = conf["admin"]["listen"]
    blue_admin = f"127.0.0.1:{free_port()}"
    (tmp / "blue.toml").write_text(text.replace(green_admin, blue_admin))
    (tmp / "green.toml").write_text(text)
    imap = next(l for l in conf["listener"] if l["name"] == "imap")
    port = listen_port(imap["listen"][0])

    procs: dict[str, subprocess.Popen] = {}
    counts = {"served": 0, "refused": 0, "failed": 0}
    errors: list[str] = []
    stop = threading.Event()

    def client_loop():
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.settimeout(5)
                    line = s.makefile("rb").readline()
                key = "served" if line.startswith(b"* ") else "failed"
            except ConnectionRefusedError:
                key = "refused"
            except OSError as e:
                key = "failed"
                errors.append(repr(e))
            counts[key] += 1

    clients = [threading.Thread(target=client_loop) for _ in range(4)]
    try:
        for name, admin in (("blue", blue_admin), ("green", green_admin)):
            procs[name] = subprocess.Popen(
                [str(binary), "run", "-c", str(tmp / f"{name}.toml")],
                stdout=(tmp / f"{name}.log").open("w"),
                stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + 20
            while http_status(f"http://{admin}/readyz") != 200:
                if procs[name].poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{name} not ready: {(tmp / f'{name}.log').read_text()}")
                time.sleep(0.05)
            if name == "blue":
                for c in clients:
                    c.start()
        time.sleep(0.5)
        procs["blue"].send_signal(signal.SIGTERM)
        blue_rc = procs["blue"].wait(timeout=seconds(conf["server"]["shutdown_grace"]))
        served_at_blue_exit = counts["served"]
        # Green alone must go on serving.
        deadline = time.monotonic() + 10
        while counts["served"] < served_at_blue_exit + 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        for c in clients:
            c.join(timeout=10)
        procs["green"].send_signal(signal.SIGTERM)
        green_rc = procs["green"].wait(timeout=seconds(conf["server"]["shutdown_grace"]))
    finally:
        stop.set()
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    return {
        **counts,
        "served_after_blue_exit": counts["served"] - served_at_blue_exit,
        "blue_rc": blue_rc,
        "green_rc": green_rc,
        "errors": errors[:5],
    }


def test_blue_green_handover_refuses_no_connection(tmp_path):
    """deploy/README.md's single-host upgrade: two instances share the mail ports
    (SO_REUSEPORT), the old one drains, and no client connection is refused or reset.
    Runs in a private network namespace (root, `unshare -n`, `ip`), where it can set
    net.ipv4.tcp_migrate_req = 1 as the README says, without touching the host's."""
    binary = built_postern()
    work = tmp_path / "run"
    work.mkdir()
    r = in_private_netns("blue-green", str(binary), str(work), str(tmp_path / "result.json"))
    assert r["blue_rc"] == 0 and r["green_rc"] == 0, r
    assert r["refused"] == 0 and r["failed"] == 0, r
    assert r["served_after_blue_exit"] >= 200, r


UNIT_UID = 65532  # any non-root uid; the unit's `postern` user is created by sysusers
SYSTEM_PORTS = {"10993": "993", "10995": "995", "10465": "465", "10143": "143", "10110": "110", "10587": "587"}


def unit_identity_run(binary: Path, tmp: Path, setpriv: str) -> dict:
    """Runs postern the way postern.service does (a non-root uid whose only capability
    is an ambient CAP_NET_BIND_SERVICE, no new privileges, $STATE_DIRECTORY, a
    NOTIFY_SOCKET and WATCHDOG_USEC) on the six system mail ports of 127.0.0.1.
    Returns what the notify socket received, the process's ids and capabilities once
    ready, and its exit code after SIGTERM. Runs inside a private network namespace
    (see the test), so that the system ports are free."""
    cfg, conf = local_pod_config(binary, tmp, loopback=False)
    text = cfg.read_text().replace('"0.0.0.0:9190"', f'"127.0.0.1:{free_port()}"')
    for pod_port, port in SYSTEM_PORTS.items():
        text = text.replace(f'"0.0.0.0:{pod_port}"', f'"127.0.0.1:{port}"')
    cfg.write_text(text)
    conf = tomllib.loads(text)
    state = tmp / "state"
    state.mkdir(mode=0o700)
    for path in [state, *(tmp / "tls").iterdir(), tmp / "tls"]:
        os.chown(path, UNIT_UID, UNIT_UID)

    notify_path = tmp / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    os.chown(notify_path, UNIT_UID, UNIT_UID)
    notify.settimeout(0.2)
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(notify_path),
        "WATCHDOG_USEC": "1000000",
        "STATE_DIRECTORY": str(state),
    }
    cmd = [
        setpriv, f"--reuid={UNIT_UID}", f"--regid={UNIT_UID}", "--clear-groups", "--nnp",
        "--inh-caps=-all,+net_bind_service", "--ambient-caps=-all,+net_bind_service",
        "--bounding-set=-all,+net_bind_service", str(binary), "run", "-c", str(cfg),
    ]
    log = tmp / "postern.log"
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    messages: list[str] = []

    def receive_until(pred, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if pred():
                return True
            try:
                messages.extend(notify.recv(4096).decode().splitlines())
            except TimeoutError:
                if proc.poll() is not None:
                    return pred()
        return pred()

    try:
        ready = receive_until(lambda: "READY=1" in messages, 20)
        status = {}
        if ready:
            status = dict(
                line.split(":", 1) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            )
            status = {k: v.split() for k, v in status.items() if k in ("Uid", "Gid", "Groups", "CapEff", "CapPrm", "CapBnd", "NoNewPrivs")}
        # WATCHDOG_USEC is 1s; systemd's advice (and postern's promise) is a ping every
        # half interval, so a 2.5s window must hold at least 4 of them.
        count_before = messages.count("WATCHDOG=1")
        receive_until(lambda: False, 2.5)
        watchdog_pings = messages.count("WATCHDOG=1") - count_before
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=seconds(conf["server"]["shutdown_grace"]))
        receive_until(lambda: "STOPPING=1" in messages, 1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        notify.close()
    return {
        "ready": ready,
        "status": status,
        "watchdog_pings_in_2_5s": watchdog_pings,
        "messages": sorted(set(messages)),
        "rc": rc,
        "log": log.read_text()[-2000:],
    }


def in_private_netns(mode: str, *args: str) -> dict:
    """Runs this file's entry point `mode` in a new network namespace with loopback up;
    returns the JSON result it writes."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a private network namespace (unshare -n)")
    unshare = need_tool("unshare", "Debian package util-linux")
    ip = need_tool("ip", "Debian package iproute2")
    out = Path(args[-1])
    quoted = " ".join(f'"{a}"' for a in args)
    script = (
        f"{ip} link set lo up && "
        "echo 1 > /proc/sys/net/ipv4/tcp_migrate_req && "
        f'exec "{sys.executable}" "{Path(__file__).resolve()}" {mode} {quoted}'
    )
    res = run([unshare, "-n", "sh", "-c", script])
    assert res.returncode == 0 and out.exists(), res.stdout + res.stderr
    return json.loads(out.read_text())


def test_unit_identity_binds_mail_ports_without_root(tmp_path):
    """postern.service's identity model with the real binary: uid 65532, only an ambient
    CAP_NET_BIND_SERVICE, no new privileges. postern binds 993/995/465/143/110/587,
    sends READY=1, pings the watchdog, sends STOPPING=1 on SIGTERM and exits 0, and
    while serving it is not root and holds no capability but that one."""
    binary = built_postern()
    setpriv = need_tool("setpriv", "Debian package util-linux")
    # pytest's tmp_path sits below a 0700 root directory that uid 65532 cannot enter.
    work = Path(tempfile.mkdtemp(prefix="postern-unit-identity-"))
    try:
        work.chmod(0o755)
        r = in_private_netns("unit-identity", str(binary), str(work), setpriv, str(tmp_path / "result.json"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert r["ready"], r
    st = r["status"]
    assert st["Uid"] == [str(UNIT_UID)] * 4 and st["Gid"] == [str(UNIT_UID)] * 4, r
    assert st.get("Groups", []) == [], r
    cap_net_bind_service = 1 << 10
    assert int(st["CapEff"][0], 16) == cap_net_bind_service, r
    assert int(st["CapBnd"][0], 16) == cap_net_bind_service, r
    assert st["NoNewPrivs"] == ["1"], r
    assert r["watchdog_pings_in_2_5s"] >= 4, r
    assert "STOPPING=1" in r["messages"], r
    assert any(m.startswith("STATUS=") for m in r["messages"]), r
    assert r["rc"] == 0, r


# --------------------------------------------------------------------------- docker


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """Dockerfile -> [(INSTRUCTION, arguments)], continuation lines joined."""
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        instr, _, args = line.partition(" ")
        out.append((instr.upper(), args.strip()))
    assert not pending, f"{path}: dangling line continuation"
    return out


def test_dockerfile_multi_stage_distroless_nonroot():
    """Docker is not available on the test machines: the Dockerfile is checked as text."""
    instrs = dockerfile_instructions(DOCKER / "Dockerfile")
    stages: list[list[tuple[str, str]]] = []
    for instr, args in instrs:
        if instr == "FROM":
            stages.append([])
        assert stages, f"{instr} before the first FROM"
        stages[-1].append((instr, args))
    froms = [s[0][1] for s in stages]
    assert len(stages) == 2, froms
    assert re.fullmatch(r"rust:1-bookworm AS build", froms[0], re.I), froms[0]
    assert froms[1] == "gcr.io/distroless/cc-debian12:nonroot", froms[1]

    build = " ".join(a for i, a in stages[0] if i == "RUN")
    assert "cargo build --release" in build and "-p postern" in build and "--locked" in build

    final = stages[1]
    users = [a for i, a in final if i == "USER"]
    assert users and users[-1].split(":")[0] in ("65532", "nonroot"), users
    assert not any(u.split(":")[0] in ("0", "root") for u in users), users
    assert not any(i == "RUN" for i, _ in final), "distroless has no shell: no RUN in final stage"
    copies = [a for i, a in final if i == "COPY"]
    assert copies == ["--from=build /out/postern /usr/local/bin/postern"], copies

    entry = json.loads(next(a for i, a in final if i == "ENTRYPOINT"))
    cmd = json.loads(next(a for i, a in final if i == "CMD"))
    assert entry + cmd == ["/usr/local/bin/postern", "run", "-c", "/etc/postern/postern.toml"]
    exposed = {int(p.split("/")[0]) for i, a in final if i == "EXPOSE" for p in a.split()}
    assert exposed == set(MAIL_PORTS) | {9190}, exposed

    # The binary the build installs is the `postern` package's.
    cargo = tomllib.loads((REPO / "crates/postern/Cargo.toml").read_text())
    assert cargo["package"]["name"] == "postern"


def test_dockerignore_keeps_the_workspace():
    patterns = [
        l.strip()
        for l in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if l.strip() and not l.startswith("#")
    ]
    assert {".git", "**/target"} <= set(patterns)
    # Workspace members and their manifests must reach the build.
    for needed in ("crates", "tests", "benches", "Cargo.toml", "Cargo.lock", "config"):
        assert not any(p.strip("/") in (needed, needed + "/**") for p in patterns), needed


# --------------------------------------------------------------------------- README


def test_readme_sections_and_paths():
    text = (DEPLOY / "README.md").read_text()
    for heading in (
        "Install on a systemd host",
        "Deploy on Kubernetes",
        "Certificate rotation",
        "Upgrades without dropping clients",
        "Behind a load balancer (PROXY protocol)",
        "Remote backends over TLS",
        "Kubernetes: Dovecot behind a headless Service",
    ):
        assert re.search(rf"^#+ {re.escape(heading)}\s*$", text, re.M), heading
    # Every repository path the README names exists.
    for rel in set(re.findall(r"(?<![\w/.-])deploy/[\w./@-]+[\w@-]", text)):
        assert (REPO / rel).exists(), f"deploy/README.md names {rel}, which does not exist"


if __name__ == "__main__":
    # Entry points for the tests that run inside their own network namespace
    # (in_private_netns): MODE ARGS... RESULT_JSON.
    mode, *argv = sys.argv[1:]
    if mode == "blue-green":
        result = blue_green_handover(Path(argv[0]), Path(argv[1]))
    elif mode == "unit-identity":
        result = unit_identity_run(Path(argv[0]), Path(argv[1]), argv[2])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    Path(argv[-1]).write_text(json.dumps(result))
