"""The backend pool end to end (issue 5): the real postern binary in front of several real
Dovecots and synthetic greeters.

Balancing laws (round-robin, least-connections, client-hash incl. a departure and a
return), per-server limits, unix + TCP servers, warm spares; health down/up by probes and by
session failures with the `postern_backend_up` metric and state-change log lines; failover
past refused, hung and BYE-greeting servers; PROXY v1/v2, IMAP ID and POP3/SMTP XCLIENT
forwarding seen in Dovecot's own log (IPv4 and IPv6 clients, client spoofing refused);
exec backends (environment, stderr, bulk data, kill on session end, `max_children`, a real
Dovecot `imap` run per session, no zombies); the all-down goodbyes and /readyz.

Which server a session used is read from the `backend` field of postern's `session ended`
line. Clients bound to 127.0.0.2, 127.0.0.3, ... play different users' addresses.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import os
import re
import select
import socket
import ssl
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import Postern, closed_port, read_line, read_until_eof, tls_connect, wait_for
from pool_util import (
    Greeter,
    Held,
    Silent,
    backend_of,
    children,
    imap_hello,
    local_of,
    read_tagged,
    tls_from,
    up,
    wait_no_children,
    wait_up,
)

FAST_HEALTH = {"interval": "200ms", "timeout": "100ms", "fall": 2, "rise": 2}


@pytest.fixture
def greeters(tmp_path):
    """make(n) -> n started Greeters on 127.0.0.1:0; all stopped after the test."""
    made: list[Greeter] = []

    def make(n: int) -> list[Greeter]:
        gs = [Greeter(f"g{len(made) + i}").start() for i in range(n)]
        made.extend(gs)
        return gs

    yield make
    for g in made:
        g.stop()


def _imap_pool(postern_factory, servers: list[str], **backend_kw) -> Postern:
    cfg = postern_factory.config()
    cfg.backend("pool", servers, **backend_kw)
    cfg.listener("imaps", "imap", "pool")
    return postern_factory.start(cfg)


def _session_backends(gw: Postern, ctx, n: int, source_ip: str = "127.0.0.1") -> list[str]:
    """n sequential sessions; each one's server, read after it ended (so the pool's active
    count is back down before the next one starts)."""
    used = []
    for _ in range(n):
        mark = gw.log_mark()
        local = imap_hello(gw.addr("imaps"), ctx, source_ip)
        used.append(backend_of(gw, local, after=mark))
    return used


# ---- balancing ------------------------------------------------------------------------------


def test_round_robin_spreads_evenly(postern_factory, dovecot, greeters, client_ctx):
    (g,) = greeters(1)
    servers = [dovecot.server("imap"), g.server]
    gw = _imap_pool(postern_factory, servers, balance="round-robin")
    used = _session_backends(gw, client_ctx, 20)
    assert Counter(used) == {servers[0]: 10, servers[1]: 10}, used
    # strict alternation, not merely an even total
    assert all(a != b for a, b in zip(used, used[1:])), used
    assert g.sessions == 10


def test_round_robin_three_servers(postern_factory, greeters, client_ctx):
    gs = greeters(3)
    gw = _imap_pool(postern_factory, [g.server for g in gs], balance="round-robin")
    used = _session_backends(gw, client_ctx, 30)
    assert Counter(used) == {g.server: 10 for g in gs}, used
    assert [g.sessions for g in gs] == [10, 10, 10]


def test_least_connections_prefers_the_idle_server(postern_factory, dovecot, greeters, client_ctx):
    (g,) = greeters(1)
    servers = [dovecot.server("imap"), g.server]
    gw = _imap_pool(postern_factory, servers, balance="least-connections")
    addr = gw.addr("imaps")

    held = Held(addr, client_ctx)
    try:
        gw.wait_metric("postern_connections_active", lambda v: v == 1, listener="imaps")
        # which server holds it: the log line comes only at the end, so ask the gauge
        busy = wait_for(
            lambda: next((s for s in servers if gw.metrics().value(
                "postern_backend_connections_active", backend="pool", server=s) == 1), None),
            5, "one server with an active connection")
        idle = next(s for s in servers if s != busy)
        used = _session_backends(gw, client_ctx, 10)
        assert used == [idle] * 10, f"busy {busy}, idle {idle}: {used}"

        # two held on `busy`'s side vs none: a second held session must also go to `idle`
        held2 = Held(addr, client_ctx)
        try:
            wait_for(lambda: gw.metrics().value("postern_backend_connections_active", backend="pool", server=idle) == 1,
                     5, "the second held session on the idle server")
        finally:
            held2.close()
    finally:
        held.close()
    # with both idle again, sequential sessions use both
    used = _session_backends(gw, client_ctx, 6)
    assert set(used) == set(servers), used


def test_least_connections_balances_held_sessions_exactly(postern_factory, greeters, client_ctx):
    gs = greeters(3)
    gw = _imap_pool(postern_factory, [g.server for g in gs])  # least-connections is the default
    addr = gw.addr("imaps")
    held = []
    try:
        for i in range(30):
            held.append(Held(addr, client_ctx))
            # the pool counts a connection from connect to release; wait until this one shows
            wait_for(lambda: gw.metrics().value("postern_backend_connections_active", backend="pool") == i + 1,
                     5, f"{i + 1} active backend connections")
        m = gw.metrics()
        per = {g.server: m.value("postern_backend_connections_active", backend="pool", server=g.server) for g in gs}
        assert sorted(per.values()) == [10, 10, 10], per
        # and the greeters agree (their count may include a health probe in flight)
        assert all(g.open_conns >= 10 for g in gs), [g.open_conns for g in gs]
    finally:
        for h in held:
            h.close()
    wait_for(lambda: gw.metrics().value("postern_backend_connections_active", backend="pool") == 0, 5,
             "every backend connection released")


def test_client_hash_sticks_and_a_departure_moves_only_its_share(postern_factory, greeters, client_ctx):
    gs = greeters(3)
    gw = _imap_pool(postern_factory, [g.server for g in gs], balance="client-hash", health=FAST_HEALTH)
    addr = gw.addr("imaps")
    clients = [f"127.0.0.{i}" for i in range(2, 62)]

    def placement() -> dict[str, str]:
        out = {}
        for ip in clients:
            mark = gw.log_mark()
            local = imap_hello(addr, client_ctx, ip)
            out[ip] = backend_of(gw, local, after=mark)
        return out

    first = placement()
    assert placement() == first, "client-hash moved a client between two rounds with no change"
    share = Counter(first.values())
    assert set(share) == {g.server for g in gs}, share
    assert min(share.values()) >= 6, f"60 clients over 3 servers, a very uneven spread: {share}"

    # one user's parallel connections land together
    ip = clients[0]
    helds = [Held(addr, client_ctx, ip) for _ in range(4)]
    try:
        s = first[ip]
        wait_for(lambda: gw.metrics().value("postern_backend_connections_active", backend="pool", server=s) == 4,
                 5, f"4 parallel sessions of {ip} on {s}")
    finally:
        for h in helds:
            h.close()

    # the server with the median share leaves
    gone = share.most_common()[1][0]
    next(g for g in gs if g.server == gone).stop()
    wait_up(gw, "pool", gone, 0)
    second = placement()
    moved = {ip for ip in clients if second[ip] != first[ip]}
    was_on_gone = {ip for ip in clients if first[ip] == gone}
    assert moved == was_on_gone, f"moved {sorted(moved)}; expected exactly the clients of {gone}: {sorted(was_on_gone)}"
    assert gone not in second.values()
    assert 0.15 <= len(moved) / len(clients) <= 0.55, f"{len(moved)} of {len(clients)} moved"

    # it comes back: its clients return to it, nobody else moves
    next(g for g in gs if g.server == gone).start()
    wait_up(gw, "pool", gone, 1)
    assert placement() == first


def test_unix_and_tcp_servers_mixed(postern_factory, tmp_path, greeters, client_ctx):
    (tcp,) = greeters(1)
    unix = Greeter("u0", path=tmp_path / "imap.sock").start()
    try:
        servers = [unix.server, tcp.server]
        gw = _imap_pool(postern_factory, servers, balance="round-robin")
        used = _session_backends(gw, client_ctx, 10)
        assert Counter(used) == {servers[0]: 5, servers[1]: 5}, used
        assert (unix.sessions, tcp.sessions) == (5, 5)
        assert up(gw, "pool", unix.server) == 1
    finally:
        unix.stop()


def test_max_connections_per_server(postern_factory, greeters, client_ctx):
    gs = greeters(2)
    gw = _imap_pool(postern_factory, [g.server for g in gs], max_connections_per_server=1)
    addr = gw.addr("imaps")
    held = [Held(addr, client_ctx), Held(addr, client_ctx)]
    try:
        for g in gs:
            wait_for(lambda g=g: gw.metrics().value("postern_backend_connections_active", backend="pool", server=g.server) == 1,
                     5, f"one held session on {g.server}")
        s = tls_from(addr, client_ctx)
        try:
            data = read_until_eof(s, timeout=10)
        finally:
            s.close()
        assert data.startswith(b"* BYE [UNAVAILABLE]"), data
    finally:
        held[0].close()
    # a place is free again once that session has ended: the next one is served
    wait_for(lambda: gw.metrics().value("postern_backend_connections_active", backend="pool") == 1, 5,
             "one backend connection left")
    imap_hello(addr, client_ctx)
    held[1].close()
    assert gw.metrics().value("postern_backend_up", backend="pool") == 2


def test_failover_past_a_server_that_never_greets(postern_factory, dovecot, client_ctx):
    hung = Silent()
    try:
        servers = [hung.server, dovecot.server("imap")]
        gw = _imap_pool(postern_factory, servers, balance="round-robin", connect_timeout="300ms")
        used = []
        for i in range(10):
            mark = gw.log_mark()
            t0 = time.monotonic()
            local = imap_hello(gw.addr("imaps"), client_ctx)
            took = time.monotonic() - t0
            used.append(backend_of(gw, local, after=mark))
            assert took < 3, f"session {i} took {took:.2f}s (connect_timeout 300ms)"
        assert used == [servers[1]] * 10, used
        assert gw.metrics().value("postern_backend_connect_failures_total", backend="pool", server=hung.server) >= 1
    finally:
        hung.close()


def test_warm_spares_serve_sessions(postern_factory, greeters, client_ctx):
    (g,) = greeters(1)
    gw = _imap_pool(postern_factory, [g.server], warm=2)
    for i in range(5):
        # spares are (re)filled in the background; each session must then take one
        # (50 ms old and silent: the pool has surely read their greetings and queued them)
        wait_for(lambda: g.idle_for(0.05) >= 2, 5, "2 warm spare connections at the greeter")
        t_client = time.monotonic()
        s = tls_from(gw.addr("imaps"), client_ctx)
        try:
            assert read_line(s) == b"* OK ready g0\r\n"
            s.sendall(b"w1 NOOP\r\n")
            assert read_tagged(s, b"w1")[-1] == b"w1 OK NOOP done g0\r\n"
            s.sendall(b"w2 LOGOUT\r\n")
            assert read_tagged(s, b"w2")[-1].startswith(b"w2 OK")
        finally:
            s.close()
        assert g.sessions == i + 1
        assert g.session_accepted[-1] < t_client, f"session {i} got a fresh connection, not a warm spare"


def test_client_hash_is_the_same_in_another_postern_instance(postern_factory, greeters, client_ctx):
    """Rendezvous hashing on the client address: a second postern (servers listed in another
    order) puts every client on the same server, so a farm of gateways agrees."""
    gs = greeters(3)
    servers = [g.server for g in gs]
    gw1 = _imap_pool(postern_factory, servers, balance="client-hash")
    gw2 = _imap_pool(postern_factory, list(reversed(servers)), balance="client-hash")
    for ip in (f"127.0.0.{i}" for i in range(2, 22)):
        placed = []
        for gw in (gw1, gw2):
            mark = gw.log_mark()
            local = imap_hello(gw.addr("imaps"), client_ctx, ip)
            placed.append(backend_of(gw, local, after=mark))
        assert placed[0] == placed[1], f"{ip}: {placed}"


def test_warm_ignored_with_address_forwarding(postern_factory, greeters, client_ctx):
    """Spares cannot carry a client's PROXY header or ID: `warm` is ignored with a warning,
    and every session's connection is made after the client arrived."""
    (g,) = greeters(1)
    gw = _imap_pool(postern_factory, [g.server], warm=2, forward_client="proxy-v2")
    gw.wait_for_record(lambda r: "warm" in str(r.get("message", "")) and r.get("level") in ("WARN", "warn"),
                       what="a warning that `warm` is ignored")
    assert g.open_conns <= 1  # at most a health probe


