"""Who the client is, through STARTTLS and implicit listeners: client-supplied address
claims (IMAP ID x-originating-ip, POP3/SMTP XCLIENT) never reach Dovecot (T12), also after a
failed login and after 16 KiB of pre-login traffic; the `user` postern logs is the one that
authenticated, for every login form of the three protocols.

Shares `starttls_env` with the other test_starttls_*.py files (see harness/starttls.py).
"""

from __future__ import annotations

import pytest

from harness import LineClient
from harness.starttls import PROTOS, SECRETS, USERS, StartTlsEnv, b64, sasl_plain


@pytest.fixture
def env(starttls_env: StartTlsEnv) -> StartTlsEnv:
    """The STARTTLS postern + Dovecot shared by the test_starttls_*.py files."""
    return starttls_env


# ---- client-supplied address claims (T12) ----------------------------------------------------


def _refused(lines: list[bytes], tag: bytes) -> None:
    assert len(lines) == 1 and (lines[0].startswith(tag + b" BAD") or lines[0].startswith(tag + b" NO")), lines


@pytest.mark.parametrize("mode", ["implicit", "st"])
def test_imap_id_x_originating_ip_refused(env: StartTlsEnv, client_ctx, mode):
    """Each claim spelling is refused and never reaches Dovecot. The guard ends a session at
    its third refused claim (MAX_REFUSED_CLAIMS, docs/starttls.md T12), so the first
    connection makes two claims and then logs in with a legitimate ID; the second makes a
    third claim and is ended with `* BYE` and outcome protocol_error."""
    ip = "1.2.3.4" if mode == "implicit" else "1.2.3.7"
    listener = "imap-implicit" if mode == "implicit" else "imap-st"

    def connect():
        if mode == "implicit":
            return env.implicit(listener, client_ctx, "imap")
        return env.starttls("imap", listener, client_ctx)

    with connect() as c:
        c.cmd(b'a ID ("x-originating-ip" "%s")' % ip.encode())
        _refused(c.tagged(b"a"), b"a")
        c.cmd(b'b id ("name" "t" "X-Connected-IP" "%s")' % ip.encode())
        _refused(c.tagged(b"b"), b"b")
        # an ID without such fields is the client's right and reaches Dovecot
        c.cmd(b'c ID ("name" "pytest")')
        lines = c.tagged(b"c")
        assert lines[0].startswith(b"* ID ") and lines[-1].startswith(b"c OK"), lines
        c.cmd(b"d LOGIN st-t12-imap " + USERS["st-t12-imap"].encode())
        assert c.tagged(b"d")[-1].startswith(b"d OK")
        c.cmd(b"z LOGOUT")
        c.read_to_eof()
    assert env.ended(c)["outcome"] == "closed"
    login = env.dovecot.login_line("st-t12-imap")
    assert "rip=127.0.0.1" in login, login

    with connect() as c:
        c.cmd(b'a ID ("x-originating-ip" "%s")' % ip.encode())
        _refused(c.tagged(b"a"), b"a")
        c.cmd(b'b ID ("X-ORIGINATING-PORT" "4711")')
        _refused(c.tagged(b"b"), b"b")
        # the field name as a non-synchronizing literal: its bytes follow at once; the third
        # refused claim is answered, then the session ends with the goodbye
        c.send(b'l ID ({16+}\r\nx-originating-ip "%s")\r\n' % ip.encode())
        _refused(c.tagged(b"l"), b"l")
        rest = c.read_to_eof()
        assert rest == b"* BYE Too many refused commands, closing connection\r\n", rest
    assert env.ended(c)["outcome"] == "protocol_error"
    assert ip not in env.dovecot.log_text()


