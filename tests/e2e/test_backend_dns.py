"""DNS-discovered pools (`resolve_interval`; docs/configuration.md): a host name in `servers`
is re-resolved on the interval and each address is its own server (health, balancing share,
`server="127.0.0.2:PORT"` series). The resolver is /etc/hosts (harness/hosts.py, restored
afterwards): the name maps to 127.0.0.2 and 127.0.0.3, then to 127.0.0.4; sessions follow
within the interval, a session open on an address that left runs on, the address's series go
when its last session ended, and a name that stops resolving keeps the last good set.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from harness import Postern, ScriptedBackend, free_port, wait_for
from harness.hosts import hosts_name
from harness.pool import FAST_HEALTH, session_backend, wait_up
from harness.sessions import Held

NAME = "postern-pool.test"
IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


@pytest.fixture
def same_port_backends() -> Iterator[tuple[int, dict[str, ScriptedBackend]]]:
    """One ScriptedBackend on each of IPS, all on the same port (a name gives one port)."""
    for _ in range(3):
        port = free_port(IPS[0])
        backends: dict[str, ScriptedBackend] = {}
        try:
            for ip in IPS:
                b = ScriptedBackend(f"b-{ip}", host=ip)
                b.port = port
                backends[ip] = b.start()
            break
        except OSError:
            for b in backends.values():
                b.stop()
    else:
        pytest.fail("no port free on all of 127.0.0.2-4")
    yield port, backends
    for b in backends.values():
        b.stop()


def _series(gw: Postern, server: str) -> bool:
    return gw.metrics().has("postern_backend_up", backend="dns", server=server)


def test_each_address_is_a_server_and_sessions_follow_the_name(postern_factory, client_ctx, same_port_backends):
    port, backends = same_port_backends
    srv = {ip: f"{ip}:{port}" for ip in IPS}
    with hosts_name(NAME) as hosts:
        hosts.set(["127.0.0.2", "127.0.0.3"])
        cfg = postern_factory.config()
        cfg.backend("dns", [f"{NAME}:{port}"], resolve_interval="1s", balance="round-robin", health=FAST_HEALTH)
        cfg.listener("imaps", "imap", "dns")
        gw = postern_factory.start(cfg)

        # each address is a server of its own: its own up series, and a share of sessions
        wait_up(gw, "dns", srv["127.0.0.2"], 1)
        wait_up(gw, "dns", srv["127.0.0.3"], 1)
        wait_for(lambda: not _series(gw, f"{NAME}:{port}"), 10, "the name's own series to go")
        used = [session_backend(gw, client_ctx) for _ in range(6)]
        assert set(used) == {srv["127.0.0.2"], srv["127.0.0.3"]}, used
        assert used.count(srv["127.0.0.2"]) == 3, used

        # a session stays open on one of them while the name moves to 127.0.0.4
        held = Held(gw.addr("imaps"), client_ctx)
        held_ip = next(ip for ip in IPS if f"b-{ip}".encode() in held.greeting)
        other_ip = ({"127.0.0.2", "127.0.0.3"} - {held_ip}).pop()
        try:
            hosts.set(["127.0.0.4"])
            wait_up(gw, "dns", srv["127.0.0.4"], 1)
            # the address without sessions leaves at once, the held one stays until it ends
            wait_for(lambda: not _series(gw, srv[other_ip]), 10, f"{srv[other_ip]}'s series to go")
            assert _series(gw, srv[held_ip])
            used = [session_backend(gw, client_ctx) for _ in range(4)]
            assert set(used) == {srv["127.0.0.4"]}, used
            held.cmd(b"h1 NOOP")
            assert held.tagged(b"h1")[-1].startswith(b"h1 OK NOOP done b-" + held_ip.encode())
        finally:
            held.close()
        wait_for(lambda: not _series(gw, srv[held_ip]), 10, f"{srv[held_ip]}'s series to go after its session")

        # the name stops resolving: logged, and the last good set stays
        mark = gw.log_mark()
        hosts.set([])
        gw.wait_for_record(lambda r: "keeping the last good set" in r.get("message", "") and r.get("name") == f"{NAME}:{port}",
                           timeout=15, what="the failed resolution line", after=mark)
        assert session_backend(gw, client_ctx) == srv["127.0.0.4"]
        assert _series(gw, srv["127.0.0.4"])
