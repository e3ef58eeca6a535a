"""Implicit TLS (IMAPS, POP3S, SMTPS) through postern to a real Dovecot, with real clients.

Issue 2's end-to-end list: imaplib and poplib sessions, curl listings, a 20 MiB message,
200 concurrent sessions, the backend dying mid-session, garbage instead of a ClientHello,
the no-backend goodbyes, and `postern check-config`.
"""

from __future__ import annotations

import hashlib
import imaplib
import os
import signal
import socket
import ssl
import time

import pytest

from harness import (
    Postern,
    closed_port,
    curl,
    imaps,
    make_message,
    open_fds,
    pop3s,
    read_line,
    read_until_eof,
    run_sessions,
    smtps,
    tls_connect,
    wait_for,
)
from harness.postern import check_config


# ---- the three protocols, happy path ------------------------------------------------------------


def test_imaps_login_select_fetch_logout(gateway: Postern, mailbox, client_ctx):
    m = imaps(gateway.addr("imaps"), client_ctx)
    try:
        assert m.welcome.startswith(b"* OK"), m.welcome
        typ, _ = m.login(mailbox.user, mailbox.password)
        assert typ == "OK"
        typ, data = m.select("INBOX")
        assert (typ, data) == ("OK", [b"2"])
        for i, expected in enumerate(mailbox.messages, 1):
            typ, data = m.fetch(str(i), "(BODY.PEEK[])")
            assert typ == "OK"
            assert data[0][1] == expected
    finally:
        typ, data = m.logout()
    assert typ == "BYE"


def test_pop3s_user_pass_stat_retr(gateway: Postern, mailbox, client_ctx):
    p = pop3s(gateway.addr("pop3s"), client_ctx)
    try:
        assert p.getwelcome().startswith(b"+OK")
        assert p.user(mailbox.user).startswith(b"+OK")
        assert p.pass_(mailbox.password).startswith(b"+OK")
        count, size = p.stat()
        assert count == 2
        assert size == sum(len(m) for m in mailbox.messages)
        for i, expected in enumerate(mailbox.messages, 1):
            resp, lines, octets = p.retr(i)
            assert resp.startswith(b"+OK")
            assert b"\r\n".join(lines) + b"\r\n" == expected
    finally:
        assert p.quit().startswith(b"+OK")


def test_submissions_auth_and_send(gateway: Postern, dovecot, smtp_sink, client_ctx):
    user, password = "alice", dovecot.users["alice"]
    marker = f"via-postern-{time.time_ns()}"
    s = smtps(gateway.addr("submissions"), client_ctx)
    try:
        code, banner = s.ehlo("client.test")
        assert code == 250
        s.login(user, password)
        refused = s.sendmail("alice@mail.test", ["bob@example.org"], make_message(marker, "relayed through postern\n"))
        assert refused == {}
    finally:
        s.quit()
    got = smtp_sink.wait_for_message(marker.encode())
    assert got.rcpt_tos == ("bob@example.org",)


def test_curl_imaps_listing(gateway: Postern, mailbox, certs):
    host, port = gateway.addr("imaps")
    url = f"imaps://{host}:{port}/"
    res = curl("--cacert", str(certs.cert), "-u", f"{mailbox.user}:{mailbox.password}", url)
    assert res.returncode == 0, res.stderr
    assert "INBOX" in res.stdout
    res = curl("--cacert", str(certs.cert), "-u", f"{mailbox.user}:{mailbox.password}", url + "INBOX?ALL")
    assert res.returncode == 0, res.stderr
    assert "* SEARCH 1 2" in res.stdout


def test_curl_pop3s_listing(gateway: Postern, mailbox, certs):
    host, port = gateway.addr("pop3s")
    res = curl("--cacert", str(certs.cert), "-u", f"{mailbox.user}:{mailbox.password}", f"pop3s://{host}:{port}/")
    assert res.returncode == 0, res.stderr
    listing = [line.split() for line in res.stdout.strip().splitlines()]
    assert listing == [["1", str(len(mailbox.messages[0]))], ["2", str(len(mailbox.messages[1]))]]
    res = curl("--cacert", str(certs.cert), "-u", f"{mailbox.user}:{mailbox.password}", f"pop3s://{host}:{port}/2")
    assert res.returncode == 0, res.stderr
    assert res.stdout.encode().replace(b"\r\n", b"\n") == mailbox.messages[1].replace(b"\r\n", b"\n")


