"""Operations (issue 7): graceful drain, privilege drop, sd_notify, bind errors.

The real postern binary in front of a real Dovecot, with real TLS clients:

- drain: SIGTERM with idle IMAP sessions, a 20 MiB FETCH in flight and a client loop
  connecting: new connects refused from the first moment (every address, every reuseport
  socket), /readyz 503, the transfer completes intact, the idle sessions get
  `* BYE [UNAVAILABLE] shutting down` spread over `server.drain_spread` oldest first, exit 0
  within the grace, the drain logged; the goodbye of each protocol and of STARTTLS listeners
  in their plaintext phase; no goodbye inside an IMAP literal or a COMPRESS=DEFLATE stream;
  stuck sessions closed when the grace ends; a second signal ends the drain at once;
- privilege drop to nobody:nogroup (the suite runs as root): ids and capabilities of every
  thread from /proc, sessions work, a certificate rotation is picked up by the dropped
  process (and one it cannot read is refused loudly); an unknown user or group, or a drop
  asked of a non-root process, refuses to start (exit 2);
- sd_notify: READY=1 only once the ports accept connections, WATCHDOG=1 when asked,
  STOPPING=1 on SIGTERM;
- bind errors: a taken address, a low port without privilege: exit 1 with one message naming
  the address and the listener; bad drain settings: exit 2.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import tempfile
import threading
import time
import zlib
from pathlib import Path

import pytest

from harness import Postern, free_port, http_get, imaps, make_message, make_self_signed, wait_for
from harness.util import tail
from ops_util import (
    PANIC_MARKERS,
    ConnectLoop,
    Deflated,
    IdleWatcher,
    ImapConn,
    LineConn,
    NotifySocket,
    ZlibDovecot,
    proc_ids,
    run_expecting_failure,
    wait_exit,
)

NOBODY = pwd.getpwnam("nobody").pw_uid
NOGROUP = grp.getgrnam("nogroup").gr_gid

GOODBYE = b"* BYE [UNAVAILABLE] shutting down\r\n"

def _msg(message: str):
    return lambda r: r.get("message") == message


def _one(p, message: str, after: int = 0) -> dict:
    got = p.find_records(_msg(message), after)
    assert len(got) == 1, f"want exactly one `{message}` log line, got {len(got)}\n{tail(p.log_text(), 40)}"
    return got[0]


def _open_idle_sessions(addr, ctx, user: str, password: str, n: int) -> list[ImapConn]:
    """n logged-in sessions in IDLE, opened one after another (so their age order is known)."""
    conns = []
    for _ in range(n):
        c = ImapConn.tls(addr, ctx, timeout=30)
        c.login(user, password)
        c.idle()
        conns.append(c)
    return conns


def _goodbye_times(watchers: list[IdleWatcher], t0: float) -> list[float]:
    """When each idle session got the goodbye (seconds after t0), in session age order; checks
    that the goodbye is the last thing it got and that a TLS close followed."""
    times = []
    for i, w in enumerate(watchers):
        assert w.error is None, f"idle session {i}: {w.error!r}"
        lines = w.lines_since_idle()
        assert lines, f"idle session {i} got nothing before the close ({w.conn.eof_kind})"
        at, last = lines[-1]
        assert last == GOODBYE, f"idle session {i}: last line {last!r}, want {GOODBYE!r} (all: {[l for _, l in lines]})"
        assert w.conn.eof_kind == "clean", f"idle session {i}: after the BYE the connection ended {w.conn.eof_kind!r}, want a TLS close_notify"
        times.append(at - t0)
    return times


# ---- drain ------------------------------------------------------------------------------------


def test_drain_refuses_new_connects_finishes_transfer_and_says_bye(postern_factory, dovecot, big_message, client_ctx):
    grace, spread = 6.0, 2.0
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    cfg.section("server").update(shutdown_grace="6s", drain_spread="2s")
    p = postern_factory.start(cfg)
    addr = p.addr("imaps")
    wait_for(lambda: p.get("/readyz").status == 200, 10, "/readyz 200 before the drain")

    user, password = dovecot.new_user()
    idle = _open_idle_sessions(addr, client_ctx, user, password, 6)
    watchers = [IdleWatcher(c, timeout=grace + 10) for c in idle]
    for w in watchers:
        w.start()

    # The transfer: a 64 KiB receive window keeps most of the 20 MiB upstream of the client,
    # and the reader pauses after 1 MiB until the drain has started.
    big = ImapConn.tls(addr, client_ctx, timeout=30, rcvbuf=64 * 1024)
    big.login(big_message.user, big_message.password)
    big.command("s1", "SELECT INBOX")
    one_mib_in = threading.Event()
    drain_started = threading.Event()
    transfer: dict = {}

    def fetch() -> None:
        try:
            big.send(b"f1 FETCH 1 (BODY.PEEK[])\r\n")
            head = big.read_line()
            m = re.search(rb"\{(\d+)\}\r\n$", head)
            assert m, f"no literal in {head!r}"

            def progress(n: int) -> None:
                if n >= 1 << 20 and not one_mib_in.is_set():
                    one_mib_in.set()
                    drain_started.wait(10)

            transfer["body"] = big.read_exact(int(m.group(1)), timeout=30, chunk_cb=progress)
            transfer["tail"] = big.read_until_tagged("f1")
            big.send(b"f2 LOGOUT\r\n")
            transfer["logout"] = big.read_to_eof(10)
            # a client closes its side too; postern relays half-closes and would wait for it
            big.close()
        except BaseException as e:
            transfer["error"] = e
            one_mib_in.set()

    fetcher = threading.Thread(target=fetch, daemon=True)
    fetcher.start()

    loop = ConnectLoop(addr)
    loop.start()
    wait_for(lambda: sum(a.result == "ok" for a in loop.snapshot()) >= 3, 10, "the client loop to connect before the drain")
    assert one_mib_in.wait(20), "the first MiB of the FETCH did not arrive"
    assert "error" not in transfer, transfer.get("error")

    mark = p.log_mark()
    t0 = time.monotonic()
    p.signal(signal.SIGTERM)

    # New connects are refused (by the kernel: ECONNREFUSED) from the first moment of the drain.
    def first_refusal():
        return next((a for a in loop.snapshot() if a.result == "refused"), None)

    refused = wait_for(first_refusal, 2.0, "the first refused connect after SIGTERM")
    ready = p.get("/readyz")
    assert ready.status == 503, f"/readyz answered {ready.status} once the listeners were closed: {ready.text!r}"
    assert p.alive(), "postern exited right away although sessions are open"
    assert p.get("/healthz").status == 200, "the admin endpoint must keep serving /healthz during the drain"
    p.wait_for_record(_msg("drain started; listeners closed"), 5, after=mark)
    drain_started.set()

    fetcher.join(30)
    assert not fetcher.is_alive(), "the FETCH did not finish"
    assert "error" not in transfer, f"transfer broke during the drain: {transfer['error']!r}"
    body = transfer["body"]
    assert len(body) == len(big_message.data)
    assert hashlib.sha256(body).hexdigest() == big_message.sha256, "the 20 MiB message arrived changed"
    assert transfer["tail"][-1].startswith(b"f1 OK"), transfer["tail"]
    assert any(l.startswith(b"f2 OK") for l in transfer["logout"]), transfer["logout"]
    transfer_done = big.lines[-1][0] - t0

    rc = wait_exit(p, grace + 5)
    exited = time.monotonic() - t0
    loop.stop()
    for w in watchers:
        w.join(5)
    print(f"first refusal {refused.started - t0:.3f}s after SIGTERM; transfer done at {transfer_done:.2f}s; exit at {exited:.2f}s")

    assert rc == 0, f"exit code {rc}\n{tail(p.log_text(), 30)}"
    assert exited <= grace + 1.0, f"exited {exited:.2f}s after SIGTERM; grace is {grace}s"

    attempts = loop.snapshot()
    odd = [a for a in attempts if a.result not in ("ok", "refused")]
    assert not odd, f"connects that were neither accepted nor refused: {odd[:5]}"
    early = [a for a in attempts if a.result == "refused" and a.started < t0]
    assert not early, f"connects refused before SIGTERM: {early[:3]}"
    late_ok = [a for a in attempts if a.result == "ok" and a.started > refused.ended]
    assert not late_ok, (
        f"{len(late_ok)} connects succeeded after the first refusal (at {refused.started - t0:.3f}s): "
        f"first at {late_ok[0].started - t0:.3f}s — not every listening socket closed at once"
    )
    assert sum(a.result == "refused" for a in attempts) >= 10, "the client loop barely ran during the drain"

    # The goodbyes: not before grace - spread, spread over the window, then a TLS close.
    byes = _goodbye_times(watchers, t0)
    print("goodbyes at " + ", ".join(f"{b:.2f}" for b in byes))
    assert min(byes) >= grace - spread - 0.05, f"a goodbye came before grace - drain_spread: {byes}"
    assert max(byes) <= grace + 0.5, f"a goodbye came after the grace: {byes}"
    assert max(byes) - min(byes) >= 0.5 * spread, f"goodbyes not spread over drain_spread={spread}s: {byes}"

    # The log: shutdown, drain start with the open sessions, sessions left, exit.
    assert _one(p, "shutdown requested", mark).get("signal") == "SIGTERM"
    started = _one(p, "drain started; listeners closed", mark)
    assert int(started["sessions"]) >= 7, started  # 6 idle + the transfer
    asked = _one(p, "asking remaining sessions to leave", mark)
    assert int(asked["sessions"]) == 6, asked
    finished = p.find_records(_msg("all sessions finished"), mark)
    elapsed = p.find_records(_msg("shutdown grace elapsed; closing remaining sessions"), mark)
    assert len(finished) + len(elapsed) == 1, tail(p.log_text(), 30)
    assert finished, f"sessions were still open at the end: {elapsed}"
    end = _one(p, "exit", mark)
    assert int(end["sessions_left"]) == 0 and end["interrupted"] in (False, "false"), end
    ended = p.find_records(lambda r: r.get("message") == "session ended" and r.get("user") == user, mark)
    assert len(ended) == 6, f"want a `session ended` line for each idle session: {ended}"


def test_drain_goodbyes_oldest_first_and_evenly_spread(postern_factory, dovecot, client_ctx):
    """One worker, six idle sessions opened in order: the goodbyes go out oldest first, about
    drain_spread / 6 apart, starting at grace - drain_spread."""
    grace, spread, n = 3.0, 2.0, 6
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    cfg.section("server").update(workers=1, shutdown_grace="3s", drain_spread="2s")
    p = postern_factory.start(cfg)
    user, password = dovecot.new_user()
    idle = _open_idle_sessions(p.addr("imaps"), client_ctx, user, password, n)
    watchers = [IdleWatcher(c, timeout=grace + 10) for c in idle]
    for w in watchers:
        w.start()

    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    rc = wait_exit(p, grace + 5)
    for w in watchers:
        w.join(5)
    assert rc == 0
    byes = _goodbye_times(watchers, t0)
    print("goodbyes at " + ", ".join(f"{b:.2f}" for b in byes))
    assert byes == sorted(byes), f"goodbyes not oldest first: {byes}"
    gaps = [b - a for a, b in zip(byes, byes[1:])]
    step = spread / n
    assert all(g >= 0.3 * step for g in gaps), f"goodbyes bunched (want ~{step:.2f}s apart): {gaps}"
    assert abs(byes[0] - (grace - spread)) <= 0.5, f"first goodbye at {byes[0]:.2f}s, want ~{grace - spread}s"


def test_drain_goodbye_per_protocol(postern_factory, dovecot, mailbox, client_ctx):
    """Each kind of session left at the end of the grace leaves the way its protocol allows:
    IMAP `* BYE [UNAVAILABLE]`, SMTP `421 4.3.2`, POP3 (no unsolicited responses) a plain close;
    STARTTLS listeners still in their plaintext phase likewise."""
    grace, spread = 2.0, 1.0
    cfg = postern_factory.config(dovecot)  # imaps, pop3s, submissions
    cfg.listener("imap-starttls", "imap", "imap", tls="starttls")
    cfg.listener("smtp-starttls", "smtp", "submission", tls="starttls")
    cfg.listener("pop3-starttls", "pop3", "pop3", tls="starttls")
    cfg.section("server").update(workers=1, shutdown_grace="2s", drain_spread="1s")
    p = postern_factory.start(cfg)

    conns: dict[str, LineConn] = {}
    imap = ImapConn.tls(p.addr("imaps"), client_ctx)
    imap.login(mailbox.user, mailbox.password)
    conns["imaps"] = imap
    pop = LineConn.tls(p.addr("pop3s"), client_ctx)
    for cmd in (f"USER {mailbox.user}", f"PASS {mailbox.password}"):
        pop.send(cmd.encode() + b"\r\n")
        assert pop.read_line().startswith(b"+OK"), cmd
    conns["pop3s"] = pop
    smtp = LineConn.tls(p.addr("submissions"), client_ctx)
    assert smtp.smtp("EHLO client.test")[-1].startswith(b"250 ")
    conns["submissions"] = smtp
    conns["imap-starttls"] = LineConn.plain(p.addr("imap-starttls"))
    smtp_plain = LineConn.plain(p.addr("smtp-starttls"))
    assert smtp_plain.smtp("EHLO client.test")[-1].startswith(b"250 ")
    conns["smtp-starttls"] = smtp_plain
    conns["pop3-starttls"] = LineConn.plain(p.addr("pop3-starttls"))
    watchers = {name: IdleWatcher(c, timeout=grace + 10) for name, c in conns.items()}
    for w in watchers.values():
        w.start()

    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    assert wait_exit(p, grace + 5) == 0
    smtp_bye = b"421 4.3.2 shutting down\r\n"
    want = {"imaps": [GOODBYE], "imap-starttls": [GOODBYE], "submissions": [smtp_bye], "smtp-starttls": [smtp_bye], "pop3s": []}
    problems = []
    for name, w in watchers.items():
        w.join(5)
        got = [line for _, line in w.lines_since_idle()]
        closed = None if w.conn.eof_at is None else w.conn.eof_at - t0
        if w.error is not None or closed is None:
            problems.append(f"{name}: not closed ({w.error!r})")
            continue
        print(f"{name}: {got!r} then {w.conn.eof_kind} close at {closed:.2f}s")
        if name == "pop3-starttls":
            ok = got == [] or (len(got) == 1 and got[0].startswith(b"-ERR") and got[0].endswith(b"\r\n"))
        else:
            ok = got == want[name]
        if not ok:
            problems.append(f"{name}: got {got!r} before the close, want {want.get(name, '[] or one -ERR line')!r}")
        if w.conn.eof_kind != "clean":
            problems.append(f"{name}: ended {w.conn.eof_kind!r}, want a clean close")
        if not grace - spread - 0.05 <= closed <= grace + 0.6:
            problems.append(f"{name}: closed {closed:.2f}s after SIGTERM, want within [{grace - spread}, {grace + 0.5}]s")
    assert not problems, "\n".join(problems)


def test_drain_goodbye_never_lands_inside_a_literal(postern_factory, dovecot, client_ctx):
    """A slow client is in the middle of a big FETCH when its goodbye is due. The BYE may
    follow the response, or the session may be cut when the grace ends, but the literal's bytes
    must be the message's: an untagged BYE spliced into the body corrupts the client's mail.

    The body is 3-byte lines, so nearly every read from the backend ends on a line boundary
    inside the literal: a relay that only looks for line ends gets it wrong every time."""
    grace = 3.0
    user, password = dovecot.new_user()
    message = make_message("short lines", "") + b"x\r\n" * (8 << 20)  # 24 MiB
    dovecot.deliver(user, message)
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    cfg.section("server").update(workers=1, shutdown_grace="3s", drain_spread="1s")
    p = postern_factory.start(cfg)
    c = ImapConn.tls(p.addr("imaps"), client_ctx, timeout=30, rcvbuf=64 * 1024)
    c.login(user, password)
    c.command("s1", "SELECT INBOX")
    c.send(b"f1 FETCH 1 (BODY.PEEK[])\r\n")
    head = c.read_line()
    m = re.search(rb"\{(\d+)\}\r\n$", head)
    assert m, head
    size = int(m.group(1))
    assert size == len(message)

    p.signal(signal.SIGTERM)
    raw = c.read_paced_to_eof(rate=4 * 1024 * 1024, timeout=grace + 15)
    assert wait_exit(p, grace + 5) == 0
    body, rest = raw[:size], raw[size:]
    want = message[: len(body)]
    if body != want:
        i = next(i for i, (a, b) in enumerate(zip(body, want)) if a != b)
        pytest.fail(
            f"the literal differs from the message at byte {i} of {size} ({len(raw)} bytes received): "
            f"got {body[i:i + 50]!r}, want {want[i:i + 50]!r}",
            pytrace=False,
        )
    print(f"received {len(body)} of {size} literal bytes, then {rest[:80]!r}")
    if len(body) == size:
        assert rest.startswith(b")\r\nf1 OK"), rest[:200]


def test_drain_closes_stuck_sessions_when_the_grace_ends(postern_factory, dovecot, big_message, client_ctx):
    """Sessions that cannot take a goodbye (a client that stopped reading mid-FETCH, a TCP
    connection that never sends its ClientHello) are closed when the grace ends; postern
    logs how many were left and still exits 0 on time."""
    grace = 2.0
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    cfg.section("server").update(shutdown_grace="2s", drain_spread="1s")
    p = postern_factory.start(cfg)
    addr = p.addr("imaps")
    stuck = ImapConn.tls(addr, client_ctx, timeout=30, rcvbuf=64 * 1024)
    stuck.login(big_message.user, big_message.password)
    stuck.command("s1", "SELECT INBOX")
    stuck.send(b"f1 FETCH 1 (BODY.PEEK[])\r\n")
    stuck.read_line()  # the literal has started; from now on this client reads nothing
    silent = socket.create_connection(addr, timeout=5)
    wait_for(lambda: p.metrics().value("postern_connections_active", listener="imaps") >= 2, 5, "both sessions to be open")

    mark = p.log_mark()
    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    rc = wait_exit(p, grace + 10)
    took = time.monotonic() - t0
    try:
        assert rc == 0, f"exit code {rc}\n{tail(p.log_text(), 20)}"
        assert grace <= took <= grace + 1.5, f"exited {took:.2f}s after SIGTERM; grace {grace}s"
        left = _one(p, "shutdown grace elapsed; closing remaining sessions", mark)
        end = _one(p, "exit", mark)
        print(f"exit {took:.2f}s after SIGTERM; {left['sessions']} session(s) left at the grace end")
        assert int(left["sessions"]) >= 1 and int(end["sessions_left"]) == int(left["sessions"]), (left, end)
        assert end["interrupted"] in (False, "false"), end
        silent.settimeout(5)
        assert silent.recv(100) == b"", "the silent connection got bytes instead of a close"
    finally:
        silent.close()
        stuck.close()


@pytest.fixture(scope="module")
def zlib_dovecot(test_root, smtp_sink):
    """A private Dovecot offering COMPRESS=DEFLATE, shared by this module's tests."""
    dv = ZlibDovecot(test_root / f"dovecot-zlib-{time.monotonic_ns()}", name=f"dovezlib-{os.getpid()}",
                     relay_port=smtp_sink.port, spare_users=8)
    dv.start()
    yield dv
    dv.stop()