# ---- health ---------------------------------------------------------------------------------


def test_killed_server_goes_down_and_rejoins(postern_factory, dovecot, dovecot_factory, client_ctx):
    victim = dovecot_factory()
    servers = [victim.server("imap"), dovecot.server("imap")]
    gw = _imap_pool(postern_factory, servers, balance="round-robin", health=FAST_HEALTH)
    wait_up(gw, "pool", servers[0], 1)
    wait_up(gw, "pool", servers[1], 1)
    assert set(_session_backends(gw, client_ctx, 4)) == set(servers)

    t_stopped = time.monotonic()
    victim.stop()
    # fall 2 × interval 200 ms (+ timeout): well under 5 s
    wait_up(gw, "pool", servers[0], 0, timeout=5)
    print(f"down seen {time.monotonic() - t_stopped:.3f}s after SIGTERM to Dovecot")
    assert up(gw, "pool", servers[1]) == 1
    failures = []
    used = []
    for i in range(50):
        mark = gw.log_mark()
        try:
            local = imap_hello(gw.addr("imaps"), client_ctx)
        except (AssertionError, OSError, EOFError, TimeoutError) as e:
            failures.append(f"session {i}: {e!r}")
            continue
        used.append(backend_of(gw, local, after=mark))
    assert not failures, failures
    assert used == [servers[1]] * 50, Counter(used)

    victim.start()
    t_started = time.monotonic()
    wait_up(gw, "pool", servers[0], 1, timeout=5)
    print(f"up seen {time.monotonic() - t_started:.3f}s after Dovecot's start returned")
    used = _session_backends(gw, client_ctx, 6)
    assert Counter(used)[servers[0]] >= 2, used
    gw.wait_for_record(lambda r: r.get("message") == "backend server down" and r.get("server") == servers[0],
                       what="the `backend server down` line")
    gw.wait_for_record(lambda r: r.get("message") == "backend server up" and r.get("server") == servers[0],
                       what="the `backend server up` line")