def test_curl_rejects_wrong_certificate_name(gateway: Postern, mailbox, certs):
    """The client checks the certificate: a name not in the SANs fails verification."""
    _, port = gateway.addr("imaps")
    res = curl(
        "--cacert", str(certs.cert),
        "--resolve", f"wrong.example:{port}:127.0.0.1",
        "-u", f"{mailbox.user}:{mailbox.password}",
        f"imaps://wrong.example:{port}/",
    )
    assert res.returncode != 0
    # the same request to a name the certificate carries works
    res = curl(
        "--cacert", str(certs.cert),
        "--resolve", f"mail.test:{port}:127.0.0.1",
        "-u", f"{mailbox.user}:{mailbox.password}",
        f"imaps://mail.test:{port}/",
    )
    assert res.returncode == 0, res.stderr


# ---- size and concurrency ---------------------------------------------------------------------


@pytest.mark.slow
def test_20mib_message_fetched_intact(gateway: Postern, big_message, client_ctx):
    down = {"listener": "imaps", "direction": "backend_to_client"}
    down_before = gateway.metrics().value("postern_bytes_total", **down)
    m = imaps(gateway.addr("imaps"), client_ctx, timeout=60)
    try:
        m.login(big_message.user, big_message.password)
        typ, data = m.select("INBOX", readonly=True)
        assert (typ, data) == ("OK", [b"1"])
        started = time.monotonic()
        typ, data = m.fetch("1", "(BODY.PEEK[])")
        elapsed = time.monotonic() - started
        assert typ == "OK"
        body = data[0][1]
        assert len(body) == len(big_message.data)
        assert hashlib.sha256(body).hexdigest() == big_message.sha256
        print(f"20 MiB fetched through postern in {elapsed:.2f}s")
    finally:
        m.logout()
    gateway.wait_metric("postern_bytes_total", lambda v: v >= down_before + len(big_message.data),
                        what="the 20 MiB counted in bytes_total backend_to_client", **down)


@pytest.mark.slow
def test_200_concurrent_sessions(gateway: Postern, mailbox, client_ctx):
    n = 200
    addr = gateway.addr("imaps")
    accepted_before = gateway.metrics().value("postern_connections_accepted_total", listener="imaps")
    fds_before = open_fds(gateway.pid)

    def one(i: int) -> None:
        m = imaps(addr, client_ctx, timeout=60)
        try:
            m.login(mailbox.user, mailbox.password)
            typ, data = m.select("INBOX", readonly=True)
            assert (typ, data) == ("OK", [b"2"]), f"SELECT gave {typ} {data}"
        finally:
            typ, _ = m.logout()
        assert typ == "BYE", f"LOGOUT gave {typ}"

    started = time.monotonic()
    run_sessions(n, one, parallel=n).check(show=5)
    elapsed = time.monotonic() - started
    print(f"{n} concurrent IMAPS sessions in {elapsed:.2f}s")
    assert gateway.alive()
    gateway.wait_metric("postern_connections_active", lambda v: v == 0, what="no session left active", listener="imaps")
    assert gateway.metrics().value("postern_connections_accepted_total", listener="imaps") == accepted_before + n
    # every session's sockets are released (a leak of one fd per session would show as +200)
    wait_for(lambda: open_fds(gateway.pid) <= fds_before + 8, 10,
             f"postern's open fds back near {fds_before}", on_timeout=lambda: f"now {open_fds(gateway.pid)}")


# ---- failure cases ----------------------------------------------------------------------------


def _imap_select(addr, ctx, user, password, timeout=15.0) -> imaplib.IMAP4_SSL:
    m = imaps(addr, ctx, timeout=timeout)
    m.login(user, password)
    m.select("INBOX")
    return m


