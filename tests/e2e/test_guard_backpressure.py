"""postern's own replies obey back-pressure (issue 11): a client that sprays commands postern
answers itself and never reads cannot make postern queue replies without bound.

The spray is a command the guard refuses without counting it as an address claim, so the
session is not ended after three: `STARTTLS` inside TLS (rule T4), in IMAP, POP3 and SMTP.
Each hostile client (127.0.0.3) writes until its writes stall for a second or 2 MiB have
gone (the kernel's socket buffers take much of it), and never reads a byte. While they hang on, postern's RSS
grows by at most a few MiB and a legitimate client (127.0.0.2) logs in and reads mail on
every protocol; once the hostile clients give up, their sessions end.
"""

from __future__ import annotations

import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

from harness import LineClient
from harness.sockets import tls_connect

HOSTILE = "127.0.0.3"
LEGIT = "127.0.0.2"
PER_PROTOCOL = 10
SPRAY_LIMIT = 2 << 20
# What one stuck session may hold in postern beyond an idle one: the guard's own-reply
# backlog (4 KiB), one read of client bytes, rustls' buffers (plaintext and TLS records
# toward a client that does not read, bounded by rustls' buffer limit) and the relay's.
# 30 sessions at 256 KiB each is 7.5 MiB. Measured: 5.4 MiB for 30 (about 180 KiB each);
# before postern's replies counted against the bound, 30 MiB (every read of a poll was
# answered at once: a reply pile three times the size of the commands).
BUDGET_KIB = 30 * 256 + 2048

SPRAYS = {
    "imaps": b"a STARTTLS\r\n",
    "pop3s": b"STLS\r\n",
    "submissions": b"STARTTLS\r\n",
}


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def _settled_rss_kib(pid: int, quiet: float = 1.0, timeout: float = 20.0) -> int:
    """postern's RSS once it has stopped changing for `quiet` seconds: the sprayed bytes sit
    in the kernel's socket buffers first, and postern takes what it will at its own pace."""
    deadline = time.monotonic() + timeout
    last, since = _rss_kib(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)  # sampling interval of a measurement, not a wait for an event
        now = _rss_kib(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    return last


def _spray(sock: ssl.SSLSocket, line: bytes) -> int:
    """Writes `line` repeatedly until the writes stall (postern stopped reading) or the limit;
    returns the bytes written."""
    chunk = line * (16384 // len(line))
    sent = 0
    sock.settimeout(1.0)
    try:
        while sent < SPRAY_LIMIT:
            sock.sendall(chunk)
            sent += len(chunk)
    except (socket.timeout, TimeoutError):
        pass
    return sent


def _legit_round(gw, client_ctx) -> None:
    with LineClient.tls(gw.addr("imaps"), client_ctx, "mail.test", source=LEGIT, read_greeting=True) as c:
        c.imap_login("alice", "secret1")
        assert c.imap("s", "SELECT INBOX")[-1].startswith(b"s OK")
        c.cmd(b"z LOGOUT")
        c.read_to_eof()
    with LineClient.tls(gw.addr("pop3s"), client_ctx, "mail.test", source=LEGIT, read_greeting=True) as c:
        assert c.greeting.startswith(b"+OK")
        c.cmd(b"USER bob")
        assert c.line().startswith(b"+OK")
        c.cmd(b"PASS secret2")
        assert c.line().startswith(b"+OK")
        c.cmd(b"QUIT")
        c.read_to_eof()
    with LineClient.tls(gw.addr("submissions"), client_ctx, "mail.test", source=LEGIT, read_greeting=True) as c:
        assert c.greeting.startswith(b"220")
        assert c.smtp("EHLO legit.test")[-1].startswith(b"250")
        c.cmd(b"QUIT")
        c.read_to_eof()


def test_a_client_that_sprays_refused_commands_and_never_reads_costs_a_bounded_few_mib(
    postern_factory, dovecot, client_ctx
):
    cfg = postern_factory.config(dovecot, forward_client="none")
    cfg.section("limits").update({"exempt": [], "per_ip_connections": 1000, "per_ip_rate": 1000, "auth_failures": 0})
    gw = postern_factory.start(cfg)
    _legit_round(gw, client_ctx)  # every path warmed once: the baseline includes it
    before = _rss_kib(gw.pid)

    hostile: list[ssl.SSLSocket] = []
    try:
        jobs = []
        for listener, line in SPRAYS.items():
            for _ in range(PER_PROTOCOL):
                # a tiny receive window: postern's replies back up into postern, not into us
                s = tls_connect(gw.addr(listener), client_ctx, "mail.test", source=HOSTILE, rcvbuf=4096)
                hostile.append(s)
                jobs.append((listener, s, line))
        with ThreadPoolExecutor(len(jobs)) as pool:
            amounts = list(pool.map(lambda j: _spray(j[1], j[2]), jobs))
        sent = {}
        for (listener, _, _), n in zip(jobs, amounts):
            sent.setdefault(listener, []).append(n)
        during = _settled_rss_kib(gw.pid)
        # the others are served while the hostile sessions hang on
        _legit_round(gw, client_ctx)
        after_legit = _rss_kib(gw.pid)
        grew = max(during, after_legit) - before
        print(f"rss before {before} KiB, with {len(hostile)} stuck sprayers {during} KiB, "
              f"after a legitimate round {after_legit} KiB (+{grew} KiB); sent per session {sent}")
        assert grew < BUDGET_KIB, f"postern grew by {grew} KiB for {len(hostile)} sprayers that never read"
    finally:
        for s in hostile:
            try:
                s.close()
            except OSError:
                pass
    # the sprayers' sessions end once they are gone, and postern keeps serving
    gw.wait_metric("postern_connections_active", lambda v: v == 0, timeout=30, what="the sprayers' sessions ended")
    _legit_round(gw, client_ctx)