def test_refusing_greeting_marks_down_and_fails_over(postern_factory, greeters, client_ctx):
    (good,) = greeters(1)
    busy = Greeter("busy", greeting=b"* BYE [UNAVAILABLE] too busy\r\n").start()
    try:
        servers = [busy.server, good.server]
        gw = _imap_pool(postern_factory, servers, balance="round-robin", health=FAST_HEALTH)
        # sessions before and after the probes marked it down: none sees the BYE
        used = _session_backends(gw, client_ctx, 4)
        wait_up(gw, "pool", busy.server, 0, timeout=5)
        used += _session_backends(gw, client_ctx, 4)
        assert used == [good.server] * 8, used
        assert up(gw, "pool", good.server) == 1
    finally:
        busy.stop()


def test_passive_health_marks_down_without_probes(postern_factory, greeters, client_ctx):
    """Session connect failures count: with probes a minute apart, the failures of real
    sessions alone take the server down (and the sessions themselves fail over)."""
    victim, other = greeters(2)
    servers = [victim.server, other.server]
    gw = _imap_pool(postern_factory, servers, balance="round-robin",
                    health={"interval": "60s", "timeout": "1s", "fall": 2, "rise": 2})
    assert set(_session_backends(gw, client_ctx, 2)) == set(servers)
    victim.stop()
    used = _session_backends(gw, client_ctx, 6)
    assert used == [other.server] * 6, used
    wait_up(gw, "pool", victim.server, 0, timeout=2)
    down = gw.wait_for_record(lambda r: r.get("message") == "backend server down" and r.get("server") == victim.server,
                              what="the `backend server down` line")
    assert down and str(down[0].get("source")).startswith("session"), down
    assert gw.metrics().value("postern_backend_connect_failures_total", backend="pool", server=victim.server) >= 2


def test_probes_mark_a_hung_server_down(postern_factory, dovecot, client_ctx):
    hung = Silent()
    try:
        servers = [hung.server, dovecot.server("imap")]
        gw = _imap_pool(postern_factory, servers, health=FAST_HEALTH)
        wait_up(gw, "pool", hung.server, 0, timeout=5)
        assert up(gw, "pool", servers[1]) == 1
        used = _session_backends(gw, client_ctx, 4)
        assert used == [servers[1]] * 4, used
    finally:
        hung.close()


def test_all_servers_hung_goodbye_within_bound(postern_factory, client_ctx):
    """Three servers that accept but never greet: the client gets the goodbye within the
    pool's bound (2 x connect_timeout), not after 3 x connect_timeout or never."""
    hung = [Silent() for _ in range(3)]
    try:
        gw = _imap_pool(postern_factory, [h.server for h in hung], connect_timeout="400ms")
        t0 = time.monotonic()
        s = tls_from(gw.addr("imaps"), client_ctx)
        try:
            data = read_until_eof(s, timeout=10)
        finally:
            s.close()
        took = time.monotonic() - t0
        assert data.startswith(b"* BYE [UNAVAILABLE]"), data
        assert took < 0.8 + 0.7, f"goodbye after {took:.2f}s (connect_timeout 400ms, bound 2x)"
    finally:
        for h in hung:
            h.close()


def test_warm_spares_of_a_dead_server_are_not_handed_out(postern_factory, greeters, client_ctx):
    """A server dies with spares queued: sessions right after must not get a spare whose
    connection is already closed (greeting, then EOF)."""
    a, b = greeters(2)
    gw = _imap_pool(postern_factory, [a.server, b.server], balance="round-robin", warm=2)
    wait_for(lambda: a.idle_for(0.05) >= 2 and b.idle_for(0.05) >= 2, 5, "2 warm spares at each server")
    a.stop()
    failures = []
    for i in range(10):
        try:
            imap_hello(gw.addr("imaps"), client_ctx)
        except (AssertionError, OSError, EOFError, TimeoutError) as e:
            failures.append(f"session {i}: {e!r}")
    assert not failures, failures


