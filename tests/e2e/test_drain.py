"""Graceful drain (issue 7), the real postern binary in front of a real Dovecot with real TLS
clients: SIGTERM with idle IMAP sessions, a 20 MiB FETCH in flight and a client loop
connecting: new connects refused from the first moment (every address, every reuseport
socket), /readyz 503, the transfer completes intact, the idle sessions get
`* BYE [UNAVAILABLE] shutting down` spread over `server.drain_spread` oldest first, exit 0
within the grace, the drain logged; the goodbye of each protocol and of STARTTLS listeners
in their plaintext phase; no goodbye inside an IMAP literal or a COMPRESS=DEFLATE stream;
stuck sessions closed when the grace ends; a second signal ends the drain at once.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import threading
import time
import zlib

import pytest

from harness import ConnectLoop, Deflated, IdleWatcher, LineClient, ZlibDovecot, make_message, message_is, wait_for
from harness.util import tail

GOODBYE = b"* BYE [UNAVAILABLE] shutting down\r\n"


def _open_idle_sessions(addr, ctx, user: str, password: str, n: int) -> list[LineClient]:
    """n logged-in sessions in IDLE, opened one after another (so their age order is known)."""
    conns = []
    for _ in range(n):
        c = LineClient.tls(addr, ctx, timeout=30, read_greeting=True)
        c.imap_login(user, password)
        c.imap_idle()
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
    big = LineClient.tls(addr, client_ctx, timeout=30, rcvbuf=64 * 1024, read_greeting=True)
    big.imap_login(big_message.user, big_message.password)
    big.imap("s1", "SELECT INBOX")
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
            transfer["tail"] = big.tagged("f1")
            big.send(b"f2 LOGOUT\r\n")
            transfer["logout"] = big.lines_to_eof(10)
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
    p.wait_for_record(message_is("drain started; listeners closed"), 5, after=mark)
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

    rc = p.wait_exit(grace + 5)
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
    assert p.one_record("shutdown requested", mark).get("signal") == "SIGTERM"
    started = p.one_record("drain started; listeners closed", mark)
    assert int(started["sessions"]) >= 7, started  # 6 idle + the transfer
    asked = p.one_record("asking remaining sessions to leave", mark)
    assert int(asked["sessions"]) == 6, asked
    finished = p.find_records(message_is("all sessions finished"), mark)
    elapsed = p.find_records(message_is("shutdown grace elapsed; closing remaining sessions"), mark)
    assert len(finished) + len(elapsed) == 1, tail(p.log_text(), 30)
    assert finished, f"sessions were still open at the end: {elapsed}"
    end = p.one_record("exit", mark)
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
    rc = p.wait_exit(grace + 5)
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

    conns: dict[str, LineClient] = {}
    imap = LineClient.tls(p.addr("imaps"), client_ctx, read_greeting=True)
    imap.imap_login(mailbox.user, mailbox.password)
    conns["imaps"] = imap
    pop = LineClient.tls(p.addr("pop3s"), client_ctx, read_greeting=True)
    for cmd in (f"USER {mailbox.user}", f"PASS {mailbox.password}"):
        pop.send(cmd.encode() + b"\r\n")
        assert pop.read_line().startswith(b"+OK"), cmd
    conns["pop3s"] = pop
    smtp = LineClient.tls(p.addr("submissions"), client_ctx, read_greeting=True)
    assert smtp.smtp("EHLO client.test")[-1].startswith(b"250 ")
    conns["submissions"] = smtp
    conns["imap-starttls"] = LineClient.connect(p.addr("imap-starttls"), read_greeting=True)
    smtp_plain = LineClient.connect(p.addr("smtp-starttls"), read_greeting=True)
    assert smtp_plain.smtp("EHLO client.test")[-1].startswith(b"250 ")
    conns["smtp-starttls"] = smtp_plain
    conns["pop3-starttls"] = LineClient.connect(p.addr("pop3-starttls"), read_greeting=True)
    watchers = {name: IdleWatcher(c, timeout=grace + 10) for name, c in conns.items()}
    for w in watchers.values():
        w.start()

    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    assert p.wait_exit(grace + 5) == 0
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
    c = LineClient.tls(p.addr("imaps"), client_ctx, timeout=30, rcvbuf=64 * 1024, read_greeting=True)
    c.imap_login(user, password)
    c.imap("s1", "SELECT INBOX")
    c.send(b"f1 FETCH 1 (BODY.PEEK[])\r\n")
    head = c.read_line()
    m = re.search(rb"\{(\d+)\}\r\n$", head)
    assert m, head
    size = int(m.group(1))
    assert size == len(message)

    p.signal(signal.SIGTERM)
    raw = c.read_paced_to_eof(rate=4 * 1024 * 1024, timeout=grace + 15)
    assert p.wait_exit(grace + 5) == 0
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
    stuck = LineClient.tls(addr, client_ctx, timeout=30, rcvbuf=64 * 1024, read_greeting=True)
    stuck.imap_login(big_message.user, big_message.password)
    stuck.imap("s1", "SELECT INBOX")
    stuck.send(b"f1 FETCH 1 (BODY.PEEK[])\r\n")
    stuck.read_line()  # the literal has started; from now on this client reads nothing
    silent = socket.create_connection(addr, timeout=5)
    wait_for(lambda: p.metrics().value("postern_connections_active", listener="imaps") >= 2, 5, "both sessions to be open")

    mark = p.log_mark()
    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    rc = p.wait_exit(grace + 10)
    took = time.monotonic() - t0
    try:
        assert rc == 0, f"exit code {rc}\n{tail(p.log_text(), 20)}"
        assert grace <= took <= grace + 1.5, f"exited {took:.2f}s after SIGTERM; grace {grace}s"
        left = p.one_record("shutdown grace elapsed; closing remaining sessions", mark)
        end = p.one_record("exit", mark)
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
    c = LineClient.tls(addr, ctx, read_greeting=True)
    c.imap_login(user, password)
    caps = b"".join(c.imap("c0", "CAPABILITY"))
    assert b"COMPRESS=DEFLATE" in caps, f"the test Dovecot does not offer COMPRESS: {caps!r}"
    c.imap("z1", "COMPRESS DEFLATE")
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
    assert p.wait_exit(grace + 5) == 0
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
    assert p.wait_exit(grace + 5) == 0
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
    c = LineClient.tls(p.addr("imaps"), client_ctx, read_greeting=True)
    try:
        c.imap_login(user, password)
        c.imap("z1", "COMPRESS DEFLATE")
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
    started = p.wait_for_record(message_is("drain started; listeners closed"), 5, after=mark)[0]
    assert int(started["sessions"]) == 1, started
    t1 = time.monotonic()
    p.signal(sig)
    rc = p.wait_exit(10)
    took = time.monotonic() - t1
    assert rc == 0, f"exit code {rc} after a second {sig.name}\n{tail(p.log_text(), 20)}"
    assert took <= 2.0, f"exit took {took:.2f}s after the second {sig.name}"
    watcher.join(5)
    assert conn.eof_kind is not None, "the idle session was not closed"
    cut = p.one_record("second signal: closing remaining sessions now", mark)
    assert int(cut["sessions"]) == 1, cut
    end = p.one_record("exit", mark)
    assert end["interrupted"] in (True, "true") and int(end["sessions_left"]) == 1, end


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
    assert p.wait_exit(10) == 0
    conn.close()