@pytest.mark.parametrize("mode", ["implicit", "st"])
def test_pop3_xclient_refused(env: StartTlsEnv, client_ctx, mode):
    ip = "1.2.3.5" if mode == "implicit" else "1.2.3.8"
    if mode == "implicit":
        c = env.implicit("pop3-implicit", client_ctx, "pop3")
    else:
        c = env.starttls("pop3", "pop3-st", client_ctx)
    with c:
        c.cmd(b"XCLIENT ADDR=%s" % ip.encode())
        assert c.line().startswith(b"-ERR")
        c.cmd(b"xclient addr=%s port=4711" % ip.encode())
        assert c.line().startswith(b"-ERR")
        c.cmd(b"USER st-t12-pop")
        assert c.line().startswith(b"+OK")
        c.cmd(b"PASS " + USERS["st-t12-pop"].encode())
        assert c.line().startswith(b"+OK")
        c.cmd(b"QUIT")
        c.read_to_eof()
    env.dovecot.login_line("st-t12-pop")
    assert ip not in env.dovecot.log_text()


@pytest.mark.parametrize("mode", ["implicit", "st"])
def test_smtp_xclient_refused(env: StartTlsEnv, client_ctx, mode):
    ip = "1.2.3.6" if mode == "implicit" else "1.2.3.9"
    if mode == "implicit":
        c = env.implicit("smtp-implicit", client_ctx, "smtp")
    else:
        c = env.starttls("smtp", "smtp-st", client_ctx)
    with c:
        c.cmd(b"EHLO client.test")
        c.smtp_reply()
        c.cmd(b"XCLIENT ADDR=%s" % ip.encode())
        assert c.smtp_reply()[-1].startswith(b"550 "), "XCLIENT from the client was not refused"
        c.cmd(b"AUTH PLAIN " + sasl_plain("st-t12-smtp", USERS["st-t12-smtp"]))
        assert c.smtp_reply()[-1].startswith(b"235 ")
        c.cmd(b"QUIT")
        c.read_to_eof()
    env.dovecot.login_line("st-t12-smtp")
    assert ip not in env.dovecot.log_text()


# After a failed first login postern stops inspecting (proto/src/watch.rs documents this as a
# limitation): a client-supplied address claim sent then reaches a backend that trusts postern.


@pytest.mark.parametrize("proto", PROTOS)
def test_address_claim_after_failed_login_refused(env: StartTlsEnv, client_ctx, proto):
    ip = {"imap": "1.2.3.10", "pop3": "1.2.3.11", "smtp": "1.2.3.12"}[proto]
    user = f"st-second-{proto}"
    pw = USERS[user]
    with env.starttls(proto, f"{proto}-st", client_ctx) as c:
        if proto == "imap":
            c.cmd(b"a LOGIN %s wrong-password" % user.encode())
            assert c.tagged(b"a")[-1].startswith(b"a NO")
            c.cmd(b'b ID ("x-originating-ip" "%s")' % ip.encode())
            claim = c.tagged(b"b")
            c.cmd(b"c LOGIN %s %s" % (user.encode(), pw.encode()))
            assert c.tagged(b"c")[-1].startswith(b"c OK")
            c.cmd(b"z LOGOUT")
        elif proto == "pop3":
            c.cmd(b"USER " + user.encode())
            c.line()
            c.cmd(b"PASS wrong-password")
            assert c.line().startswith(b"-ERR")
            c.cmd(b"XCLIENT ADDR=%s" % ip.encode())
            claim = [c.line()]
            c.cmd(b"USER " + user.encode())
            assert c.line().startswith(b"+OK")
            c.cmd(b"PASS " + pw.encode())
            assert c.line().startswith(b"+OK")
            c.cmd(b"QUIT")
        else:
            c.cmd(b"EHLO client.test")
            c.smtp_reply()
            c.cmd(b"AUTH PLAIN " + sasl_plain(user, "wrong-password"))
            assert c.smtp_reply()[-1].startswith(b"535")
            c.cmd(b"XCLIENT ADDR=%s" % ip.encode())
            claim = c.smtp_reply()
            c.cmd(b"AUTH PLAIN " + sasl_plain(user, pw))
            c.smtp_reply()
            c.cmd(b"QUIT")
        c.read_to_eof()
    login = env.dovecot.login_line(user)
    assert ip not in login, f"the client's claim {claim!r} reached Dovecot: {login}"
    assert ip not in env.dovecot.log_text()