def _compressed_idle(addr, dovecot, ctx) -> Deflated:
    """A logged-in session that switched to COMPRESS DEFLATE and sits in IDLE."""
    user, password = dovecot.new_user()
    c = ImapConn.tls(addr, ctx)
    c.login(user, password)
    caps = b"".join(c.command("c0", "CAPABILITY"))
    assert b"COMPRESS=DEFLATE" in caps, f"the test Dovecot does not offer COMPRESS: {caps!r}"
    c.command("z1", "COMPRESS DEFLATE")
    z = Deflated(c)
    try:
        z.send(b"s1 SELECT INBOX\r\n")
        z.read_until(b"s1 OK", 3)
        z.send(b"i1 IDLE\r\n")
        z.read_until(b"+ idling", 3)
    except BaseException:
        c.close()
        raise
    return z


def _inflate_to_eof(z: Deflated, timeout: float, t0: float) -> float:
    """Read the session to its end; fail if the bytes stop being one deflate stream."""
    try:
        z.read_to_eof(timeout)
    except zlib.error as e:
        pytest.fail(f"the compressed stream broke at the goodbye ({e}); last raw bytes {bytes(z.raw[-60:])!r}", pytrace=False)
    assert b"* BYE [UNAVAILABLE]" not in bytes(z.raw), "a plaintext BYE inside the deflate stream"
    return time.monotonic() - t0