def test_sessions_of_a_dying_server_release_their_slots(postern_factory, dovecot, dovecot_factory, client_ctx):
    """Held sessions on a server that dies end, and its connection count drops to 0: a
    leaked count would starve the server under least-connections after it returns."""
    victim = dovecot_factory()
    servers = [victim.server("imap"), dovecot.server("imap")]
    gw = _imap_pool(postern_factory, servers, health=FAST_HEALTH)
    addr = gw.addr("imaps")
    held = [Held(addr, client_ctx) for _ in range(6)]
    try:
        active = lambda s: gw.metrics().value("postern_backend_connections_active", backend="pool", server=s)  # noqa: E731
        wait_for(lambda: active(servers[0]) == 3 and active(servers[1]) == 3, 5, "3 held sessions on each server")
        victim.stop()
        # its clients see the end (Dovecot's BYE, then EOF) and close, as mail clients do
        ended = wait_for(lambda: [h for h in held if h.at_eof()] if sum(h.at_eof() for h in held) == 3 else None,
                         10, "3 held sessions to end")
        for h in ended:
            h.sock.close()
        wait_for(lambda: active(servers[0]) == 0, 5, "the dead server's connections released")
        assert active(servers[1]) == 3
        victim.start()
        wait_up(gw, "pool", servers[0], 1, timeout=5)
        # least-connections: 3 on the survivor, 0 on the returned one, so the next 3 go there
        more = [Held(addr, client_ctx) for _ in range(3)]
        held += more
        wait_for(lambda: active(servers[0]) == 3, 5, "new sessions on the returned server")
    finally:
        for h in held:
            h.close()


def test_failover_on_connect(postern_factory, dovecot, client_ctx):
    dead = f"127.0.0.1:{closed_port()}"
    servers = [dead, dovecot.server("imap")]
    gw = _imap_pool(postern_factory, servers, balance="round-robin")
    failures = []
    used = []
    for i in range(30):
        mark = gw.log_mark()
        try:
            local = imap_hello(gw.addr("imaps"), client_ctx)
        except (AssertionError, OSError, EOFError, TimeoutError) as e:
            failures.append(f"session {i}: {e!r}")
            continue
        used.append(backend_of(gw, local, after=mark))
    assert not failures, failures
    assert used == [servers[1]] * 30, Counter(used)
    m = gw.metrics()
    assert m.value("postern_backend_connect_failures_total", backend="pool", server=dead) >= 1
    assert m.value("postern_backend_connect_failures_total", backend="pool", server=servers[1]) == 0
    assert m.value("postern_backend_connect_duration_seconds_count", backend="pool", server=servers[1]) >= 30