def test_imap_id_claim_after_16k_of_prelogin_traffic_refused(env: StartTlsEnv, client_ctx):
    ip = "1.2.3.13"
    user = "st-limit-imap"
    with env.starttls("imap", "imap-st", client_ctx) as c:
        # filler: NOOPs, not IDs (Dovecot honours x-originating-* only in the first ID it gets)
        for batch in range(40):
            c.send(b"".join(b"n%d.%d NOOP\r\n" % (batch, i) for i in range(50)))
            c.lines_until(lambda ln: ln.startswith(b"n%d.49 " % batch))
        c.cmd(b'b ID ("x-originating-ip" "%s")' % ip.encode())
        claim = c.tagged(b"b")
        c.cmd(b"c LOGIN %s %s" % (user.encode(), USERS[user].encode()))
        assert c.tagged(b"c")[-1].startswith(b"c OK")
        c.cmd(b"z LOGOUT")
        c.read_to_eof()
    login = env.dovecot.login_line(user)
    assert ip not in login, f"the client's claim {claim!r} reached Dovecot: {login}"


@pytest.mark.parametrize("proto", PROTOS)
def test_user_after_failed_first_login_is_the_authenticated_one(env: StartTlsEnv, client_ctx, proto):
    """docs/metrics.md: `user` is the name the client authenticated as, not a first attempt that failed."""
    user = f"st-retry-{proto}"
    pw = USERS[user]
    with env.starttls(proto, f"{proto}-st", client_ctx) as c:
        if proto == "imap":
            c.cmd(b"a LOGIN nosuch-typo wrong-password")
            assert c.tagged(b"a")[-1].startswith(b"a NO")
            c.cmd(b"b LOGIN %s %s" % (user.encode(), pw.encode()))
            assert c.tagged(b"b")[-1].startswith(b"b OK")
            c.cmd(b"z LOGOUT")
        elif proto == "pop3":
            c.cmd(b"USER nosuch-typo")
            c.line()
            c.cmd(b"PASS wrong-password")
            assert c.line().startswith(b"-ERR")
            c.cmd(b"USER " + user.encode())
            assert c.line().startswith(b"+OK")
            c.cmd(b"PASS " + pw.encode())
            assert c.line().startswith(b"+OK")
            c.cmd(b"QUIT")
        else:
            c.cmd(b"EHLO client.test")
            c.smtp_reply()
            c.cmd(b"AUTH PLAIN " + sasl_plain("nosuch-typo", "wrong-password"))
            assert c.smtp_reply()[-1].startswith(b"535")
            c.cmd(b"AUTH PLAIN " + sasl_plain(user, pw))
            assert c.smtp_reply()[-1].startswith(b"235")
            c.cmd(b"QUIT")
        c.read_to_eof()
    assert env.ended(c)["user"] == user


# ---- user capture for every login form ---------------------------------------------------------


def _session(env: StartTlsEnv, ctx, proto: str, mode: str) -> LineClient:
    """A TLS session at `P-implicit` or, upgraded, at `P-st`."""
    if mode == "implicit":
        return env.implicit(f"{proto}-implicit", ctx, proto)
    return env.starttls(proto, f"{proto}-st", ctx)


def _expect_user(env: StartTlsEnv, c: LineClient, user: str, listener_mode: str, proto: str) -> None:
    rec = env.ended(c)
    assert rec["user"] == user, rec
    assert rec["listener"] == f"{proto}-{listener_mode}"
    assert rec["outcome"] == "closed", rec