def test_drain_goodbye_never_breaks_a_compressed_session(postern_factory, zlib_dovecot, client_ctx):
    """After COMPRESS DEFLATE (RFC 4978) the stream is deflate, not lines: a plaintext BYE
    spliced in would break the client's decompressor. Whatever postern does at the goodbye,
    every byte the client gets must still inflate, and the session must end by the grace."""
    grace = 2.0
    cfg = postern_factory.config(zlib_dovecot, protocols=("imap",))
    cfg.section("server").update(shutdown_grace="2s", drain_spread="1s")
    p = postern_factory.start(cfg)
    z = _compressed_idle(p.addr("imaps"), zlib_dovecot, client_ctx)
    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    closed = _inflate_to_eof(z, grace + 5, t0)
    assert wait_exit(p, grace + 5) == 0
    assert closed <= grace + 1.0, f"closed {closed:.2f}s after SIGTERM"


def test_drain_spreads_compressed_sessions_too(postern_factory, zlib_dovecot, client_ctx):
    """COMPRESS=DEFLATE sessions cannot get a readable BYE, but they must still leave at their
    turn in drain_spread: Thunderbird compresses whenever offered, so cutting them all at the
    end of the grace is the reconnect flood the spread exists to prevent."""
    grace, spread, n = 3.0, 2.0, 3
    cfg = postern_factory.config(zlib_dovecot, protocols=("imap",))
    cfg.section("server").update(workers=1, shutdown_grace="3s", drain_spread="2s")
    p = postern_factory.start(cfg)
    sessions = [_compressed_idle(p.addr("imaps"), zlib_dovecot, client_ctx) for _ in range(n)]
    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    closed = []
    for z in sessions:  # each read ends at that session's close; they close in age order
        _inflate_to_eof(z, grace + 5, t0)
        closed.append(z.conn.eof_at - t0)
    assert wait_exit(p, grace + 5) == 0
    closed_txt = ", ".join(f"{c:.2f}" for c in closed)
    assert max(closed) <= grace + 0.1, f"compressed sessions closed at {closed_txt}s, after the grace ({grace}s) instead of in the spread"
    assert max(closed) - min(closed) >= 0.5 * spread, f"compressed sessions all closed together at {closed_txt}s"