def test_all_backends_down_goodbyes(postern_factory, client_ctx):
    cfg = postern_factory.config()
    for proto, lname in (("imap", "imaps"), ("pop3", "pop3s"), ("smtp", "submissions")):
        cfg.backend(proto, [f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"], health=FAST_HEALTH,
                    connect_timeout="1s")
        cfg.listener(lname, proto, proto)
    gw = postern_factory.start(cfg)
    expect = {"imaps": b"* BYE [UNAVAILABLE]", "pop3s": b"-ERR [SYS/TEMP]", "submissions": b"421 4.3.0"}

    def check_goodbyes(phase: str) -> None:
        for lname, prefix in expect.items():
            s = tls_connect(gw.addr(lname), client_ctx, server_hostname="mail.test")
            try:
                data = read_until_eof(s, timeout=10)
            finally:
                s.close()
            lines = data.split(b"\r\n")
            assert data.startswith(prefix) and data.endswith(b"\r\n") and len(lines) == 2, f"{phase} {lname}: {data!r}"

    check_goodbyes("before the health checks marked them down")
    for b in ("imap", "pop3", "smtp"):
        for s in gw.config.get_backend(b)["servers"]:
            wait_up(gw, b, s, 0, timeout=5)
    check_goodbyes("after the health checks marked them down")
    assert gw.alive()
    assert gw.get("/healthz").status == 200
    wait_for(lambda: gw.get("/readyz").status == 503, 5, "/readyz 503 with every server down")
    rec = gw.wait_session_end(listener="imaps", outcome="backend_unavailable")
    assert rec


# ---- client address forwarding ----------------------------------------------------------------


def _dovecot_login_line(dv, user: str, service: str, timeout: float = 10.0) -> str:
    pat = re.compile(rf"{service}-login: .*Login: user=<{re.escape(user)}>.*")

    def find():
        m = pat.findall(dv.log_text())
        return m[-1] if m else None

    return wait_for(find, timeout, f"Dovecot's {service}-login Login line for {user}",
                    on_timeout=lambda: "\n".join(dv.log_text().splitlines()[-20:]))


def _imap_login_from(gw: Postern, ctx, user: str, password: str, source_ip: str) -> list[bytes]:
    """Greeting, NOOP, LOGIN, LOGOUT over a raw socket; returns every line the client got."""
    s = tls_from(gw.addr("imaps"), ctx, source_ip)
    try:
        got = [read_line(s)]
        s.sendall(b"a1 NOOP\r\n")
        got += read_tagged(s, b"a1")
        s.sendall(f"a2 LOGIN {user} {password}\r\n".encode())
        got += read_tagged(s, b"a2")
        s.sendall(b"a3 LOGOUT\r\n")
        got += read_tagged(s, b"a3")
        rest = read_until_eof(s)
        got += rest.splitlines(keepends=True)
        return got
    finally:
        s.close()


def _pop3_login_from(gw: Postern, ctx, user: str, password: str, source_ip: str) -> list[bytes]:
    s = tls_from(gw.addr("pop3s"), ctx, source_ip)
    try:
        got = [read_line(s)]
        s.sendall(b"CAPA\r\n")
        while True:
            got.append(read_line(s))
            if got[-1] == b".\r\n":
                break
        for cmd in (f"USER {user}", f"PASS {password}", "STAT", "QUIT"):
            s.sendall(cmd.encode() + b"\r\n")
            got.append(read_line(s))
        got += read_until_eof(s).splitlines(keepends=True)
        return got
    finally:
        s.close()


def _smtp_login_from(gw: Postern, ctx, user: str, password: str, source_ip: str) -> list[bytes]:
    """Greeting, EHLO, AUTH PLAIN, QUIT over a raw socket; every line the client got."""
    s = tls_from(gw.addr("submissions"), ctx, source_ip)
    try:
        got = [read_line(s)]
        s.sendall(b"EHLO client.test\r\n")
        while True:
            got.append(read_line(s))
            if got[-1][3:4] == b" ":
                break
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        s.sendall(f"AUTH PLAIN {token}\r\n".encode())
        got.append(read_line(s))
        s.sendall(b"QUIT\r\n")
        got.append(read_line(s))
        got += read_until_eof(s).splitlines(keepends=True)
        return got
    finally:
        s.close()


@pytest.mark.parametrize("version", ["proxy-v2", "proxy-v1"])
def test_proxy_header_gives_dovecot_the_client_address(postern_factory, dovecot, client_ctx, version):
    cfg = postern_factory.config(dovecot, protocols=("imap", "pop3", "smtp"), forward_client=version,
                                 dovecot_listeners={"imap": "imap_haproxy", "pop3": "pop3_haproxy",
                                                    "smtp": "submission_haproxy"},
                                 health=FAST_HEALTH)
    probes_before = dovecot.log_text().count("Aborted login by logging out")
    gw = postern_factory.start(cfg)
    user, password = dovecot.new_user()
    got = _imap_login_from(gw, client_ctx, user, password, "127.0.0.2")
    assert got[0].startswith(b"* OK"), got
    assert got[-1].startswith(b"a3 OK"), got
    line = _dovecot_login_line(dovecot, user, "imap")
    assert "rip=127.0.0.2," in line, line

    user, password = dovecot.new_user()
    got = _pop3_login_from(gw, client_ctx, user, password, "127.0.0.3")
    assert got[0].startswith(b"+OK"), got
    line = _dovecot_login_line(dovecot, user, "pop3")
    assert "rip=127.0.0.3," in line, line

    user, password = dovecot.new_user()
    got = _smtp_login_from(gw, client_ctx, user, password, "127.0.0.4")
    assert got[0].startswith(b"220 ") and got[-1].startswith(b"221 "), got
    line = _dovecot_login_line(dovecot, user, "submission")
    assert "rip=127.0.0.4," in line, line

    # health probes on the haproxy listeners (a LOCAL header, then the greeting) pass: after
    # more than `fall` probe rounds both servers are still up
    wait_for(lambda: dovecot.log_text().count("Aborted login by logging out") >= probes_before + 8, 10,
             "postern's health probes in Dovecot's log")
    assert up(gw, "imap", dovecot.server("imap_haproxy")) == 1
    assert up(gw, "pop3", dovecot.server("pop3_haproxy")) == 1


def test_protocol_forwarding_imap_id(postern_factory, dovecot, client_ctx):
    cfg = postern_factory.config(dovecot, protocols=("imap",), forward_client="protocol")
    gw = postern_factory.start(cfg)
    user, password = dovecot.new_user()
    got = _imap_login_from(gw, client_ctx, user, password, "127.0.0.2")
    # the client sees the greeting, then only replies to its own commands: no `* ID`, no
    # reply tagged with postern's ID tag
    assert got[0].startswith(b"* OK"), got
    assert [l for l in got[1:] if not l.startswith((b"a1 ", b"a2 ", b"a3 ", b"* BYE"))] == [], got
    assert got[1].startswith(b"a1 OK"), got
    assert got[2].startswith(b"a2 OK"), got
    line = _dovecot_login_line(dovecot, user, "imap")
    assert "rip=127.0.0.2," in line, line


def test_protocol_forwarding_keeps_early_client_bytes_in_order(postern_factory, dovecot, client_ctx):
    cfg = postern_factory.config(dovecot, protocols=("imap",), forward_client="protocol")
    gw = postern_factory.start(cfg)
    s = tls_from(gw.addr("imaps"), client_ctx, "127.0.0.2")
    try:
        # sent before the greeting arrives, i.e. while postern still talks ID with Dovecot
        s.sendall(b"p1 NOOP\r\np2 CAPABILITY\r\np3 LOGOUT\r\n")
        got = [read_line(s)]
        got += read_tagged(s, b"p1")
        got += read_tagged(s, b"p2")
        got += read_tagged(s, b"p3")
        assert read_until_eof(s) == b""
    finally:
        s.close()
    assert got[0].startswith(b"* OK"), got
    assert got[1].startswith(b"p1 OK"), got
    assert got[2].startswith(b"* CAPABILITY") and got[3].startswith(b"p2 OK"), got
    assert got[4].startswith(b"* BYE") and got[5].startswith(b"p3 OK"), got
    assert len(got) == 6, got


def test_client_cannot_spoof_its_address_with_id_or_xclient(postern_factory, dovecot, client_ctx):
    """With `protocol` forwarding Dovecot believes whatever postern's connection says; a
    client's own ID x-originating-ip / XCLIENT must not reach it, so the log keeps the real
    address."""
    cfg = postern_factory.config(dovecot, protocols=("imap", "pop3"), forward_client="protocol")
    gw = postern_factory.start(cfg)

    user, password = dovecot.new_user()
    s = tls_from(gw.addr("imaps"), client_ctx, "127.0.0.2")
    try:
        assert read_line(s).startswith(b"* OK")
        s.sendall(b'c1 ID ("x-originating-ip" "192.0.2.66" "x-originating-port" "4242")\r\n')
        reply = read_tagged(s, b"c1")
        assert reply[-1].startswith(b"c1 BAD"), reply
        s.sendall(f"c2 LOGIN {user} {password}\r\nc3 LOGOUT\r\n".encode())
        assert read_tagged(s, b"c2")[-1].startswith(b"c2 OK")
        assert read_tagged(s, b"c3")[-1].startswith(b"c3 OK")
    finally:
        s.close()
    line = _dovecot_login_line(dovecot, user, "imap")
    assert "rip=127.0.0.2," in line, line

    user, password = dovecot.new_user()
    s = tls_from(gw.addr("pop3s"), client_ctx, "127.0.0.2")
    try:
        assert read_line(s).startswith(b"+OK")
        s.sendall(b"XCLIENT ADDR=192.0.2.66 PORT=4242\r\n")
        assert read_line(s).startswith(b"-ERR")
        for cmd in (f"USER {user}", f"PASS {password}", "QUIT"):
            s.sendall(cmd.encode() + b"\r\n")
            assert read_line(s).startswith(b"+OK")
    finally:
        s.close()
    line = _dovecot_login_line(dovecot, user, "pop3")
    assert "rip=127.0.0.2," in line, line
    assert "192.0.2.66" not in dovecot.log_text()


@pytest.mark.parametrize("forward", ["proxy-v2", "proxy-v1", "protocol"])
def test_ipv6_client_address_forwarded(postern_factory, dovecot, client_ctx, forward):
    listener = "imap" if forward == "protocol" else "imap_haproxy"
    cfg = postern_factory.config()
    cfg.backend("imap", [dovecot.server(listener)], forward_client=forward)
    cfg.listener("imaps6", "imap", "imap", listen=["[::1]:0"])
    gw = postern_factory.start(cfg)
    user, password = dovecot.new_user()
    s = tls_from(gw.addr("imaps6"), client_ctx, "::1")
    try:
        assert read_line(s).startswith(b"* OK")
        s.sendall(f"a1 LOGIN {user} {password}\r\na2 LOGOUT\r\n".encode())
        assert read_tagged(s, b"a1")[-1].startswith(b"a1 OK")
        assert read_tagged(s, b"a2")[-1].startswith(b"a2 OK")
    finally:
        s.close()
    line = _dovecot_login_line(dovecot, user, "imap")
    assert "rip=::1," in line, line


def test_pop3_xclient_refused_by_untrusted_dovecot(postern_factory, dovecot_factory, client_ctx):
    """An untrusted Dovecot ignores XCLIENT: postern must not run the session under its own
    address; the client gets the no-backend goodbye instead."""
    dv = dovecot_factory(trusted=False)
    cfg = postern_factory.config(dv, protocols=("pop3",), forward_client="protocol")
    gw = postern_factory.start(cfg)
    s = tls_from(gw.addr("pop3s"), client_ctx, "127.0.0.2")
    try:
        data = read_until_eof(s, timeout=10)
    finally:
        s.close()
    assert data.startswith(b"-ERR [SYS/TEMP]") and data.count(b"\r\n") == 1, data
    gw.wait_for_record(lambda r: "trusted" in str(r.get("error", "")), what="a log line with the XCLIENT refusal")


def test_protocol_forwarding_pop3_xclient(postern_factory, dovecot, client_ctx):
    cfg = postern_factory.config(dovecot, protocols=("pop3",), forward_client="protocol")
    gw = postern_factory.start(cfg)
    user, password = dovecot.new_user()
    got = _pop3_login_from(gw, client_ctx, user, password, "127.0.0.2")
    assert got[0].startswith(b"+OK"), got
    # CAPA: "+OK", capability names, "." -- an XCLIENT reply leaking through would put a
    # second status line in front of the capability list
    assert got[1].startswith(b"+OK"), got
    end = got.index(b".\r\n")
    assert all(not l.startswith((b"+OK", b"-ERR")) for l in got[2:end]), got
    user_r, pass_r, stat_r, quit_r = got[end + 1:end + 5]
    assert user_r.startswith(b"+OK") and pass_r.startswith(b"+OK"), got
    assert re.match(rb"\+OK \d+ \d+\r\n", stat_r), got
    assert quit_r.startswith(b"+OK"), got
    assert got[end + 5:] == [], got
    line = _dovecot_login_line(dovecot, user, "pop3")
    assert "rip=127.0.0.2," in line, line


def test_protocol_forwarding_smtp_xclient(postern_factory, dovecot, client_ctx):
    cfg = postern_factory.config(dovecot, protocols=("smtp",), forward_client="protocol")
    gw = postern_factory.start(cfg)
    user, password = dovecot.new_user()
    got = _smtp_login_from(gw, client_ctx, user, password, "127.0.0.2")
    # exactly one greeting (XCLIENT's fresh 220 replaces Dovecot's first), then the EHLO reply
    assert got[0].startswith(b"220 "), got
    assert [l for l in got if l.startswith(b"220")] == [got[0]], got
    assert got[1].startswith(b"250"), got
    assert got[-2].startswith(b"235 "), got
    assert got[-1].startswith(b"221 "), got
    line = _dovecot_login_line(dovecot, user, "submission")
    assert "rip=127.0.0.2," in line, line


# ---- exec backends -----------------------------------------------------------------------------

EXEC_SCRIPT = r"""#!/bin/sh
# A stdin/stdout IMAP-ish server for postern's exec backend test.
printf '* OK exec ready\r\n'
while IFS= read -r line; do
  line=$(printf '%s' "$line" | tr -d '\r')
  tag=${line%% *}
  cmd=${line#* }
  case "$cmd" in
    ENV)
      echo "exec-test: env asked by $TCPREMOTEIP" >&2
      printf '* ENV TCPREMOTEIP=%s REMOTE_HOST=%s TCPREMOTEPORT=%s PROTO=%s\r\n' \
        "$TCPREMOTEIP" "$REMOTE_HOST" "$TCPREMOTEPORT" "$PROTO"
      printf '%s OK ENV done\r\n' "$tag" ;;
    SLEEP)
      printf '%s OK sleeping\r\n' "$tag"
      exec sleep 60 ;;
    LOGOUT)
      printf '* BYE bye\r\n%s OK LOGOUT done\r\n' "$tag"
      exit 0 ;;
    *)
      printf '%s BAD unknown\r\n' "$tag" ;;
  esac
done
"""


def _exec_pool(postern_factory, tmp_path, max_children: int = 200, **listener_kw) -> Postern:
    script = tmp_path / "exec-imapd.sh"
    script.write_text(EXEC_SCRIPT)
    script.chmod(0o755)
    cfg = postern_factory.config()
    cfg.data["backend"].append({"name": "uw", "exec": [str(script)], "max_children": max_children})
    cfg.listener("imaps", "imap", "uw", **listener_kw)
    return postern_factory.start(cfg)


def _exec_env_session(addr, ctx, source_ip: str) -> tuple[str, dict[str, str]]:
    s = tls_from(addr, ctx, source_ip)
    try:
        local = local_of(s)
        greeting = read_line(s)
        assert greeting == b"* OK exec ready\r\n", greeting
        s.sendall(b"e1 ENV\r\n")
        lines = read_tagged(s, b"e1")
        assert lines[-1].startswith(b"e1 OK"), lines
        env = dict(kv.split("=", 1) for kv in lines[0].decode().split()[2:])
        s.sendall(b"e2 LOGOUT\r\n")
        assert read_tagged(s, b"e2")[-1].startswith(b"e2 OK")
        assert read_until_eof(s) == b""
        return local, env
    finally:
        s.close()


def test_exec_backend_environment_and_no_zombies(postern_factory, tmp_path, client_ctx):
    gw = _exec_pool(postern_factory, tmp_path)
    addr = gw.addr("imaps")
    mark = gw.log_mark()

    def one(i: int):
        ip = f"127.0.0.{2 + i % 50}"
        local, env = _exec_env_session(addr, client_ctx, ip)
        return ip, local, env

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(100)))
    for ip, local, env in results:
        port = local.rsplit(":", 1)[1]
        assert env == {"TCPREMOTEIP": ip, "REMOTE_HOST": ip, "TCPREMOTEPORT": port, "PROTO": "TCP"}, (local, env)
    ended = gw.wait_session_end(after=mark, count=100, listener="imaps")
    assert all(r.get("outcome") == "closed" for r in ended), Counter(r.get("outcome") for r in ended)
    assert all(str(r.get("backend", "")).startswith("exec:") for r in ended), Counter(r.get("backend") for r in ended)
    wait_no_children(gw.pid)
    # the children's stderr went to postern's log
    gw.wait_for_record(lambda r: r.get("message") == "exec backend stderr" and "exec-test: env asked by 127.0.0." in str(r.get("stderr", "")),
                       count=100, what="100 stderr lines of the exec children")