def test_backend_session_killed_mid_session(postern_factory, dovecot_factory, client_ctx):
    """One session's imap process dies: that client gets a clean close in bounded time, and
    another session through the same postern carries on."""
    dv = dovecot_factory()
    user, password = dv.new_user()
    dv.deliver(user, make_message("m1", "one\n"))
    gw = postern_factory.start(postern_factory.config(dv, protocols=("imap",)))
    addr = gw.addr("imaps")

    a = _imap_select(addr, client_ctx, user, password)
    pids_a = set(wait_for(lambda: dv.session_pids("imap"), 5, "the imap process of session A"))
    b = _imap_select(addr, client_ctx, user, password)
    wait_for(lambda: set(dv.session_pids("imap")) - pids_a, 5, "the imap process of session B")
    for pid in pids_a:
        os.kill(pid, signal.SIGKILL)

    # A: EOF (possibly after a BYE), not a hang
    rest = read_until_eof(a.sock, timeout=10)
    assert b"* OK" not in rest
    a.shutdown()

    # B still works
    typ, data = b.noop()
    assert typ == "OK"
    typ, data = b.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK" and b"m1" in data[0][1]
    assert b.logout()[0] == "BYE"
    assert gw.alive()


def test_backend_stopped_mid_session(postern_factory, dovecot_factory, client_ctx):
    """Dovecot stops under open sessions: clients get a clean close in bounded time; after
    Dovecot is back, postern serves new sessions again (without a restart of its own)."""
    dv = dovecot_factory()
    user, password = dv.new_user()
    gw = postern_factory.start(postern_factory.config(dv, protocols=("imap",)))
    addr = gw.addr("imaps")

    sessions = [_imap_select(addr, client_ctx, user, password) for _ in range(3)]
    started = time.monotonic()
    dv.stop()
    for m in sessions:
        rest = read_until_eof(m.sock, timeout=10)
        assert len(rest) < 1000, rest
        m.shutdown()
    assert time.monotonic() - started < 20
    assert gw.alive()

    dv.start()

    def new_session_works() -> bool:
        try:
            m = _imap_select(addr, client_ctx, user, password, timeout=5)
        except (OSError, imaplib.IMAP4.error, EOFError):
            return False
        m.logout()
        return True

    wait_for(new_session_works, 30, "a new IMAPS session after Dovecot came back", interval=0.2)
    assert gw.alive()


def test_garbage_instead_of_client_hello(postern_factory, dovecot, mailbox, client_ctx):
    # a postern of its own: the failure counter must move by exactly one
    gw = postern_factory.start(postern_factory.config(dovecot, protocols=("imap",)))
    failures = "postern_tls_handshake_failures_total"
    assert gw.metrics().value(failures, listener="imaps") == 0
    mark = gw.log_mark()

    raw = socket.create_connection(gw.addr("imaps"), timeout=10)
    try:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 4)
        reply = read_until_eof(raw, timeout=15)
    finally:
        raw.close()
    # at most a TLS alert record (type 0x15), never a backend greeting
    assert b"OK" not in reply
    assert len(reply) <= 64, reply
    if reply:
        assert reply[0] == 0x15, reply

    gw.wait_metric(failures, lambda v: v == 1, what="handshake failure counted", listener="imaps")
    m = gw.metrics()
    assert m.value("postern_connections_accepted_total", listener="imaps") == 1
    # nothing reached the backend
    assert m.value("postern_backend_connect_duration_seconds_count", backend="imap") == 0
    assert m.value("postern_bytes_total", listener="imaps") == 0
    ended = gw.find_records(lambda r: r.get("message") == "session ended", after=mark)
    assert all(r.get("outcome") == "tls_error" and not r.get("backend") for r in ended), ended

    # and the listener still serves
    s = _imap_select(gw.addr("imaps"), client_ctx, mailbox.user, mailbox.password)
    assert s.logout()[0] == "BYE"


