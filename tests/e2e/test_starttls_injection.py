"""Bytes that must never be answered around the upgrade: pipelined after STARTTLS (T1, T2,
also split over two segments), the upgrade command's grammar (T8), STARTTLS twice (T4), a
ClientHello without STARTTLS (T11), plaintext at an implicit-TLS port (T11).

Shares `starttls_env` with the other test_starttls_*.py files (see harness/starttls.py).
"""

from __future__ import annotations

import re
import socket
import ssl

import pytest

from harness.starttls import PROTOS, USERS, StartTlsEnv


@pytest.fixture
def env(starttls_env: StartTlsEnv) -> StartTlsEnv:
    """The STARTTLS postern + Dovecot shared by the test_starttls_*.py files."""
    return starttls_env


# ---- pipelined bytes after STARTTLS are discarded (T1, T2) ------------------------------------


def test_imap_pipelined_after_starttls_never_answered(env: StartTlsEnv, client_ctx):
    before = env.discarded("imap-st")
    mark = len(env.postern.lines)
    injected = b"b CAPABILITY\r\n"
    with env.client("imap-st") as c:
        c.line()
        c.send(b"a STARTTLS\r\n" + injected)
        assert c.line() == b"a OK Begin TLS negotiation now\r\n"
        c.start_tls(client_ctx)
        c.cmd(b"c NOOP")
        first = c.line()
        assert first.startswith(b"c OK"), f"first line inside TLS is not the reply to c NOOP: {first!r}"
        c.cmd(b"z LOGOUT")
        rest = c.read_to_eof()
    assert b"b OK" not in rest and b"CAPABILITY" not in rest, rest
    env.wait_discarded("imap-st", before, len(injected))
    assert env.postern.find_records(lambda r: "starttls injection" in str(r.get("message", "")), after=mark)


def test_pop3_pipelined_after_stls_never_answered(env: StartTlsEnv, client_ctx):
    before = env.discarded("pop3-st")
    injected = b"USER injected-user\r\n"
    with env.client("pop3-st") as c:
        c.line()
        c.send(b"STLS\r\n" + injected)
        assert c.line() == b"+OK Begin TLS negotiation\r\n"
        c.start_tls(client_ctx)
        # if USER had been replayed, Dovecot would answer +OK to it and then try this PASS
        c.cmd(b"PASS whatever")
        first = c.line()
        assert first.startswith(b"-ERR"), first
        c.cmd(b"QUIT")
        rest = c.read_to_eof()
    assert rest.startswith(b"+OK") and rest.count(b"\r\n") == 1, rest
    env.wait_discarded("pop3-st", before, len(injected))
    assert env.ended(c)["user"] == ""


def test_smtp_pipelined_after_starttls_never_answered(env: StartTlsEnv, client_ctx):
    before = env.discarded("smtp-st")
    injected = b"RSET\r\n"
    with env.client("smtp-st") as c:
        c.line()
        c.cmd(b"EHLO client.test")
        c.smtp_reply()
        c.send(b"STARTTLS\r\n" + injected)
        assert c.line() == b"220 2.0.0 Ready to start TLS\r\n"
        c.start_tls(client_ctx)
        c.cmd(b"EHLO client.test")
        first = c.smtp_reply()
        assert first[0].startswith(b"250-"), f"first reply inside TLS is not the EHLO reply: {first!r}"
        c.cmd(b"QUIT")
        rest = c.read_to_eof()
    assert rest.startswith(b"221") and rest.count(b"\r\n") == 1, rest
    env.wait_discarded("smtp-st", before, len(injected))


def test_pipelined_client_hello_after_starttls_is_discarded(env: StartTlsEnv, client_ctx):
    """T2: a whole ClientHello pipelined with STARTTLS must not be fed to the TLS engine."""
    before = env.discarded("imap-st")
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    with env.client("imap-st") as c:
        c.line()
        c.send(b"a STARTTLS\r\n" + hello)
        assert c.line() == b"a OK Begin TLS negotiation now\r\n"
        # a fresh handshake on the same socket works: the pipelined hello was dropped
        c.start_tls(client_ctx)
        c.cmd(b"b NOOP")
        assert c.line().startswith(b"b OK")
    env.wait_discarded("imap-st", before, len(hello))