@pytest.mark.parametrize("mode", ["st", "implicit"])
@pytest.mark.parametrize("form", ["atom", "quoted", "literal", "literal-plus", "sasl-ir", "sasl-continuation"])
def test_imap_user_capture(env: StartTlsEnv, client_ctx, mode, form):
    user = {"atom": "st-atom", "quoted": "st-quoted", "literal": "stlit", "literal-plus": "stlip", "sasl-ir": "st-sasl-ir", "sasl-continuation": "st-sasl-cont"}[form]
    pw = USERS[user].encode()
    with _session(env, client_ctx, "imap", mode) as c:
        if form == "atom":
            c.cmd(b"a LOGIN %s %s" % (user.encode(), pw))
        elif form == "quoted":
            c.cmd(b'a LOGIN "%s" "%s"' % (user.encode(), pw))
        elif form == "literal":
            c.cmd(b"a LOGIN {%d}" % len(user))
            assert c.line().startswith(b"+")
            c.cmd(b"%s {%d}" % (user.encode(), len(pw)))
            assert c.line().startswith(b"+")
            c.cmd(pw)
        elif form == "literal-plus":
            c.send(b"a LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(user), user.encode(), len(pw), pw))
        elif form == "sasl-ir":
            blob = sasl_plain(user, pw.decode())
            c.cmd(b"a AUTHENTICATE PLAIN " + blob)
        else:
            blob = sasl_plain(user, pw.decode())
            c.cmd(b"a AUTHENTICATE PLAIN")
            assert c.line().startswith(b"+")
            c.cmd(blob)
        lines = c.tagged(b"a")
        assert lines[-1].startswith(b"a OK"), lines
        c.cmd(b"b SELECT INBOX")
        assert c.tagged(b"b")[-1].startswith(b"b OK")
        c.cmd(b"z LOGOUT")
        c.read_to_eof()
    _expect_user(env, c, user, mode, "imap")


@pytest.mark.parametrize("mode", ["st", "implicit"])
@pytest.mark.parametrize("form", ["user-pass", "auth-plain", "auth-plain-continuation"])
def test_pop3_user_capture(env: StartTlsEnv, client_ctx, mode, form):
    user = {"user-pass": "st-pop-user", "auth-plain": "st-pop-plain", "auth-plain-continuation": "st-pop-plaincont"}[form]
    pw = USERS[user]
    with _session(env, client_ctx, "pop3", mode) as c:
        if form == "user-pass":
            c.cmd(b"USER " + user.encode())
            assert c.line().startswith(b"+OK")
            c.cmd(b"PASS " + pw.encode())
        elif form == "auth-plain":
            blob = sasl_plain(user, pw)
            c.cmd(b"AUTH PLAIN " + blob)
        else:
            blob = sasl_plain(user, pw)
            c.cmd(b"AUTH PLAIN")
            assert c.line().startswith(b"+")
            c.cmd(blob)
        assert c.line().startswith(b"+OK")
        c.cmd(b"STAT")
        assert c.line().startswith(b"+OK")
        c.cmd(b"QUIT")
        c.read_to_eof()
    _expect_user(env, c, user, mode, "pop3")


@pytest.mark.parametrize("mode", ["st", "implicit"])
@pytest.mark.parametrize("form", ["auth-plain", "auth-plain-continuation", "auth-login"])
def test_smtp_user_capture(env: StartTlsEnv, client_ctx, mode, form):
    user = {"auth-plain": "st-smtp-plain", "auth-plain-continuation": "st-smtp-plaincont", "auth-login": "st-smtp-login"}[form]
    pw = USERS[user]
    with _session(env, client_ctx, "smtp", mode) as c:
        c.cmd(b"EHLO client.test")
        c.smtp_reply()
        if form == "auth-plain":
            blob = sasl_plain(user, pw)
            c.cmd(b"AUTH PLAIN " + blob)
        elif form == "auth-plain-continuation":
            blob = sasl_plain(user, pw)
            c.cmd(b"AUTH PLAIN")
            assert c.line().startswith(b"334")
            c.cmd(blob)
        else:
            SECRETS.add(b64(pw))
            c.cmd(b"AUTH LOGIN")
            assert c.line().startswith(b"334 ")
            c.cmd(b64(user))
            assert c.line().startswith(b"334 ")
            c.cmd(b64(pw))
        assert c.smtp_reply()[-1].startswith(b"235 ")
        c.cmd(b"QUIT")
        c.read_to_eof()
    _expect_user(env, c, user, mode, "smtp")


# ---- last: no password in any log line -------------------------------------------------------


def test_zz_no_password_in_postern_log(env: StartTlsEnv):
    """Runs last in this module (file order): no secret any test sent so far was logged."""
    env.assert_no_secret_logged()