def test_exec_environment_ipv6_client(postern_factory, tmp_path, client_ctx):
    script = tmp_path / "exec-imapd.sh"
    script.write_text(EXEC_SCRIPT)
    script.chmod(0o755)
    cfg = postern_factory.config()
    cfg.data["backend"].append({"name": "uw", "exec": [str(script)]})
    cfg.listener("imaps6", "imap", "uw", listen=["[::1]:0"])
    gw = postern_factory.start(cfg)
    local, env = _exec_env_session(gw.addr("imaps6"), client_ctx, "::1")
    assert env == {"TCPREMOTEIP": "::1", "REMOTE_HOST": "::1", "TCPREMOTEPORT": local.rsplit(":", 1)[1], "PROTO": "TCP"}, env


def test_exec_child_killed_when_client_vanishes(postern_factory, tmp_path, client_ctx):
    # after the client's EOF the relay lingers for min(idle_timeout, 30 s) waiting for the
    # backend's side to end; a child that ignores EOF must be killed when that runs out
    gw = _exec_pool(postern_factory, tmp_path, idle_timeout="1s")
    mark = gw.log_mark()
    s = tls_from(gw.addr("imaps"), client_ctx)
    local = local_of(s)
    read_line(s)
    s.sendall(b"e1 SLEEP\r\n")
    assert read_tagged(s, b"e1")[-1].startswith(b"e1 OK")
    # the script answers, then execs sleep: wait until the child is the sleeper
    kids = wait_for(lambda: [k for k in children(gw.pid) if k[2] == "sleep"], 5, "postern's exec child to sleep",
                    on_timeout=lambda: str(children(gw.pid)))
    assert len(kids) == 1 and len(children(gw.pid)) == 1, children(gw.pid)
    s.close()  # the client goes away while the child would sleep for a minute
    gw.wait_session_end(after=mark, peer=local, timeout=10)
    wait_no_children(gw.pid, timeout=5)