@pytest.mark.parametrize(
    "forward_client",
    ["none", "proxy-v2"],
)
def test_compress_deflate_session_works(postern_factory, zlib_dovecot, client_ctx, forward_client):
    """The precondition of the two tests above, and a client feature of its own: Thunderbird
    sends COMPRESS DEFLATE whenever the server offers it, and from then on neither direction
    is lines. A gateway that keeps parsing the client's bytes must not hold them."""
    listeners = {"imap": "imap_haproxy"} if forward_client == "proxy-v2" else None
    cfg = postern_factory.config(zlib_dovecot, protocols=("imap",), forward_client=forward_client, dovecot_listeners=listeners)
    p = postern_factory.start(cfg)
    user, password = zlib_dovecot.new_user()
    message = make_message("compressed", "Hello through a deflate stream.\n")
    zlib_dovecot.deliver(user, message)
    c = ImapConn.tls(p.addr("imaps"), client_ctx)
    try:
        c.login(user, password)
        c.command("z1", "COMPRESS DEFLATE")
        z = Deflated(c)
        z.send(b"s1 SELECT INBOX\r\n")
        z.read_until(b"s1 OK", 3)
        z.send(b"f1 FETCH 1 (BODY.PEEK[])\r\n")
        assert message in z.read_until(b"f1 OK", 3)
        z.send(b"l1 LOGOUT\r\n")
        z.read_until(b"l1 OK", 3)
    finally:
        c.close()  # a hung session must not hold the teardown's drain for the default grace


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_second_signal_ends_drain_at_once(postern_factory, dovecot, client_ctx, sig):
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    cfg.section("server").update(shutdown_grace="60s")
    p = postern_factory.start(cfg)
    user, password = dovecot.new_user()
    (conn,) = _open_idle_sessions(p.addr("imaps"), client_ctx, user, password, 1)
    watcher = IdleWatcher(conn, timeout=30)
    watcher.start()

    mark = p.log_mark()
    p.signal(sig)
    started = p.wait_for_record(_msg("drain started; listeners closed"), 5, after=mark)[0]
    assert int(started["sessions"]) == 1, started
    t1 = time.monotonic()
    p.signal(sig)
    rc = wait_exit(p, 10)
    took = time.monotonic() - t1
    assert rc == 0, f"exit code {rc} after a second {sig.name}\n{tail(p.log_text(), 20)}"
    assert took <= 2.0, f"exit took {took:.2f}s after the second {sig.name}"
    watcher.join(5)
    assert conn.eof_kind is not None, "the idle session was not closed"
    cut = _one(p, "second signal: closing remaining sessions now", mark)
    assert int(cut["sessions"]) == 1, cut
    end = _one(p, "exit", mark)
    assert end["interrupted"] in (True, "true") and int(end["sessions_left"]) == 1, end


