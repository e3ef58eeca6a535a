"""The plaintext phase of STARTTLS listeners: no authentication before the upgrade (T4,
T11), nothing of it survives the upgrade (session fixation, T5), and its limits (T9: line
length, command count, the phase's timeout, the handshake timeout after the go-ahead).

Shares `starttls_env` with the other test_starttls_*.py files (see harness/starttls.py).
"""

from __future__ import annotations

import re
import time

import pytest

from harness import make_message
from harness.starttls import GO_AHEAD, PROTOS, USERS, StartTlsEnv, sasl_plain


@pytest.fixture
def env(starttls_env: StartTlsEnv) -> StartTlsEnv:
    """The STARTTLS postern + Dovecot shared by the test_starttls_*.py files."""
    return starttls_env


# ---- authentication before STARTTLS (T4, T11) --------------------------------------------------


def test_imap_login_and_authenticate_before_starttls_refused(env: StartTlsEnv):
    pw = USERS["st-misc"].encode()
    with env.client("imap-st") as c:
        c.line()
        c.cmd(b"a LOGIN st-misc " + pw)
        assert c.line().startswith(b"a NO [PRIVACYREQUIRED] ")
        c.cmd(b"b AUTHENTICATE PLAIN " + sasl_plain("st-misc", pw.decode()))
        assert c.line().startswith(b"b NO [PRIVACYREQUIRED] ")
        c.cmd(b"c authenticate plain")
        assert c.line().startswith(b"c NO [PRIVACYREQUIRED] ")
        c.cmd(b"d NOOP")
        assert c.line().startswith(b"d OK")
        c.cmd(b"e SELECT INBOX")
        assert c.line().startswith(b"e BAD ")
    rec = env.ended(c)
    assert rec["user"] == "" and rec["backend"] == ""


def test_pop3_user_pass_auth_before_stls_refused(env: StartTlsEnv):
    with env.client("pop3-st") as c:
        c.line()
        for cmd in (b"USER st-misc", b"PASS " + USERS["st-misc"].encode(), b"AUTH PLAIN " + sasl_plain("st-misc", USERS["st-misc"]), b"APOP st-misc 0123456789abcdef0123456789abcdef", b"user st-misc"):
            c.cmd(cmd)
            assert c.line().startswith(b"-ERR"), cmd
        c.cmd(b"NOOP")
        assert c.line().startswith(b"+OK")
    rec = env.ended(c)
    assert rec["user"] == "" and rec["backend"] == ""


def test_smtp_auth_and_mail_before_starttls_refused(env: StartTlsEnv):
    with env.client("smtp-st") as c:
        c.line()
        c.cmd(b"EHLO client.test")
        c.smtp_reply()
        for cmd in (b"AUTH PLAIN " + sasl_plain("st-misc", USERS["st-misc"]), b"AUTH LOGIN", b"MAIL FROM:<a@mail.test>", b"mail from:<a@mail.test>"):
            c.cmd(cmd)
            assert c.smtp_reply() == [b"530 5.7.0 Must issue a STARTTLS command first\r\n"], cmd
        c.cmd(b"RCPT TO:<b@example.org>")
        assert c.line().startswith(b"503 ")
        c.cmd(b"NOOP")
        assert c.line().startswith(b"250 ")
    rec = env.ended(c)
    assert rec["user"] == "" and rec["backend"] == ""


# ---- session fixation: a refused plaintext login does not survive the upgrade (T4) ----------


def test_imap_session_fixation_not_authenticated_after_tls(env: StartTlsEnv, client_ctx):
    pre = b"a LOGIN st-misc " + USERS["st-misc"].encode()
    with env.client("imap-st") as c:
        c.line()
        c.cmd(pre)
        assert c.line().startswith(b"a NO [PRIVACYREQUIRED]")
        c.cmd(b"s STARTTLS")
        assert GO_AHEAD["imap"] in c.line()
        c.start_tls(client_ctx)
        c.cmd(b"b SELECT INBOX")
        lines = c.tagged(b"b")
        # Dovecot in the not-authenticated state: SELECT is not a valid command there
        assert lines[-1].startswith(b"b BAD "), lines
        c.cmd(b"c CAPABILITY")
        lines = c.tagged(b"c")
        assert b"AUTH=PLAIN" in lines[0], lines  # pre-login capability list: not logged in
        c.cmd(b"z LOGOUT")
        c.read_to_eof()
    assert env.ended(c)["user"] == ""


def test_pop3_session_fixation_not_authenticated_after_tls(env: StartTlsEnv, client_ctx):
    with env.client("pop3-st") as c:
        c.line()
        c.cmd(b"USER st-misc")
        assert c.line().startswith(b"-ERR")
        c.cmd(b"PASS " + USERS["st-misc"].encode())
        assert c.line().startswith(b"-ERR")
        c.cmd(b"STLS")
        assert GO_AHEAD["pop3"] in c.line()
        c.start_tls(client_ctx)
        c.cmd(b"STAT")
        assert c.line().startswith(b"-ERR")
        # PASS without a USER inside TLS: the plaintext USER was not carried over
        c.cmd(b"PASS " + USERS["st-misc"].encode())
        assert c.line().startswith(b"-ERR")
        c.cmd(b"QUIT")
        c.read_to_eof()
    assert env.ended(c)["user"] == ""