def test_client_hello_then_silence_is_not_relayed(gateway: Postern, client_ctx):
    """A client that completes TCP but closes before finishing TLS leaves postern healthy."""
    for _ in range(5):
        s = socket.create_connection(gateway.addr("imaps"), timeout=5)
        s.close()
    m = imaps(gateway.addr("imaps"), client_ctx)
    assert m.welcome.startswith(b"* OK")
    m.shutdown()
    assert gateway.alive()


@pytest.mark.parametrize(
    "protocol,listener,goodbye",
    [
        ("imap", "imaps", b"* BYE [UNAVAILABLE]"),
        ("pop3", "pop3s", b"-ERR [SYS/TEMP]"),
        ("smtp", "submissions", b"421 4.3.0"),
    ],
)
def test_no_backend_goodbye(postern_factory, client_ctx, protocol, listener, goodbye):
    cfg = postern_factory.config()
    cfg.backend("dead", [f"127.0.0.1:{closed_port()}"], connect_timeout="1s")
    cfg.listener(listener, protocol, "dead")
    gw = postern_factory.start(cfg)
    mark = gw.log_mark()

    s = tls_connect(gw.addr(listener), client_ctx, server_hostname="mail.test")
    try:
        line = read_line(s, timeout=15)
        assert line.startswith(goodbye), line
        assert line.endswith(b"\r\n"), line
        rest = read_until_eof(s, timeout=10)
        assert rest == b"", rest
    finally:
        s.close()
    rec = gw.wait_session_end(after=mark, listener=listener)[0]
    assert rec.get("outcome") == "backend_unavailable", rec
    assert gw.alive()


def test_idle_timeout_closes_quiet_session(postern_factory, dovecot, mailbox, client_ctx):
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    cfg.get_listener("imaps")["idle_timeout"] = "1s"
    gw = postern_factory.start(cfg)
    mark = gw.log_mark()
    m = _imap_select(gw.addr("imaps"), client_ctx, mailbox.user, mailbox.password)
    started = time.monotonic()
    read_until_eof(m.sock, timeout=15)
    elapsed = time.monotonic() - started
    m.shutdown()
    assert 0.5 <= elapsed < 10, elapsed
    rec = gw.wait_session_end(after=mark, listener="imaps")[0]
    assert rec["outcome"] == "idle_timeout", rec


def test_max_connections_refuses_and_counts(postern_factory, dovecot, mailbox, client_ctx):
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    cfg.section("server")["max_connections"] = 2
    gw = postern_factory.start(cfg)
    addr = gw.addr("imaps")
    held = [_imap_select(addr, client_ctx, mailbox.user, mailbox.password) for _ in range(2)]
    gw.wait_metric("postern_connections_active", lambda v: v == 2, listener="imaps")

    started = time.monotonic()
    with pytest.raises((ssl.SSLError, OSError, EOFError)):
        s = tls_connect(addr, client_ctx, timeout=10)
        # a TLS 1.3 client may finish its side before it sees the close: the read shows it
        read_line(s, timeout=10)
    assert time.monotonic() - started < 5, "over the limit must be closed at once"
    gw.wait_metric("postern_connections_rejected_total", lambda v: v == 1, listener="imaps", reason="limit")

    held.pop().logout()
    gw.wait_metric("postern_connections_active", lambda v: v == 1, listener="imaps")
    m = _imap_select(addr, client_ctx, mailbox.user, mailbox.password)
    m.logout()
    for h in held:
        h.logout()


def test_tls_versions(postern_factory, dovecot, certs):
    gw = postern_factory.start(postern_factory.config(dovecot, protocols=("imap",)))
    only12 = certs.client_context()
    only12.maximum_version = ssl.TLSVersion.TLSv1_2
    s = tls_connect(gw.addr("imaps"), only12)
    assert s.version() == "TLSv1.2"
    assert read_line(s).startswith(b"* OK")
    s.close()
    s = tls_connect(gw.addr("imaps"), certs.client_context())
    assert s.version() == "TLSv1.3"
    s.close()

    cfg13 = postern_factory.config(dovecot, protocols=("imap",))
    cfg13.section("tls")["min_version"] = "1.3"
    gw13 = postern_factory.start(cfg13)
    with pytest.raises((ssl.SSLError, OSError)):
        tls_connect(gw13.addr("imaps"), only12).close()
    s = tls_connect(gw13.addr("imaps"), certs.client_context())
    assert s.version() == "TLSv1.3"
    s.close()