def test_imap_bytes_in_a_second_segment_never_answered(env: StartTlsEnv, client_ctx):
    """T2/T3 with the split point between two TCP segments: `b CAPABILITY` sent right after
    `a STARTTLS` but in its own send, before the client has read the go-ahead. postern either
    read both together (the bytes are discarded) or had already switched to TLS (then they
    are garbage to the TLS engine and the handshake fails). Never an answer to `b`."""
    for _ in range(5):
        with env.client("imap-st") as c:
            c.line()
            c.send(b"a STARTTLS\r\n")
            c.send(b"b CAPABILITY\r\n")
            assert c.line() == b"a OK Begin TLS negotiation now\r\n"
            if c.buf:
                # postern already fed `b CAPABILITY` to TLS and answered with an alert record
                assert c.buf.startswith(b"\x15\x03"), bytes(c.buf)
                continue
            try:
                c.start_tls(client_ctx)
            except (ssl.SSLError, ConnectionError, socket.timeout):
                continue  # handshake refused: the stray bytes broke it, as they must
            c.cmd(b"c NOOP")
            first = c.line()
            assert first.startswith(b"c OK"), first


def test_imap_upgrade_command_grammar(env: StartTlsEnv, client_ctx):
    """T8: only `tag SP STARTTLS` (any case, CRLF or bare LF) upgrades; anything else is BAD
    and the session stays in plaintext."""
    with env.client("imap-st") as c:
        c.line()
        for bad in (b"a STARTTLS x\r\n", b"b STARTTLS \r\n", b"d START TLS\r\n", b"STARTTLS\r\n"):
            c.send(bad)
            reply = c.line()
            assert re.match(rb"(\S+|\*) BAD ", reply), (bad, reply)
        c.cmd(b"e NOOP")
        assert c.line().startswith(b"e OK")  # still plaintext, still postern
        c.send(b"f sTaRtTlS\n")
        assert c.line() == b"f OK Begin TLS negotiation now\r\n"
        c.start_tls(client_ctx)
        c.cmd(b"g NOOP")
        assert c.line().startswith(b"g OK")
    with env.client("imap-st") as c:
        c.line()
        # a synchronizing literal: refused and closed, its bytes are never read as commands
        c.send(b"h STARTTLS {3}\r\n")
        got = c.read_to_eof()
    assert got.startswith(b"h BAD ") and b"* BYE " in got, got
    with env.client("imap-st") as c:
        c.line()
        # a NUL (any binary byte) before STARTTLS: closed at once with the protocol's error
        c.send(b"c STARTTLS\x00\r\n")
        got = c.read_to_eof()
    assert got.startswith(b"* BYE Binary data before STARTTLS"), got


def test_pop3_and_smtp_upgrade_command_with_argument_refused(env: StartTlsEnv):
    with env.client("pop3-st") as c:
        c.line()
        c.cmd(b"STLS now")
        assert c.line().startswith(b"-ERR")
        c.cmd(b"NOOP")
        assert c.line() == b"+OK\r\n"
    with env.client("smtp-st") as c:
        c.line()
        c.cmd(b"STARTTLS now")
        assert c.line().startswith(b"501 ")
        c.cmd(b"NOOP")
        assert c.line().startswith(b"250 ")


@pytest.mark.parametrize("proto", PROTOS)
def test_plaintext_on_implicit_port_is_never_answered(env: StartTlsEnv, proto):
    """T11: an implicit-TLS listener never falls back to plaintext."""
    with env.client(f"{proto}-implicit") as c:
        c.send({"imap": b"a CAPABILITY\r\n", "pop3": b"CAPA\r\n", "smtp": b"EHLO x.test\r\n"}[proto])
        got = c.read_to_eof()
    # at most a TLS alert record (content type 21), never a plaintext line
    assert got == b"" or got[:1] == b"\x15", got
    assert env.ended(c)["outcome"] == "tls_error"


