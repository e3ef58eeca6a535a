"""A flood from many addresses does not slow a legitimate client (issue 12): while 192
loopback addresses hold half-open TLS handshakes and never-ending plaintext lines (what
postern times out, the flood opens again) and open and close connections in bursts
(harness/flood.py, its own process, bounded in count and time), the login+fetch latency of a
client from 127.0.0.2 (IMAPS: handshake, greeting, LOGIN, SELECT, FETCH of a message) keeps
its p99 within twice its p99 without the flood, against real Dovecot, nothing exempt.

Both are measured in this test, in many short alternating rounds (quiet, flooded, quiet,
...): on the shared 2-core machine other jobs (builds) make the tail of this latency move by
2-3x from one ten-second stretch to the next, with no flood at all; alternating often makes
that drift fall on both phases alike instead of on one. The report prints both p99s and the
CPU postern spent per second of each phase.
"""

from __future__ import annotations

import os
import time

from harness import LineClient
from harness.edge import GOOD, edge_gateway
from harness.flood import Flood
from harness.procs import cpu_seconds, run_queue_wait

ROUNDS = 10
# Sessions per round and phase: p99 of the ROUNDS * PER_ROUND samples of a phase is its
# 12th-largest value (a few outliers cannot decide it); all rounds take ~20 s on 2 busy cores
# (~45 s when other jobs saturate them).
PER_ROUND = 120
WARMUP = 20
HALF_OPEN, SLOW = 8, 2  # held connections per source address
SOURCES = 64  # source addresses per kind of hostile connection
BURSTS_PER_SECOND = 200


def sources(third: int) -> list[str]:
    return [f"127.0.{third}.{i}" for i in range(1, SOURCES + 1)]


def login_fetch(gw, ctx, mailbox) -> float:
    """Seconds from connect to the fetched message of one IMAPS session (LOGOUT after)."""
    started = time.monotonic()
    with LineClient.tls(gw.addr("imaps"), ctx, "mail.test", source=GOOD, read_greeting=True) as c:
        c.imap_login(mailbox.user, mailbox.password)
        c.imap("s", "SELECT INBOX")
        c.cmd(b"f1 FETCH 1 BODY.PEEK[]")
        lines = c.tagged(b"f1")
        assert lines[-1].startswith(b"f1 OK"), lines[-1]
        took = time.monotonic() - started
        c.cmd(b"z LOGOUT")
        c.tagged(b"z")
    return took


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    return f"p50 {ordered[len(ordered) // 2] * 1000:.1f} ms, p99 {p99(samples) * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"


def test_a_flood_leaves_a_legitimate_clients_p99_within_twice_its_unloaded_p99(
    postern_factory, dovecot, client_ctx, mailbox
):
    # Short timeouts, so that postern closes the flood's held connections within a round when
    # rounds are slow (a busy machine) and the flood opens them again; the legitimate client
    # needs a few ms of each. The
    # per-address limits are on, with room for the legitimate client's ~250 sessions/s.
    gw = edge_gateway(
        postern_factory,
        dovecot,
        listener_keys={"imap-st": {"plaintext_timeout": "2s"}},
        tls_keys={"handshake_timeout": "1s"},
        per_ip_connections=16,
        per_ip_rate=500,
    )
    flood_cfg = {
        "half_open": {"addr": gw.addr("imaps"), "sources": sources(1), "per_source": HALF_OPEN},
        "slow": {"addr": gw.addr("imap-st"), "sources": sources(2), "per_source": SLOW, "byte_every": 0.5},
        "bursts": {"addrs": [gw.addr("imaps"), gw.addr("imap-st")], "sources": sources(3), "per_second": BURSTS_PER_SECOND},
        "duration": 30,
    }
    for _ in range(WARMUP):
        login_fetch(gw, client_ctx, mailbox)
    quiet: list[float] = []
    flooded: list[float] = []
    floods = []
    accepted = 0.0
    # per phase: postern's CPU seconds, wall seconds, and the seconds postern's threads and
    # this client waited for a CPU while runnable (what other processes cost them)
    cpu = {"quiet": [0.0, 0.0], "flooded": [0.0, 0.0]}
    waited = {"quiet": [0.0, 0.0], "flooded": [0.0, 0.0]}

    def phase(name, samples):
        pid, me = gw.proc.pid, os.getpid()
        t0, c0, w0, m0 = time.monotonic(), cpu_seconds(pid), run_queue_wait(pid), run_queue_wait(me)
        samples += [login_fetch(gw, client_ctx, mailbox) for _ in range(PER_ROUND)]
        cpu[name][0] += cpu_seconds(pid) - c0
        cpu[name][1] += time.monotonic() - t0
        waited[name][0] += run_queue_wait(pid) - w0
        waited[name][1] += run_queue_wait(me) - m0

    for _ in range(ROUNDS):
        phase("quiet", quiet)
        before = gw.metrics().value("postern_connections_accepted_total")
        with Flood(flood_cfg) as flood:
            phase("flooded", flooded)
            floods.append(flood.stop())
        accepted += gw.metrics().value("postern_connections_accepted_total") - before - PER_ROUND
    load = {k: f"{c / t:.2f}" for k, (c, t) in cpu.items()}
    per_session = {k: f"postern {p / len(quiet) * 1000:.2f} ms, client {c / len(quiet) * 1000:.2f} ms" for k, (p, c) in waited.items()}
    total = {k: sum(c["opened"][k] for c in floods) for k in ("half_open", "slow", "bursts")}
    flood_cpu = sum(c["cpu_s"] for c in floods) / sum(c["wall_s"] for c in floods)
    report = (
        f"quiet {summary(quiet)}; flooded {summary(flooded)}; postern CPU s/s {load}; "
        f"run-queue wait per session {per_session}; "
        f"flood opened {total}, accepted {accepted:.0f}, its own CPU s/s {flood_cpu:.2f}"
    )
    print(report)
    # the flood was there: every held connection up at once in each round, bursts at their rate
    assert all(c["peak_held"] == SOURCES * (HALF_OPEN + SLOW) for c in floods), report
    assert total["bursts"] >= 0.8 * BURSTS_PER_SECOND * cpu["flooded"][1], report
    assert accepted >= sum(c["opened"]["half_open"] + c["opened"]["slow"] for c in floods), report
    assert p99(flooded) <= 2 * p99(quiet), report