@pytest.mark.parametrize("listener,alpn", [("imaps", "imap"), ("pop3s", "pop3"), ("submissions", "smtp")])
def test_alpn(gateway: Postern, certs, listener, alpn):
    """A client offering ALPN gets the listener's protocol, or a fatal alert."""
    ctx = certs.client_context()
    ctx.set_alpn_protocols([alpn])
    s = tls_connect(gateway.addr(listener), ctx)
    assert s.selected_alpn_protocol() == alpn
    s.close()
    wrong = certs.client_context()
    wrong.set_alpn_protocols(["h2", "http/1.1"])
    with pytest.raises(ssl.SSLError, match="(?i)no.application.protocol"):
        tls_connect(gateway.addr(listener), wrong).close()
    # and no ALPN at all is served (most mail clients send none)
    s = tls_connect(gateway.addr(listener), certs.client_context())
    assert s.selected_alpn_protocol() is None
    s.close()


def test_combined_pem_certificate(postern_factory, dovecot, certs, mailbox, client_ctx):
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    combined = certs.combined_pem(cfg.workdir / "combined.pem")
    cfg.section("tls")["certificate"] = [{"cert": str(combined)}]
    gw = postern_factory.start(cfg)
    m = _imap_select(gw.addr("imaps"), client_ctx, mailbox.user, mailbox.password)
    assert m.logout()[0] == "BYE"


def test_ipv6_and_ipv4_listen_addresses(postern_factory, dovecot, mailbox, client_ctx):
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    cfg.get_listener("imaps")["listen"] = ["127.0.0.1:0", "[::1]:0"]
    gw = postern_factory.start(cfg)
    addrs = gw.listeners["imaps"]
    assert sorted(a[0] for a in addrs) == ["127.0.0.1", "::1"], addrs
    for host, port in addrs:
        s = tls_connect((host, port), client_ctx, server_hostname="mail.test")
        assert read_line(s).startswith(b"* OK")
        s.close()


# ---- process and CLI ------------------------------------------------------------------------------


def test_sigterm_exits_zero(postern_factory, dovecot):
    gw = postern_factory.start(postern_factory.config(dovecot, protocols=("imap",)))
    started = time.monotonic()
    assert gw.stop(timeout=30) == 0
    assert time.monotonic() - started < 30


def test_sigint_exits_zero(postern_factory, dovecot):
    gw = postern_factory.start(postern_factory.config(dovecot, protocols=("imap",)))
    gw.signal(signal.SIGINT)
    gw.proc.wait(timeout=30)
    assert gw.proc.returncode == 0, gw.log_text()[-2000:]


def test_check_config_good_file(postern_factory, dovecot, postern_bin):
    cfg = postern_factory.config(dovecot)
    res = check_config(postern_bin, cfg.write())
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout + res.stderr
    for name in ("imaps", "pop3s", "submissions"):
        assert name in out, out


def _bad_config_output(postern_factory, postern_bin, dovecot, mutate) -> str:
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    mutate(cfg)
    res = check_config(postern_bin, cfg.write())
    out = res.stdout + res.stderr
    assert res.returncode == 2, f"rc {res.returncode}, want 2\n{out}"
    assert "panicked" not in out, out
    return out


def test_check_config_unknown_key(postern_factory, postern_bin, dovecot):
    out = _bad_config_output(postern_factory, postern_bin, dovecot, lambda c: c.section("server").update(wrokers=2))
    assert "wrokers" in out, out


def test_check_config_unknown_key_in_listener(postern_factory, postern_bin, dovecot):
    out = _bad_config_output(postern_factory, postern_bin, dovecot, lambda c: c.get_listener("imaps").update(idle_timout="1m"))
    assert "idle_timout" in out, out


