"""The backend pool's balancing (issue 5), through the real postern binary in front of
real Dovecots and scripted fake backends: round-robin, least-connections, client-hash
(including a server leaving and coming back, and agreement between two postern instances),
per-server limits, unix + TCP servers, warm spares.

Which server a session used is read from the `backend` field of postern's `session ended`
line. Clients bound to 127.0.0.2, 127.0.0.3, ... play different users' addresses.
"""

from __future__ import annotations

import time
from collections import Counter

from harness import Held, LineClient, ScriptedBackend, Silent, imap_hello, wait_for
from harness.pool import FAST_HEALTH, backend_of, imap_pool, session_backends, up, wait_up


# ---- balancing ------------------------------------------------------------------------------


def test_round_robin_spreads_evenly(postern_factory, dovecot, greeters, client_ctx):
    (g,) = greeters(1)
    servers = [dovecot.server("imap"), g.server]
    gw = imap_pool(postern_factory, servers, balance="round-robin")
    used = session_backends(gw, client_ctx, 20)
    assert Counter(used) == {servers[0]: 10, servers[1]: 10}, used
    # strict alternation, not merely an even total
    assert all(a != b for a, b in zip(used, used[1:])), used
    assert g.sessions == 10


def test_round_robin_three_servers(postern_factory, greeters, client_ctx):
    gs = greeters(3)
    gw = imap_pool(postern_factory, [g.server for g in gs], balance="round-robin")
    used = session_backends(gw, client_ctx, 30)
    assert Counter(used) == {g.server: 10 for g in gs}, used
    assert [g.sessions for g in gs] == [10, 10, 10]


def test_least_connections_prefers_the_idle_server(postern_factory, dovecot, greeters, client_ctx):
    (g,) = greeters(1)
    servers = [dovecot.server("imap"), g.server]
    gw = imap_pool(postern_factory, servers, balance="least-connections")
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
        used = session_backends(gw, client_ctx, 10)
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
    used = session_backends(gw, client_ctx, 6)
    assert set(used) == set(servers), used


def test_least_connections_balances_held_sessions_exactly(postern_factory, greeters, client_ctx):
    gs = greeters(3)
    gw = imap_pool(postern_factory, [g.server for g in gs])  # least-connections is the default
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
    gw = imap_pool(postern_factory, [g.server for g in gs], balance="client-hash", health=FAST_HEALTH)
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
    unix = ScriptedBackend("u0", path=tmp_path / "imap.sock").start()
    try:
        servers = [unix.server, tcp.server]
        gw = imap_pool(postern_factory, servers, balance="round-robin")
        used = session_backends(gw, client_ctx, 10)
        assert Counter(used) == {servers[0]: 5, servers[1]: 5}, used
        assert (unix.sessions, tcp.sessions) == (5, 5)
        assert up(gw, "pool", unix.server) == 1
    finally:
        unix.stop()


def test_max_connections_per_server(postern_factory, greeters, client_ctx):
    gs = greeters(2)
    gw = imap_pool(postern_factory, [g.server for g in gs], max_connections_per_server=1)
    addr = gw.addr("imaps")
    held = [Held(addr, client_ctx), Held(addr, client_ctx)]
    try:
        for g in gs:
            wait_for(lambda g=g: gw.metrics().value("postern_backend_connections_active", backend="pool", server=g.server) == 1,
                     5, f"one held session on {g.server}")
        with LineClient.tls(addr, client_ctx, "mail.test") as s:
            data = s.read_to_eof(timeout=10)
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
        gw = imap_pool(postern_factory, servers, balance="round-robin", connect_timeout="300ms")
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
    gw = imap_pool(postern_factory, [g.server], warm=2)
    for i in range(5):
        # spares are (re)filled in the background; each session must then take one
        # (50 ms old and silent: the pool has surely read their greetings and queued them)
        wait_for(lambda: g.idle_for(0.05) >= 2, 5, "2 warm spare connections at the greeter")
        t_client = time.monotonic()
        with LineClient.tls(gw.addr("imaps"), client_ctx, "mail.test") as s:
            assert s.line() == b"* OK ready g0\r\n"
            s.send(b"w1 NOOP\r\n")
            assert s.tagged(b"w1")[-1] == b"w1 OK NOOP done g0\r\n"
            s.send(b"w2 LOGOUT\r\n")
            assert s.tagged(b"w2")[-1].startswith(b"w2 OK")
        assert g.sessions == i + 1
        assert g.session_accepted[-1] < t_client, f"session {i} got a fresh connection, not a warm spare"


def test_client_hash_is_the_same_in_another_postern_instance(postern_factory, greeters, client_ctx):
    """Rendezvous hashing on the client address: a second postern (servers listed in another
    order) puts every client on the same server, so a farm of gateways agrees."""
    gs = greeters(3)
    servers = [g.server for g in gs]
    gw1 = imap_pool(postern_factory, servers, balance="client-hash")
    gw2 = imap_pool(postern_factory, list(reversed(servers)), balance="client-hash")
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
    gw = imap_pool(postern_factory, [g.server], warm=2, forward_client="proxy-v2")
    gw.wait_for_record(lambda r: "warm" in str(r.get("message", "")) and r.get("level") in ("WARN", "warn"),
                       what="a warning that `warm` is ignored")
    assert g.open_conns <= 1  # at most a health probe