# ---- privilege drop ----------------------------------------------------------------------------


def _install_cert(pair, cert_path: Path, key_path: Path, key_owner: int = NOBODY) -> None:
    """Put a certificate in place the way an admin (or certbot hook) should for a dropped
    postern: cert 0644, key owned by the service user 0600, each file swapped in by rename."""
    for src, dst, mode, uid in ((pair.key, key_path, 0o600, key_owner), (pair.cert, cert_path, 0o644, 0)):
        tmp = dst.with_name(f".{dst.name}.new")
        shutil.copyfile(src, tmp)
        os.chown(tmp, uid, NOGROUP)
        os.chmod(tmp, mode)
        os.replace(tmp, dst)


def _served_cert(addr) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(addr, timeout=5) as raw, ctx.wrap_socket(raw) as s:
        return s.getpeercert(binary_form=True)


def _der(pem_path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem_path.read_text())


def test_privilege_drop_to_nobody_then_certificate_reload(postern_factory, dovecot, mailbox):
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    # The documented layout: directory root:nogroup 0750, certificate 0644, key nobody 0600.
    tls_dir = cfg.workdir / "tls"
    tls_dir.mkdir()
    os.chown(tls_dir, 0, NOGROUP)
    tls_dir.chmod(0o750)
    cert_path, key_path = tls_dir / "fullchain.pem", tls_dir / "privkey.pem"
    first = make_self_signed(cfg.workdir / "gen1", stem="first")
    _install_cert(first, cert_path, key_path)
    cfg.section("tls").update(watch=True, certificate=[{"cert": str(cert_path), "key": str(key_path)}])
    cfg.section("server").update(user="nobody", group="nogroup")

    # NOTIFY_SOCKET like systemd's (writable by all): STOPPING=1 must still go out after the drop.
    nd = Path(tempfile.mkdtemp(prefix="pn-notify-"))
    nd.chmod(0o755)
    notify = NotifySocket(nd / "notify")
    os.chmod(notify.path, 0o666)
    try:
        p = postern_factory.start(cfg, env={"NOTIFY_SOCKET": str(notify.path)})
        dropped = _one(p, "dropped privileges")
        assert (int(dropped["uid"]), int(dropped["gid"])) == (NOBODY, NOGROUP), dropped

        ids = proc_ids(p.pid)
        assert len(ids) >= 3, f"expected the main thread and worker threads, saw {sorted(ids)}"
        for tid, f in ids.items():
            assert f["Uid"] == [NOBODY] * 4, f"thread {tid}: Uid {f['Uid']}"
            assert f["Gid"] == [NOGROUP] * 4, f"thread {tid}: Gid {f['Gid']}"
            assert set(f["Groups"]) <= {NOGROUP}, f"thread {tid}: supplementary groups {f['Groups']}"
            for cap in ("CapPrm", "CapEff", "CapAmb"):
                assert f[cap] == [0], f"thread {tid}: {cap} {f[cap][0]:#x} after dropping root"

        addr = p.addr("imaps")
        assert _served_cert(addr) == _der(cert_path)
        m = imaps(addr, first.client_context())
        try:
            m.login(mailbox.user, mailbox.password)
            assert m.select("INBOX", readonly=True) == ("OK", [b"2"])
            typ, data = m.fetch("1", "(BODY.PEEK[])")
            assert typ == "OK" and data[0][1] == mailbox.messages[0]
        finally:
            m.logout()

        # Rotate: the process, now nobody, must read the new files and serve them.
        ok_before = p.metrics().value("postern_certificate_reloads_total", result="ok")
        second = make_self_signed(cfg.workdir / "gen2", stem="second")
        assert _der(second.cert) != _der(first.cert)
        _install_cert(second, cert_path, key_path)
        want = _der(second.cert)
        wait_for(lambda: _served_cert(addr) == want, 10, "new handshakes to get the rotated certificate",
                 interval=0.05, on_timeout=lambda: tail(p.log_text(), 20))
        p.wait_metric("postern_certificate_reloads_total", lambda v: v >= ok_before + 1, 5, result="ok")
        m = imaps(addr, second.client_context())
        try:
            m.login(mailbox.user, mailbox.password)
            assert m.select("INBOX", readonly=True) == ("OK", [b"2"])
        finally:
            m.logout()

        notify.wait_for("READY", "1", 5)
        p.signal(signal.SIGTERM)
        notify.wait_for("STOPPING", "1", 5)
        assert wait_exit(p, 10) == 0
    finally:
        notify.close()
        shutil.rmtree(nd, ignore_errors=True)


