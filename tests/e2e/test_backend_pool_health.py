"""The backend pool's health (issue 5): servers go down and up by probes and by session
failures, seen in `postern_backend_up` and the state-change log lines; failover past
refused, hung and BYE-greeting servers; warm spares of a dead server; slots released when a
server dies; the all-down goodbyes and /readyz.
"""

from __future__ import annotations

import time
from collections import Counter

from harness import Held, LineClient, ScriptedBackend, Silent, closed_port, imap_hello, run_sessions, wait_for
from harness.pool import FAST_HEALTH, imap_pool, session_backend, session_backends, up, wait_up


# ---- health ---------------------------------------------------------------------------------


def test_killed_server_goes_down_and_rejoins(postern_factory, dovecot, dovecot_factory, client_ctx):
    victim = dovecot_factory()
    servers = [victim.server("imap"), dovecot.server("imap")]
    gw = imap_pool(postern_factory, servers, balance="round-robin", health=FAST_HEALTH)
    wait_up(gw, "pool", servers[0], 1)
    wait_up(gw, "pool", servers[1], 1)
    assert set(session_backends(gw, client_ctx, 4)) == set(servers)

    t_stopped = time.monotonic()
    victim.stop()
    # fall 2 × interval 200 ms (+ timeout): well under 5 s
    wait_up(gw, "pool", servers[0], 0, timeout=5)
    print(f"down seen {time.monotonic() - t_stopped:.3f}s after SIGTERM to Dovecot")
    assert up(gw, "pool", servers[1]) == 1
    used = run_sessions(50, lambda i: session_backend(gw, client_ctx)).check().ok
    assert used == [servers[1]] * 50, Counter(used)

    victim.start()
    t_started = time.monotonic()
    wait_up(gw, "pool", servers[0], 1, timeout=5)
    print(f"up seen {time.monotonic() - t_started:.3f}s after Dovecot's start returned")
    used = session_backends(gw, client_ctx, 6)
    assert Counter(used)[servers[0]] >= 2, used
    gw.wait_for_record(lambda r: r.get("message") == "backend server down" and r.get("server") == servers[0],
                       what="the `backend server down` line")
    gw.wait_for_record(lambda r: r.get("message") == "backend server up" and r.get("server") == servers[0],
                       what="the `backend server up` line")


def test_refusing_greeting_marks_down_and_fails_over(postern_factory, greeters, client_ctx):
    (good,) = greeters(1)
    busy = ScriptedBackend("busy", greeting=b"* BYE [UNAVAILABLE] too busy\r\n").start()
    try:
        servers = [busy.server, good.server]
        gw = imap_pool(postern_factory, servers, balance="round-robin", health=FAST_HEALTH)
        # sessions before and after the probes marked it down: none sees the BYE
        used = session_backends(gw, client_ctx, 4)
        wait_up(gw, "pool", busy.server, 0, timeout=5)
        used += session_backends(gw, client_ctx, 4)
        assert used == [good.server] * 8, used
        assert up(gw, "pool", good.server) == 1
    finally:
        busy.stop()


def test_passive_health_marks_down_without_probes(postern_factory, greeters, client_ctx):
    """Session connect failures count: with probes a minute apart, the failures of real
    sessions alone take the server down (and the sessions themselves fail over)."""
    victim, other = greeters(2)
    servers = [victim.server, other.server]
    gw = imap_pool(postern_factory, servers, balance="round-robin",
                    health={"interval": "60s", "timeout": "1s", "fall": 2, "rise": 2})
    assert set(session_backends(gw, client_ctx, 2)) == set(servers)
    victim.stop()
    used = session_backends(gw, client_ctx, 6)
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
        gw = imap_pool(postern_factory, servers, health=FAST_HEALTH)
        wait_up(gw, "pool", hung.server, 0, timeout=5)
        assert up(gw, "pool", servers[1]) == 1
        used = session_backends(gw, client_ctx, 4)
        assert used == [servers[1]] * 4, used
    finally:
        hung.close()


def test_all_servers_hung_goodbye_within_bound(postern_factory, client_ctx):
    """Three servers that accept but never greet: the client gets the goodbye within the
    pool's bound (2 x connect_timeout), not after 3 x connect_timeout or never."""
    hung = [Silent() for _ in range(3)]
    try:
        gw = imap_pool(postern_factory, [h.server for h in hung], connect_timeout="400ms")
        t0 = time.monotonic()
        with LineClient.tls(gw.addr("imaps"), client_ctx, "mail.test") as s:
            data = s.read_to_eof(timeout=10)
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
    gw = imap_pool(postern_factory, [a.server, b.server], balance="round-robin", warm=2)
    wait_for(lambda: a.idle_for(0.05) >= 2 and b.idle_for(0.05) >= 2, 5, "2 warm spares at each server")
    a.stop()
    run_sessions(10, lambda i: imap_hello(gw.addr("imaps"), client_ctx)).check()


def test_sessions_of_a_dying_server_release_their_slots(postern_factory, dovecot, dovecot_factory, client_ctx):
    """Held sessions on a server that dies end, and its connection count drops to 0: a
    leaked count would starve the server under least-connections after it returns."""
    victim = dovecot_factory()
    servers = [victim.server("imap"), dovecot.server("imap")]
    gw = imap_pool(postern_factory, servers, health=FAST_HEALTH)
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
    gw = imap_pool(postern_factory, servers, balance="round-robin")
    used = run_sessions(30, lambda i: session_backend(gw, client_ctx)).check().ok
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
            with LineClient.tls(gw.addr(lname), client_ctx, "mail.test") as s:
                data = s.read_to_eof(timeout=10)
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
