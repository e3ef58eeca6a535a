"""Starting and stopping as a service (issue 7): sd_notify (READY=1 only once the ports
accept connections, WATCHDOG=1 when asked, STOPPING=1 on SIGTERM); bind errors (a taken
address: exit 1 with one message naming the address and the listener); bad drain settings
(exit 2).
"""

from __future__ import annotations

import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest

from harness import PANIC_MARKERS, NotifySocket, free_port, http_get, run_expecting_failure


# ---- sd_notify ---------------------------------------------------------------------------------


@pytest.fixture
def notify_socket():
    d = Path(tempfile.mkdtemp(prefix="pn-notify-"))
    ns = NotifySocket(d / "notify")
    yield ns
    ns.close()
    shutil.rmtree(d, ignore_errors=True)


def _fixed_port_config(postern_factory, dovecot):
    """imaps and pop3s on ports chosen here, so a test can connect before postern logs them."""
    cfg = postern_factory.config(dovecot, protocols=("imap", "pop3"))
    addrs = {}
    for name in ("imaps", "pop3s"):
        port = free_port()
        cfg.get_listener(name)["listen"] = [f"127.0.0.1:{port}"]
        addrs[name] = ("127.0.0.1", port)
    admin_port = free_port()
    cfg.section("admin")["listen"] = f"127.0.0.1:{admin_port}"
    addrs["admin"] = ("127.0.0.1", admin_port)
    return cfg, addrs


def test_sd_notify_ready_only_after_ports_bound_and_stopping_on_sigterm(postern_factory, dovecot, notify_socket):
    cfg, addrs = _fixed_port_config(postern_factory, dovecot)
    p = postern_factory.start(cfg, wait_ready=False, env={"NOTIFY_SOCKET": str(notify_socket.path)})
    _, first, raw = notify_socket.recv(20)
    # Connect at once: READY=1 promises that every port already accepts.
    refused = {}
    for name, addr in addrs.items():
        try:
            socket.create_connection(addr, timeout=2).close()
        except OSError as e:
            refused[name] = repr(e)
    assert first.get("READY") == "1", f"the first datagram must be READY=1, got {raw!r}"
    assert not refused, f"READY=1 arrived before these ports accepted: {refused}"
    assert first.get("STATUS"), f"READY=1 should carry a STATUS= line: {raw!r}"
    p.wait_ready(10)
    assert http_get(addrs["admin"], "/healthz").status == 200

    p.signal(signal.SIGTERM)
    notify_socket.wait_for("STOPPING", "1", 5)
    assert p.wait_exit(10) == 0
    kinds = [("READY" in f, "STOPPING" in f) for _, f, _ in notify_socket.received]
    assert kinds.count((True, False)) == 1, f"READY=1 sent more than once: {[r for _, _, r in notify_socket.received]}"


def test_sd_notify_watchdog_pings_when_asked(postern_factory, dovecot, notify_socket):
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "400000"}
    p = postern_factory.start(cfg, env=env)
    notify_socket.wait_for("READY", "1", 10)
    pings = []
    deadline = time.monotonic() + 3
    while len(pings) < 3:
        at, f, _ = notify_socket.recv(max(0.01, deadline - time.monotonic()))
        if f.get("WATCHDOG") == "1":
            pings.append(at)
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert all(g < 0.4 for g in gaps), f"watchdog pings further apart than WATCHDOG_USEC (0.4s): {gaps}"
    assert p.alive()


# ---- bind errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["listener", "second-address", "admin"])
def test_address_in_use_is_one_clear_error(postern_factory, dovecot, postern_bin, where):
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))  # no SO_REUSEPORT: postern's reuseport bind must fail
        taken.listen(8)
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        if where == "listener":
            cfg.get_listener("imaps")["listen"] = [busy]
        elif where == "second-address":
            cfg.get_listener("imaps")["listen"] = [f"127.0.0.1:{free_port()}", busy]
        else:
            cfg.section("admin")["listen"] = busy
        res = run_expecting_failure(postern_bin, cfg.write())
    out = res.stdout
    assert res.returncode == 1, f"exit {res.returncode}, want 1\n{out}"
    assert not PANIC_MARKERS.search(out), out
    mentions = [line for line in out.splitlines() if busy in line and "listening" not in line]
    assert len(mentions) == 1, f"want one message naming {busy}, got {len(mentions)}:\n{out}"
    what = "admin.listen" if where == "admin" else "imaps"
    assert what in mentions[0], f"the message must name {what}: {mentions[0]}"
    assert "in use" in mentions[0], mentions[0]
    assert '"ready"' not in out, out


@pytest.mark.parametrize(
    "server, key",
    [({"shutdown_grace": "5s", "drain_spread": "10s"}, "server.drain_spread"), ({"shutdown_grace": "soon"}, "server.shutdown_grace")],
    ids=["spread-over-grace", "bad-grace"],
)
def test_bad_drain_settings_are_config_errors(postern_factory, dovecot, postern_bin, server, key):
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    cfg.section("server").update(server)
    res = run_expecting_failure(postern_bin, cfg.write())
    assert res.returncode == 2, f"exit {res.returncode}, want 2\n{res.stdout}"
    assert key in res.stdout, f"the message must name {key}:\n{res.stdout}"
    assert not PANIC_MARKERS.search(res.stdout), res.stdout