def test_privilege_drop_rotation_unreadable_by_the_user_is_refused_loudly(postern_factory, dovecot):
    """The wrong ownership (key root 0600): postern starts (it reads the key as root), but a
    rotation cannot be read after the drop. It must say so, count it, and keep serving the
    previous certificate rather than fail handshakes."""
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    tls_dir = cfg.workdir / "tls"
    tls_dir.mkdir()
    cert_path, key_path = tls_dir / "fullchain.pem", tls_dir / "privkey.pem"
    first = make_self_signed(cfg.workdir / "gen1", stem="first")
    _install_cert(first, cert_path, key_path, key_owner=0)
    cfg.section("tls").update(watch=True, certificate=[{"cert": str(cert_path), "key": str(key_path)}])
    cfg.section("server").update(user="nobody", group="nogroup")
    p = postern_factory.start(cfg)
    addr = p.addr("imaps")
    errors_before = p.metrics().value("postern_certificate_reloads_total", result="error")
    mark = p.log_mark()

    _install_cert(make_self_signed(cfg.workdir / "gen2", stem="second"), cert_path, key_path, key_owner=0)
    p.wait_metric("postern_certificate_reloads_total", lambda v: v >= errors_before + 1, 10, result="error")
    rejected = p.wait_for_record(lambda r: r.get("level") in ("WARN", "ERROR") and "reload" in str(r.get("message", "")), 5, after=mark)
    text = " ".join(str(v) for v in rejected[0].values())
    assert str(key_path) in text and "permission" in text.lower(), f"the warning must name {key_path} and the permission problem: {rejected[0]}"
    assert _served_cert(addr) == _der(first.cert), "a failed reload must keep the previous certificate"