def test_check_config_listener_names_missing_backend(postern_factory, postern_bin, dovecot):
    out = _bad_config_output(postern_factory, postern_bin, dovecot, lambda c: c.get_listener("imaps").update(backend="nosuchbackend"))
    assert "nosuchbackend" in out, out


def test_check_config_missing_certificate_file(postern_factory, postern_bin, dovecot, test_root):
    missing = str(test_root / "no-such-dir" / "fullchain.pem")
    out = _bad_config_output(
        postern_factory, postern_bin, dovecot, lambda c: c.section("tls")["certificate"][0].update(cert=missing)
    )
    assert missing in out, out


def test_check_config_bad_duration(postern_factory, postern_bin, dovecot):
    out = _bad_config_output(postern_factory, postern_bin, dovecot, lambda c: c.get_backend("imap").update(connect_timeout="soon"))
    assert "connect_timeout" in out, out


def test_check_config_summary_shows_edge_protection_and_backend_tls(postern_factory, dovecot, postern_bin):
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    cfg.section("limits").update(per_ip_connections=50, exempt=["192.0.2.0/24"])
    cfg.get_listener("imaps").update(deny=["198.51.100.0/24"], proxy_protocol="v2", proxy_from=["127.0.0.0/8"])
    cfg.get_backend("imap").update(tls="starttls", tls_name="imap.example.org")
    res = check_config(postern_bin, cfg.write())
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    for text in (
        "at most 50 sessions",
        "exempt: 192.0.2.0/24",
        "deny 198.51.100.0/24; PROXY v2 header required from 127.0.0.0/8",
        'TLS starttls to the servers, verified as "imap.example.org"',
    ):
        assert text in out, out


def test_check_config_proxy_protocol_without_proxy_from(postern_factory, postern_bin, dovecot):
    out = _bad_config_output(postern_factory, postern_bin, dovecot, lambda c: c.get_listener("imaps").update(proxy_protocol="v1"))
    assert "proxy_protocol: a PROXY header is only taken from the peers in proxy_from" in out, out


# ---- half-close and byte integrity with a scripted backend ---------------------------------------


def test_client_half_close_reaches_backend_and_reply_comes_back(postern_factory, client_ctx):
    """The client sends data, then close_notify + FIN, and keeps reading. postern must pass the
    EOF on to the backend as a FIN (not a reset, not a full close), and relay the backend's
    answer, written after that EOF, completely; then end the TLS session cleanly."""
    from harness import MemoryTlsClient, ReadAllBackend

    payload = b"".join(b"%08d payload line from the backend\r\n" % i for i in range(30000))  # ~1.1 MB
    # A PREAUTH greeting: the session is logged in from the start, so the client's bytes are
    # relayed as a logged-in IMAP stream (before login the guard waits for the replies to the
    # client's "commands", which this backend only sends after EOF).
    backend = ReadAllBackend(greeting=b"* PREAUTH fake backend, logged in\r\n", payload=payload).start()
    try:
        cfg = postern_factory.config()
        cfg.backend("scripted", [backend.server])
        cfg.listener("imaps", "imap", "scripted")
        gw = postern_factory.start(cfg)
        mark = gw.log_mark()

        c = MemoryTlsClient(gw.addr("imaps"), client_ctx, server_hostname="mail.test")
        assert c.read_line() == backend.greeting
        sent = b"".join(b"c%06d some client bytes\r\n" % i for i in range(20000))  # ~520 kB
        c.send(sent)
        c.close_write()
        data, how = c.read_to_end()
        c.close()

        assert data == backend.reply_for(sent)
        assert how == "close_notify", how
        # (health probes are conversations too: pick the client's by its first bytes)
        conv = wait_for(
            lambda: [c for c in backend.with_data() if c.received.startswith(sent[:8])],
            10,
            "the backend to finish the client's conversation",
        )[0]
        assert conv.fin and not conv.reset
        assert conv.received == sent
        rec = gw.wait_session_end(after=mark, listener="imaps")[0]
        assert rec["bytes_up"] == len(sent)
        assert rec["bytes_down"] == len(backend.greeting) + len(data)
        assert rec["outcome"] == "closed", rec
    finally:
        backend.stop()