# ---- STARTTLS twice (T4) ---------------------------------------------------------------------


def test_imap_starttls_twice_refused(env: StartTlsEnv, client_ctx):
    with env.starttls("imap", "imap-st", client_ctx) as c:
        c.cmd(b"b STARTTLS")
        second = c.line()
        # no second go-ahead: the session stays in the same TLS layer and keeps working
        assert second.startswith(b"b BAD") or second.startswith(b"b NO"), second
        c.cmd(b"c NOOP")
        assert c.line().startswith(b"c OK")
        # and after login (postern no longer inspects): Dovecot answers it
        c.cmd(b"d LOGIN st-misc " + USERS["st-misc"].encode())
        assert c.tagged(b"d")[-1].startswith(b"d OK")
        c.cmd(b"e STARTTLS")
        after_login = c.tagged(b"e")[-1]
        assert after_login.startswith(b"e BAD") or after_login.startswith(b"e NO"), after_login
        c.cmd(b"f NOOP")
        assert c.tagged(b"f")[-1].startswith(b"f OK")
    print("IMAP second STARTTLS:", second, after_login)


def test_pop3_stls_twice_refused(env: StartTlsEnv, client_ctx):
    with env.starttls("pop3", "pop3-st", client_ctx) as c:
        c.cmd(b"STLS")
        second = c.line()
        assert second.startswith(b"-ERR"), second
        c.cmd(b"NOOP")
        assert c.line().startswith(b"-ERR")  # Dovecot: NOOP needs a login; still a live TLS session
        c.cmd(b"QUIT")
        assert c.read_to_eof().startswith(b"+OK")
    print("POP3 second STLS:", second)


def test_smtp_starttls_twice_refused(env: StartTlsEnv, client_ctx):
    with env.starttls("smtp", "smtp-st", client_ctx) as c:
        c.cmd(b"EHLO client.test")
        c.smtp_reply()
        c.cmd(b"STARTTLS")
        second = c.smtp_reply()
        assert second[-1][:1] == b"5", second
        c.cmd(b"NOOP")
        assert c.smtp_reply()[-1].startswith(b"250")
        c.cmd(b"QUIT")
        assert c.read_to_eof().startswith(b"221")
    print("SMTP second STARTTLS:", second)


# ---- a ClientHello without STARTTLS on a STARTTLS port (T11) --------------------------------


@pytest.mark.parametrize("proto", PROTOS)
def test_client_hello_without_starttls_is_not_tls(env: StartTlsEnv, client_ctx, proto):
    # (1) a TLS client straight away: it reads postern's plaintext greeting as a TLS record
    raw = socket.create_connection(env.addr(f"{proto}-st-1s"), timeout=10)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        client_ctx.wrap_socket(raw, server_hostname="localhost").close()
    raw.close()
    # (2) the ClientHello bytes after the greeting: answered as plaintext junk, never a handshake
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    with env.client(f"{proto}-st-1s") as c:
        c.line()
        c.send(hello)
        got = c.read_to_eof(timeout=5)
    print(f"{proto} ClientHello on the plaintext phase ->", got)
    assert not got.startswith(b"\x16"), got[:20]
    allowed = {
        "imap": rb"(\* BAD .*|\S+ BAD .*|\* BYE .*)",
        "pop3": rb"(-ERR .*)",
        "smtp": rb"((500|501|502|503|421) .*)",
    }[proto]
    for ln in got.splitlines():
        assert re.fullmatch(allowed, ln), (ln, got)
    rec = env.ended(c)
    assert rec["tls"] == "" and rec["outcome"] in ("plaintext_timeout", "closed"), rec


# ---- last: no password in any log line -------------------------------------------------------


def test_zz_no_password_in_postern_log(env: StartTlsEnv):
    """Runs last in this module (file order): no secret any test sent so far was logged."""
    env.assert_no_secret_logged()