def test_smtp_session_fixation_not_authenticated_after_tls(env: StartTlsEnv, client_ctx):
    with env.client("smtp-st") as c:
        c.line()
        c.cmd(b"EHLO client.test")
        c.smtp_reply()
        c.cmd(b"AUTH PLAIN " + sasl_plain("st-misc", USERS["st-misc"]))
        assert c.line().startswith(b"530 5.7.0")
        c.cmd(b"STARTTLS")
        assert GO_AHEAD["smtp"] in c.line()
        c.start_tls(client_ctx)
        c.cmd(b"EHLO client.test")
        c.smtp_reply()
        c.cmd(b"MAIL FROM:<st-misc@mail.test>")
        assert c.line().startswith(b"530 "), "MAIL accepted inside TLS without AUTH"
        c.cmd(b"QUIT")
        c.read_to_eof()
    assert env.ended(c)["user"] == ""


def test_smtp_after_tls_mail_without_new_ehlo(env: StartTlsEnv, smtp_sink, client_ctx):
    """T5: nothing of the plaintext SMTP state survives the upgrade.

    postern hands the upgraded session to a fresh backend connection, so the backend decides
    what a missing EHLO means. Dovecot's submission (2.3.19) is lenient: after TLS it accepts
    AUTH and MAIL without a new EHLO (235, then 250), not the 503 of rule T5's example. What
    must hold is that the plaintext EHLO never reached the backend: Dovecot writes the HELO
    name of the session into the Received header of the relayed message.
    """
    marker = f"t5-{time.time_ns()}"
    with env.client("smtp-st") as c:
        c.line()
        c.cmd(b"EHLO pre-tls-helo.test")
        c.smtp_reply()
        c.cmd(b"STARTTLS")
        assert GO_AHEAD["smtp"] in c.line()
        c.start_tls(client_ctx)
        c.cmd(b"AUTH PLAIN " + sasl_plain("st-misc", USERS["st-misc"]))
        auth = c.smtp_reply()
        c.cmd(b"MAIL FROM:<st-misc@mail.test>")
        mail = c.smtp_reply()
        c.cmd(b"RCPT TO:<t5@example.org>")
        rcpt = c.smtp_reply()
        c.cmd(b"DATA")
        data = c.smtp_reply()
        c.send(make_message(marker, "T5\n") + b".\r\n")
        done = c.smtp_reply()
        c.cmd(b"QUIT")
        c.read_to_eof()
    assert auth == [b"235 2.7.0 Logged in.\r\n"], auth
    assert mail == [b"250 2.1.0 OK\r\n"], mail
    assert rcpt[-1].startswith(b"250 ") and data[-1].startswith(b"354 ") and done[-1].startswith(b"250 "), (rcpt, data, done)
    got = smtp_sink.wait_for_message(marker.encode())
    assert b"pre-tls-helo.test" not in got.data, got.data[:600]


def test_smtp_after_tls_ehlo_reaches_backend(env: StartTlsEnv, smtp_sink, client_ctx):
    """The control for the test above: an EHLO sent inside TLS does show in Received."""
    marker = f"t5-control-{time.time_ns()}"
    with env.starttls("smtp", "smtp-st", client_ctx) as c:
        c.cmd(b"EHLO post-tls-helo.test")
        c.smtp_reply()
        c.cmd(b"AUTH PLAIN " + sasl_plain("st-misc", USERS["st-misc"]))
        assert c.smtp_reply()[-1].startswith(b"235 ")
        for cmd in (b"MAIL FROM:<st-misc@mail.test>", b"RCPT TO:<t5@example.org>", b"DATA"):
            c.cmd(cmd)
            assert c.smtp_reply()[-1][:1] in (b"2", b"3")
        c.send(make_message(marker, "T5 control\n") + b".\r\n")
        assert c.smtp_reply()[-1].startswith(b"250 ")
        c.cmd(b"QUIT")
        c.read_to_eof()
    got = smtp_sink.wait_for_message(marker.encode())
    assert b"post-tls-helo.test" in got.data, got.data[:600]


# ---- plaintext-phase limits (T9) ---------------------------------------------------------------

LINE_TOO_LONG = {"imap": b"* BYE Line too long\r\n", "pop3": b"-ERR Line too long\r\n", "smtp": rb"421 4\.7\.0 \S+ Line too long, closing connection\r\n"}


@pytest.mark.parametrize("proto", PROTOS)
@pytest.mark.parametrize("terminated", [True, False], ids=["crlf", "no-crlf"])
def test_over_long_line_gets_error_and_close(env: StartTlsEnv, proto, terminated):
    """4096 bytes (the default max_line_length) without a line end, or 4097 with CRLF."""
    with env.client(f"{proto}-st") as c:
        c.line()
        prefix = {"imap": b"a NOOP ", "pop3": b"NOOP ", "smtp": b"NOOP "}[proto]
        line = prefix + b"x" * (4095 - len(prefix)) + b"\r\n" if terminated else prefix + b"x" * (4096 - len(prefix))
        c.send(line)
        got = c.read_to_eof()
    assert re.fullmatch(LINE_TOO_LONG[proto] if proto == "smtp" else re.escape(LINE_TOO_LONG[proto]), got), got
    assert env.ended(c)["outcome"] == "closed"