def test_exec_max_children(postern_factory, tmp_path, client_ctx):
    gw = _exec_pool(postern_factory, tmp_path, max_children=2)
    addr = gw.addr("imaps")
    mark = gw.log_mark()
    held = [tls_from(addr, client_ctx) for _ in range(2)]
    try:
        for h in held:
            assert read_line(h) == b"* OK exec ready\r\n"
        s = tls_from(addr, client_ctx)
        try:
            data = read_until_eof(s, timeout=10)
        finally:
            s.close()
        assert data.startswith(b"* BYE [UNAVAILABLE]"), data
    finally:
        for h in held:
            h.close()
    gw.wait_session_end(after=mark, count=3, listener="imaps")
    wait_no_children(gw.pid)
    # a place is free again
    local, env = _exec_env_session(addr, client_ctx, "127.0.0.1")
    assert env["TCPREMOTEIP"] == "127.0.0.1"


def _pump(s, payload: bytes, deadline: float) -> bytes:
    """Send `payload` and read as many bytes back, both at once, on one thread (an OpenSSL
    connection must not be used from two threads at the same time)."""
    s.setblocking(False)
    got = bytearray()
    sent = 0
    while len(got) < len(payload):
        assert time.monotonic() < deadline, f"sent {sent}, got back only {len(got)} of {len(payload)} bytes"
        want_write = sent < len(payload)
        r, w, _ = select.select([s], [s] if want_write else [], [], 0.5)
        if w:
            try:
                sent += s.send(payload[sent:sent + 65536])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                pass
        if r or s.pending():
            try:
                chunk = s.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                continue
            assert chunk, f"EOF after {len(got)} of {len(payload)} bytes"
            got += chunk
    return bytes(got)


ECHO_SCRIPT = "#!/bin/sh\nprintf '* OK echo ready\\r\\n'\nexec cat\n"


def test_exec_relays_bulk_data_intact(postern_factory, tmp_path, client_ctx):
    script = tmp_path / "echo.sh"
    script.write_text(ECHO_SCRIPT)
    script.chmod(0o755)
    cfg = postern_factory.config()
    cfg.data["backend"].append({"name": "echo", "exec": [str(script)]})
    cfg.listener("imaps", "imap", "echo")
    gw = postern_factory.start(cfg)
    # binary data as an IMAP literal: before a login postern's command watch holds a
    # partial line until its line end (by design), literal bytes pass at once
    data = os.urandom(3 * 1024 * 1024 + 17)
    payload = b"a1 APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\n"
    s = tls_from(gw.addr("imaps"), client_ctx)
    try:
        assert read_line(s) == b"* OK echo ready\r\n"
        got = _pump(s, payload, deadline=time.monotonic() + 30)
    finally:
        s.close()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()
    wait_no_children(gw.pid)


def test_exec_child_with_loud_stderr(postern_factory, tmp_path, client_ctx):
    """A child writing far more than a pipe holds (64 KiB) to stderr before its greeting
    must not block: postern drains stderr into its log."""
    script = tmp_path / "loud.sh"
    script.write_text("#!/bin/sh\n"
                      "i=0; while [ $i -lt 3000 ]; do echo \"loud-stderr line $i padding padding padding padding padding\" >&2; i=$((i+1)); done\n"
                      "printf '* OK loud ready\\r\\n'\nexec cat\n")
    script.chmod(0o755)
    cfg = postern_factory.config()
    cfg.data["backend"].append({"name": "loud", "exec": [str(script)]})
    cfg.listener("imaps", "imap", "loud")
    gw = postern_factory.start(cfg)
    s = tls_from(gw.addr("imaps"), client_ctx)
    try:
        assert read_line(s) == b"* OK loud ready\r\n"
    finally:
        s.close()
    gw.wait_for_record(lambda r: "loud-stderr line 2999 " in str(r.get("stderr", "")), what="the child's last stderr line in the log")
    wait_no_children(gw.pid)