@pytest.mark.parametrize(
    "server, key",
    [({"user": "no-such-user-xyz"}, "server.user"), ({"user": "nobody", "group": "no-such-group-xyz"}, "server.group")],
    ids=["unknown-user", "unknown-group"],
)
def test_privilege_drop_to_unknown_account_refuses_to_start(postern_factory, dovecot, postern_bin, server, key):
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    cfg.section("server").update(server)
    res = run_expecting_failure(postern_bin, cfg.write())
    out = res.stdout
    assert res.returncode == 2, f"exit {res.returncode}, want 2 (bad config)\n{out}"
    name = server.get("group", server["user"])
    assert key in out and name in out, f"the message must name {key} and {name!r}:\n{out}"
    assert not PANIC_MARKERS.search(out), out
    assert '"ready"' not in out and "dropped privileges" not in out, out


def test_setuid_refused_when_not_started_as_root(postern_factory, dovecot, postern_bin):
    """Started as an ordinary user with server.user set to another account, the drop cannot
    happen: postern refuses to start (exit 2) and says why."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    tls_dir = cfg.workdir / "tls"
    tls_dir.mkdir()
    cert_path, key_path = tls_dir / "fullchain.pem", tls_dir / "privkey.pem"
    _install_cert(make_self_signed(cfg.workdir / "gen", stem="c"), cert_path, key_path)
    cfg.section("tls").update(watch=False, certificate=[{"cert": str(cert_path), "key": str(key_path)}])
    cfg.section("server").update(user="daemon")
    res = run_expecting_failure(postern_bin, cfg.write(), prefix=("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"))
    out = res.stdout
    assert res.returncode == 2, f"exit {res.returncode}, want 2\n{out}"
    assert "server.user" in out and "daemon" in out, out
    assert not PANIC_MARKERS.search(out), out


def test_user_root_is_not_reported_as_a_privilege_drop(postern_factory, dovecot, postern_bin):
    """`user = "root"` drops nothing. postern must not log `dropped privileges` with uid 0 and
    serve on as root as if all were well: it should refuse (exit 2 naming server.user) or at
    least warn that it keeps running as root."""
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    cfg.section("server").update(user="root")
    p = Postern(postern_bin, cfg, cfg.workdir)
    p.start(wait_ready=False)
    try:
        wait_for(lambda: (not p.alive()) or p.find_records(_msg("ready")), 20, "postern to start or exit")
        if not p.alive():
            rc = wait_exit(p, 5)
            assert rc == 2 and "server.user" in p.log_text(), f"exit {rc}\n{p.log_text()}"
            return
        ids = proc_ids(p.pid)[str(p.pid)]
        claims = p.find_records(lambda r: r.get("message") == "dropped privileges" and int(r.get("uid", -1)) == 0)
        warned = p.find_records(lambda r: r.get("level") in ("WARN", "ERROR") and "root" in str(r))
        assert not claims, f"logged {claims[0]} while Uid is {ids['Uid']}"
        assert warned, "serving as root with server.user = root and no warning"
    finally:
        p.kill()


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
    assert wait_exit(p, 10) == 0
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


def _free_low_port() -> int:
    """A port below 1024 that nothing on 127.0.0.1 uses right now (checked by binding it as root)."""
    for port in range(700, 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    pytest.skip("no free port below 1024 on 127.0.0.1")


def test_bind_below_1024_without_privilege_is_one_clear_error(postern_factory, dovecot, postern_bin):
    """Started as an ordinary user (no CAP_NET_BIND_SERVICE), a listener on a port below 1024
    fails with one message that names the address, the listener and the fix."""
    if int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()) <= 700:
        pytest.skip("this host lets every user bind low ports (net.ipv4.ip_unprivileged_port_start)")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    tls_dir = cfg.workdir / "tls"
    tls_dir.mkdir()
    cert_path, key_path = tls_dir / "fullchain.pem", tls_dir / "privkey.pem"
    _install_cert(make_self_signed(cfg.workdir / "gen", stem="c"), cert_path, key_path)
    cfg.section("tls").update(watch=False, certificate=[{"cert": str(cert_path), "key": str(key_path)}])
    low = f"127.0.0.1:{_free_low_port()}"
    cfg.get_listener("imaps")["listen"] = [low]
    res = run_expecting_failure(postern_bin, cfg.write(), prefix=("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"))
    out = res.stdout
    assert res.returncode == 1, f"exit {res.returncode}, want 1\n{out}"
    assert not PANIC_MARKERS.search(out), out
    mentions = [line for line in out.splitlines() if low in line]
    assert len(mentions) == 1, f"want one message naming {low}:\n{out}"
    assert "imaps" in mentions[0] and "permission denied" in mentions[0].lower(), mentions[0]
    assert "CAP_NET_BIND_SERVICE" in mentions[0], f"the message should name the capability that fixes it: {mentions[0]}"


def test_every_listen_address_refuses_during_the_drain(postern_factory, dovecot, client_ctx):
    """Two listeners, one of them on IPv4 and IPv6, two workers (two SO_REUSEPORT sockets per
    address): while a session keeps the drain going, every address refuses new connects."""
    cfg = postern_factory.config(dovecot, protocols=("imap", "pop3"))
    cfg.get_listener("imaps")["listen"] = ["127.0.0.1:0", "[::1]:0"]
    cfg.section("server").update(workers=2, shutdown_grace="60s")
    p = postern_factory.start(cfg)
    addrs = [a for name in ("imaps", "pop3s") for a in p.listeners[name]]
    assert len(addrs) == 3, p.listeners
    user, password = dovecot.new_user()
    (conn,) = _open_idle_sessions(p.addr("imaps"), client_ctx, user, password, 1)

    def refused(addr) -> bool:
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            try:
                s.connect(addr)
                return False
            except ConnectionRefusedError:
                return True

    assert not any(refused(a) for a in addrs), "a listen address refused before the drain"
    p.signal(signal.SIGTERM)
    for a in addrs:
        wait_for(lambda: refused(a), 2, f"{a} to refuse new connects")
    # a few more tries per address: no socket of the reuseport group may still accept
    assert all(refused(a) for a in addrs for _ in range(20)), "an address accepted again during the drain"
    assert p.alive(), "the drain should still be waiting for the open session"
    assert p.get("/readyz").status == 503
    p.signal(signal.SIGTERM)
    assert wait_exit(p, 10) == 0
    conn.close()