def test_line_of_exactly_max_length_is_accepted(env: StartTlsEnv):
    with env.client("imap-st") as c:
        c.line()
        line = b"a NOOP" + b" " * (4096 - 8) + b"\r\n"
        assert len(line) == 4096
        c.send(line)
        assert c.line().startswith(b"a BAD ")  # NOOP with arguments, but answered, not closed
        c.cmd(b"b NOOP")
        assert c.line().startswith(b"b OK")


TOO_MANY = {"imap": rb"\* BYE Too many commands before STARTTLS\r\n", "pop3": rb"-ERR Too many commands before STLS\r\n", "smtp": rb"421 4\.7\.0 \S+ Too many commands before STARTTLS, closing connection\r\n"}


@pytest.mark.parametrize("proto", PROTOS)
def test_command_flood_gets_error_and_close(env: StartTlsEnv, proto):
    """max_plaintext_commands = 20 (default): command 21 gets the error, then the close."""
    with env.client(f"{proto}-st") as c:
        c.line()
        cmds = [b"a%d NOOP\r\n" % i if proto == "imap" else b"NOOP\r\n" for i in range(25)]
        c.send(b"".join(cmds))
        got = c.read_to_eof()
    lines = got.splitlines(keepends=True)
    ok = {"imap": lambda i, ln: ln.startswith(b"a%d OK" % i), "pop3": lambda i, ln: ln == b"+OK\r\n", "smtp": lambda i, ln: ln.startswith(b"250 ")}[proto]
    assert len(lines) == 21, lines
    assert all(ok(i, ln) for i, ln in enumerate(lines[:20])), lines[:20]
    assert re.fullmatch(TOO_MANY[proto], lines[20]), lines[20]


TIMEOUT_BYE = {
    "imap": b"* BYE Autologout; timeout waiting for STARTTLS\r\n",
    "pop3": b"-ERR Timeout waiting for STLS, closing connection\r\n",
    "smtp": b"421 4.4.2 Timeout waiting for STARTTLS, closing connection\r\n",
}


@pytest.mark.parametrize("proto", PROTOS)
def test_plaintext_timeout_goodbye_then_close(env: StartTlsEnv, proto):
    with env.client(f"{proto}-st-1s") as c:
        t0 = time.monotonic()
        c.line()
        got = c.read_to_eof(timeout=5)
        elapsed = time.monotonic() - t0
    assert got == TIMEOUT_BYE[proto]
    assert 0.9 <= elapsed < 3.0, elapsed
    assert env.ended(c)["outcome"] == "plaintext_timeout"


def test_plaintext_timeout_is_for_the_whole_phase_slowloris(env: StartTlsEnv):
    """Commands trickling in do not extend the deadline: it covers greeting to STARTTLS."""
    with env.client("imap-st-1s") as c:
        t0 = time.monotonic()
        c.line()
        replies = []
        i = 0
        while time.monotonic() - t0 < 4:
            try:
                c.cmd(b"n%d NOOP" % i)
                replies.append(c.line())
            except (EOFError, ConnectionError, BrokenPipeError):
                break
            i += 1
            time.sleep(0.1)  # the client's pacing, not a wait for an event
        elapsed = time.monotonic() - t0
    assert elapsed < 2.5, f"still open after {elapsed:.1f}s of slow commands"
    assert replies and replies[-1] == TIMEOUT_BYE["imap"], replies[-3:]


@pytest.mark.parametrize("proto", PROTOS)
def test_silence_after_go_ahead_hits_the_handshake_timeout(env: StartTlsEnv, proto):
    """T9: after the go-ahead the TLS handshake has `tls.handshake_timeout` (2s here)."""
    before = env.postern.metrics().value("postern_tls_handshake_failures_total", listener=f"{proto}-st", reason="timeout")
    with env.client(f"{proto}-st") as c:
        c.line()
        c.cmd({"imap": b"a STARTTLS", "pop3": b"STLS", "smtp": b"STARTTLS"}[proto])
        assert GO_AHEAD[proto] in c.line()
        t0 = time.monotonic()
        got = c.read_to_eof(timeout=8)
        elapsed = time.monotonic() - t0
    assert got == b"", got  # no plaintext goodbye once TLS was promised
    assert 1.5 <= elapsed < 5, elapsed
    assert env.ended(c)["outcome"] == "tls_error"
    env.postern.wait_metric("postern_tls_handshake_failures_total", lambda v: v >= before + 1, listener=f"{proto}-st", reason="timeout")


# ---- last: no password in any log line -------------------------------------------------------


def test_zz_no_password_in_postern_log(env: StartTlsEnv):
    """Runs last in this module (file order): no secret any test sent so far was logged."""
    env.assert_no_secret_logged()