def test_exec_child_that_never_greets(postern_factory, tmp_path, client_ctx):
    script = tmp_path / "mute.sh"
    script.write_text("#!/bin/sh\nexec sleep 60\n")
    script.chmod(0o755)
    cfg = postern_factory.config()
    cfg.data["backend"].append({"name": "mute", "exec": [str(script)], "connect_timeout": "500ms"})
    cfg.listener("imaps", "imap", "mute")
    gw = postern_factory.start(cfg)
    s = tls_from(gw.addr("imaps"), client_ctx)
    try:
        data = read_until_eof(s, timeout=10)
    finally:
        s.close()
    assert data.startswith(b"* BYE [UNAVAILABLE]") and data.count(b"\r\n") == 1, data
    wait_no_children(gw.pid, timeout=5)


def test_exec_program_missing(postern_factory, postern_bin, tmp_path, client_ctx):
    """A missing program is a config error (check-config and run exit 2 naming it); one that
    disappears after start gets each session the goodbye, and the log names it."""
    missing = tmp_path / "no-such-imapd"
    cfg = postern_factory.config()
    cfg.data["backend"].append({"name": "gone", "exec": [str(missing)]})
    cfg.listener("imaps", "imap", "gone")
    res = subprocess.run([str(postern_bin), "check-config", "-c", str(cfg.write())], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and str(missing) in res.stderr and "does not exist" in res.stderr, res

    missing.write_text("#!/bin/sh\necho '* OK ready'\n")
    missing.chmod(0o755)
    gw = postern_factory.start(cfg)
    missing.unlink()
    s = tls_from(gw.addr("imaps"), client_ctx)
    try:
        data = read_until_eof(s, timeout=10)
    finally:
        s.close()
    assert data.startswith(b"* BYE [UNAVAILABLE]") and data.count(b"\r\n") == 1, data
    gw.wait_for_record(lambda r: str(missing) in json.dumps(r), what=f"a log line naming {missing}")
    assert gw.alive()


def _dovecot_exec_gateway(postern_factory, dovecot, user: str, test_root, extra_conf: str = "") -> Postern:
    """postern whose `imaps` runs Dovecot's `imap` binary per session, pre-authenticated as
    `user` (uid nobody, the shared Dovecot's maildirs)."""
    conf_dir = test_root / f"exec-imap-{user}"
    conf_dir.mkdir(mode=0o755)
    conf = conf_dir / "imap.conf"
    conf.write_text(f"mail_location = maildir:{dovecot.root}/mail/%u/Maildir\nlog_path = /dev/stderr\n"
                    f"base_dir = {conf_dir}/run\n{extra_conf}")
    conf.chmod(0o644)
    argv = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
            "/usr/bin/env", f"USER={user}", f"HOME={dovecot.root}/mail/{user}",
            "/usr/lib/dovecot/imap", "-c", str(conf)]
    cfg = postern_factory.config()
    cfg.data["backend"].append({"name": "dvexec", "exec": argv})
    cfg.listener("imaps", "imap", "dvexec")
    return postern_factory.start(cfg)


def test_exec_real_dovecot_imap_preauth(postern_factory, dovecot, mailbox, test_root, client_ctx):
    """A real stdin/stdout IMAP server per session: Dovecot's `imap` binary, started
    pre-authenticated as the mailbox's user (as rsh/ssh-style IMAP does): `* PREAUTH`
    greeting, the mailbox's messages byte for byte, LOGOUT, the child gone."""
    gw = _dovecot_exec_gateway(postern_factory, dovecot, mailbox.user, test_root)
    for _ in range(3):
        s = tls_from(gw.addr("imaps"), client_ctx)
        try:
            greeting = read_line(s)
            assert greeting.startswith(b"* PREAUTH") and f"Logged in as {mailbox.user}".encode() in greeting, greeting
            s.sendall(b"b1 SELECT INBOX\r\n")
            lines = read_tagged(s, b"b1")
            assert b"* 2 EXISTS\r\n" in lines and lines[-1].startswith(b"b1 OK"), lines
            s.sendall(b"b2 FETCH 1 BODY.PEEK[]\r\n")
            head = read_line(s)
            size = int(re.search(rb"\{(\d+)\}\r\n$", head).group(1))
            body = b""
            while len(body) < size:
                body += s.recv(size - len(body))
            assert body == mailbox.messages[0]
            assert read_tagged(s, b"b2")[-1].startswith(b"b2 OK")
            s.sendall(b"b3 LOGOUT\r\n")
            assert read_tagged(s, b"b3")[-1].startswith(b"b3 OK")
            assert read_until_eof(s) == b""
        finally:
            s.close()
    wait_no_children(gw.pid)


def test_exec_preauth_compress_deflate(postern_factory, dovecot, test_root, client_ctx):
    """RFC 4978 after a PREAUTH greeting (no LOGIN ever passes postern): once COMPRESS is
    accepted the client's bytes are deflate, not lines, and must still reach the server.
    (Hung until 2f05c02: the client watch never ended without a login and held the deflate
    bytes waiting for a line end.)"""
    user, _ = dovecot.new_user()
    gw = _dovecot_exec_gateway(postern_factory, dovecot, user, test_root,
                               "mail_plugins = zlib\nprotocol imap {\n  mail_plugins = zlib imap_zlib\n}\n")
    s = tls_from(gw.addr("imaps"), client_ctx)
    try:
        greeting = read_line(s)
        assert greeting.startswith(b"* PREAUTH") and b"COMPRESS=DEFLATE" in greeting, greeting
        s.sendall(b"z1 COMPRESS DEFLATE\r\n")
        assert read_tagged(s, b"z1")[-1].startswith(b"z1 OK"), "COMPRESS refused"
        comp, decomp = zlib.compressobj(wbits=-15), zlib.decompressobj(wbits=-15)
        s.sendall(comp.compress(b"z2 NOOP\r\n") + comp.flush(zlib.Z_SYNC_FLUSH))
        got = b""
        deadline = time.monotonic() + 3
        while b"z2 " not in got:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no reply to the compressed NOOP within 3 s (got {got!r})"
            s.settimeout(remaining)
            try:
                chunk = s.recv(4096)
            except (TimeoutError, socket.timeout):
                continue
            assert chunk, f"closed after {got!r}"
            got += decomp.decompress(chunk)
        assert b"z2 OK" in got, got
    finally:
        s.close()
