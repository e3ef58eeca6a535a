"""STARTTLS listeners (IMAP 143-style, POP3 110-style, SMTP submission 587-style) through
postern to a real Dovecot with real clients (imaplib, poplib, smtplib, `openssl s_client`,
curl); the capability lists before and after the upgrade (rules T6, T7 of the STARTTLS
rules); ALPN (T10); the no-backend goodbye after the upgrade; a reset after QUIT.

All test_starttls_*.py files share one postern + Dovecot (`starttls_env`, see
harness/starttls.py); each ends by checking that no secret reached postern's log.
"""

from __future__ import annotations

import imaplib
import poplib
import re
import smtplib
import time

import pytest

from harness import curl, make_message
from harness.starttls import PROTOS, USERS, StartTlsEnv, s_client, sasl_plain, served

# Stock clients (imaplib, poplib, smtplib) close their socket right after the QUIT/LOGOUT
# reply without reading postern's close_notify; test_reset_after_quit_is_a_normal_close pins
# that postern still logs such a session as `closed`.
NORMAL_END = {"closed"}


@pytest.fixture
def env(starttls_env: StartTlsEnv) -> StartTlsEnv:
    """The STARTTLS postern + Dovecot shared by the test_starttls_*.py files."""
    return starttls_env


# ---- real clients ---------------------------------------------------------------------------


def test_imaplib_starttls_login_select_fetch(env: StartTlsEnv, client_ctx):
    host, port = env.addr("imap-st")
    mark = env.mark()
    m = imaplib.IMAP4(host, port, timeout=10)
    peer = "%s:%d" % m.sock.getsockname()[:2]
    try:
        assert re.fullmatch(rb"\* OK \[CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\] \S+ ready \(postern\)", m.welcome), m.welcome
        assert set(m.capabilities) == {"IMAP4REV1", "STARTTLS", "LOGINDISABLED"}
        typ, _ = m.starttls(client_ctx)
        assert typ == "OK"
        # imaplib asked CAPABILITY again inside TLS: Dovecot's list, STARTTLS stripped
        assert "STARTTLS" not in m.capabilities and "LOGINDISABLED" not in m.capabilities
        assert "AUTH=PLAIN" in m.capabilities, m.capabilities
        typ, _ = m.login("st-fetch", USERS["st-fetch"])
        assert typ == "OK"
        assert m.select("INBOX") == ("OK", [b"2"])
        for i, expected in enumerate(env.messages, 1):
            typ, data = m.fetch(str(i), "(BODY.PEEK[])")
            assert typ == "OK" and data[0][1] == expected
    finally:
        assert m.logout()[0] == "BYE"
    rec = env.ended_peer(peer, mark)
    assert (rec["listener"], rec["user"]) == ("imap-st", "st-fetch")
    assert rec["outcome"] in NORMAL_END, rec
    assert rec["tls"] == "TLSv1.3"


def test_poplib_stls_user_pass_stat_retr(env: StartTlsEnv, client_ctx):
    host, port = env.addr("pop3-st")
    mark = env.mark()
    p = poplib.POP3(host, port, timeout=10)
    peer = "%s:%d" % p.sock.getsockname()[:2]
    try:
        assert re.fullmatch(rb"\+OK \S+ POP3 ready \(postern\)", p.getwelcome()), p.getwelcome()
        pre = p.capa()
        assert set(pre) == {"STLS", "RESP-CODES", "AUTH-RESP-CODE"}, pre
        assert p.stls(client_ctx).startswith(b"+OK")
        post = p.capa()
        assert "STLS" not in post, post
        assert "USER" in post and "SASL" in post, post
        assert p.user("st-fetch").startswith(b"+OK")
        assert p.pass_(USERS["st-fetch"]).startswith(b"+OK")
        count, size = p.stat()
        assert (count, size) == (2, sum(len(m) for m in env.messages))
        for i, expected in enumerate(env.messages, 1):
            resp, lines, _ = p.retr(i)
            assert resp.startswith(b"+OK")
            assert b"\r\n".join(lines) + b"\r\n" == expected
    finally:
        assert p.quit().startswith(b"+OK")
    rec = env.ended_peer(peer, mark)
    assert (rec["listener"], rec["user"]) == ("pop3-st", "st-fetch")
    assert rec["outcome"] in NORMAL_END, rec


def test_smtplib_starttls_login_sendmail(env: StartTlsEnv, smtp_sink, client_ctx):
    host, port = env.addr("smtp-st")
    marker = f"starttls-submission-{time.time_ns()}"
    mark = env.mark()
    s = smtplib.SMTP(host, port, timeout=10)
    peer = "%s:%d" % s.sock.getsockname()[:2]
    try:
        code, _ = s.ehlo("client.test")
        assert code == 250
        assert s.has_extn("starttls") and not s.has_extn("auth"), s.esmtp_features
        code, _ = s.starttls(context=client_ctx)
        assert code == 220
        code, _ = s.ehlo("client.test")
        assert code == 250
        assert not s.has_extn("starttls"), s.esmtp_features
        assert "PLAIN" in s.esmtp_features.get("auth", "").upper(), s.esmtp_features
        s.login("st-smtp", USERS["st-smtp"])
        refused = s.sendmail("st-smtp@mail.test", ["rcpt@example.org"], make_message(marker, "via STARTTLS\n"))
        assert refused == {}
    finally:
        s.quit()
    got = smtp_sink.wait_for_message(marker.encode())
    assert got.rcpt_tos == ("rcpt@example.org",)
    rec = env.ended_peer(peer, mark)
    assert (rec["listener"], rec["user"]) == ("smtp-st", "st-smtp")
    assert rec["outcome"] in NORMAL_END, rec


@pytest.mark.parametrize(
    "proto, stdin, must, must_not",
    [
        ("imap", b"a CAPABILITY\nz LOGOUT\n", [rb"\* CAPABILITY IMAP4rev1 .*AUTH=PLAIN", rb"\na OK ", rb"\* BYE"], [b"STARTTLS", b"LOGINDISABLED"]),
        ("pop3", b"CAPA\nQUIT\n", [rb"\nUSER\r?\n", rb"\nSASL PLAIN", rb"\n\.\r?\n"], [b"STLS"]),
        ("smtp", b"EHLO x.test\nQUIT\n", [rb"250-AUTH PLAIN", rb"\n221 "], [b"STARTTLS"]),
    ],
)
def test_openssl_s_client_starttls(env: StartTlsEnv, proto, stdin, must, must_not):
    res = s_client(env.addr(f"{proto}-st"), env.certs.cert, stdin, starttls=proto)
    out = res.stdout
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-2000:])
    assert b"Verify return code: 0 (ok)" in out
    after = served(out)
    for pat in must:
        assert re.search(pat, after), (pat, after)
    for word in must_not:
        assert word not in after, (word, after)
    # the backend's greeting was swallowed: Dovecot's banner never reaches the client
    assert b"Dovecot" not in after, after


def test_curl_imap_ssl_reqd_listing(env: StartTlsEnv):
    host, port = env.addr("imap-st")
    mark = env.mark()
    auth = ("--ssl-reqd", "--cacert", str(env.certs.cert), "-u", f"st-fetch:{USERS['st-fetch']}")
    res = curl(*auth, f"imap://{host}:{port}/")
    assert res.returncode == 0, res.stderr
    assert "INBOX" in res.stdout, res.stdout
    res = curl(*auth, f"imap://{host}:{port}/INBOX?ALL")
    assert res.returncode == 0, res.stderr
    assert "* SEARCH 1 2" in res.stdout, res.stdout
    env.postern.wait_session_end(after=mark, count=2, listener="imap-st", user="st-fetch")


def test_curl_pop3_ssl_reqd_listing(env: StartTlsEnv):
    host, port = env.addr("pop3-st")
    mark = env.mark()
    res = curl("--ssl-reqd", "--cacert", str(env.certs.cert), "-u", f"st-fetch:{USERS['st-fetch']}", f"pop3://{host}:{port}/")
    assert res.returncode == 0, res.stderr
    listing = [line.split() for line in res.stdout.strip().splitlines()]
    assert listing == [["1", str(len(env.messages[0]))], ["2", str(len(env.messages[1]))]], res.stdout
    env.postern.wait_session_end(after=mark, listener="pop3-st", user="st-fetch")


def test_curl_smtp_ssl_reqd_submission(env: StartTlsEnv, smtp_sink, tmp_path):
    host, port = env.addr("smtp-st")
    marker = f"curl-starttls-{time.time_ns()}"
    msg = tmp_path / "msg.eml"
    msg.write_bytes(make_message(marker, "sent by curl through STARTTLS\n"))
    mark = env.mark()
    res = curl(
        "--ssl-reqd", "--cacert", str(env.certs.cert), "-u", f"st-smtp:{USERS['st-smtp']}",
        "--mail-from", "st-smtp@mail.test", "--mail-rcpt", "curl@example.org", "-T", str(msg),
        f"smtp://{host}:{port}/client.test",
    )
    assert res.returncode == 0, res.stderr
    got = smtp_sink.wait_for_message(marker.encode())
    assert got.rcpt_tos == ("curl@example.org",)
    env.postern.wait_session_end(after=mark, listener="smtp-st", user="st-smtp")


# ---- capability snapshots before and after TLS (T6, T7) --------------------------------------


def test_imap_pre_tls_greeting_and_capability_snapshot(env: StartTlsEnv):
    with env.client("imap-st") as c:
        greeting = c.line()
        assert re.fullmatch(rb"\* OK \[CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\] [!-~]+ ready \(postern\)\r\n", greeting), greeting
        c.cmd(b"a CAPABILITY")
        lines = c.tagged(b"a")
        assert lines[0] == b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\n"
        assert lines[1].startswith(b"a OK") and len(lines) == 2, lines
        c.cmd(b"b LOGOUT")
        rest = c.read_to_eof()
    assert rest.startswith(b"* BYE ") and b"\r\nb OK" in rest, rest
    for text in (greeting, *lines, rest):
        assert b"AUTH=" not in text and b"PREAUTH" not in text and b"[ALERT]" not in text and b"Dovecot" not in text


def test_pop3_pre_tls_greeting_and_capa_snapshot(env: StartTlsEnv):
    with env.client("pop3-st") as c:
        greeting = c.line()
        assert re.fullmatch(rb"\+OK [!-~]+ POP3 ready \(postern\)\r\n", greeting), greeting
        c.cmd(b"CAPA")
        lines = c.pop3_multi()
        assert lines[0].startswith(b"+OK")
        assert sorted(lines[1:-1]) == sorted([b"STLS\r\n", b"RESP-CODES\r\n", b"AUTH-RESP-CODE\r\n"]), lines
        c.cmd(b"QUIT")
        assert c.read_to_eof().startswith(b"+OK")
    assert b"Dovecot" not in greeting


def test_smtp_pre_tls_greeting_and_ehlo_snapshot(env: StartTlsEnv):
    with env.client("smtp-st") as c:
        greeting = c.line()
        assert re.fullmatch(rb"220 [!-~]+ ESMTP ready \(postern\)\r\n", greeting), greeting
        c.cmd(b"EHLO client.test")
        lines = c.smtp_reply()
        assert all(ln.startswith(b"250") for ln in lines), lines
        keywords = [ln[4:].strip().split(b" ")[0].upper() for ln in lines[1:]]
        assert sorted(keywords) == [b"ENHANCEDSTATUSCODES", b"STARTTLS"], lines
        c.cmd(b"QUIT")
        assert c.read_to_eof().startswith(b"221 ")


def test_imap_post_tls_capability_from_backend_without_starttls(env: StartTlsEnv, client_ctx):
    with env.starttls("imap", "imap-st", client_ctx) as c:
        # the first line inside TLS answers our command: Dovecot's greeting was swallowed
        c.cmd(b"a CAPABILITY")
        lines = c.tagged(b"a")
        assert len(lines) == 2 and lines[0].startswith(b"* CAPABILITY "), lines
        caps = lines[0].split()[2:]
        assert b"STARTTLS" not in caps and b"LOGINDISABLED" not in caps, caps
        assert b"AUTH=PLAIN" in caps and b"IMAP4rev1" in caps, caps
        assert lines[1].startswith(b"a OK")
        c.cmd(b'b LOGIN st-misc "%s"' % USERS["st-misc"].encode())
        lines = c.tagged(b"b")
        assert lines[-1].startswith(b"b OK"), lines
        assert b"STARTTLS" not in b"".join(lines)
        c.cmd(b"c CAPABILITY")
        lines = c.tagged(b"c")
        assert b"STARTTLS" not in b"".join(lines) and lines[-1].startswith(b"c OK"), lines
        c.cmd(b"z LOGOUT")
        c.read_to_eof()


def test_pop3_post_tls_capa_without_stls(env: StartTlsEnv, client_ctx):
    with env.starttls("pop3", "pop3-st", client_ctx) as c:
        c.cmd(b"CAPA")
        lines = c.pop3_multi()
        assert lines[0].startswith(b"+OK") and lines[-1] == b".\r\n", lines
        names = [ln.strip() for ln in lines[1:-1]]
        assert b"STLS" not in names, names
        assert b"USER" in names and any(n.startswith(b"SASL") for n in names), names
        c.cmd(b"QUIT")
        assert c.read_to_eof().startswith(b"+OK")


def test_smtp_post_tls_ehlo_without_starttls(env: StartTlsEnv, client_ctx):
    with env.starttls("smtp", "smtp-st", client_ctx) as c:
        c.cmd(b"EHLO client.test")
        lines = c.smtp_reply()
        assert all(ln.startswith(b"250") for ln in lines), lines
        keywords = [ln[4:].strip().split(b" ")[0].upper() for ln in lines[1:]]
        assert b"STARTTLS" not in keywords, lines
        assert b"AUTH" in keywords, lines
        c.cmd(b"QUIT")
        assert c.read_to_eof().startswith(b"221")


def test_post_login_capabilities_without_starttls(env: StartTlsEnv, client_ctx):
    """The filter keeps working after authentication (when postern stops inspecting the
    client's side): post-login CAPABILITY / CAPA / EHLO never offer a second upgrade."""
    with env.starttls("imap", "imap-st", client_ctx) as c:
        c.cmd(b"a LOGIN st-misc " + USERS["st-misc"].encode())
        assert c.tagged(b"a")[-1].startswith(b"a OK")
        for i in range(2):
            c.cmd(b"c%d CAPABILITY" % i)
            lines = c.tagged(b"c%d" % i)
            assert lines[-1].startswith(b"c%d OK" % i) and b"STARTTLS" not in b"".join(lines), lines
        c.cmd(b"z LOGOUT")
        c.read_to_eof()
    with env.starttls("pop3", "pop3-st", client_ctx) as c:
        c.cmd(b"USER st-misc")
        c.line()
        c.cmd(b"PASS " + USERS["st-misc"].encode())
        assert c.line().startswith(b"+OK")
        c.cmd(b"CAPA")
        lines = c.pop3_multi()
        assert lines[0].startswith(b"+OK") and b"STLS\r\n" not in lines, lines
        c.cmd(b"QUIT")
        c.read_to_eof()
    with env.starttls("smtp", "smtp-st", client_ctx) as c:
        for i in range(2):
            c.cmd(b"EHLO client%d.test" % i)
            lines = c.smtp_reply()
            assert lines[-1].startswith(b"250 ") and not any(b"STARTTLS" in ln for ln in lines), lines
        c.cmd(b"AUTH PLAIN " + sasl_plain("st-misc", USERS["st-misc"]))
        assert c.smtp_reply()[-1].startswith(b"235")
        c.cmd(b"EHLO client9.test")
        lines = c.smtp_reply()
        assert lines[-1].startswith(b"250 ") and not any(b"STARTTLS" in ln for ln in lines), lines
        c.cmd(b"QUIT")
        c.read_to_eof()


# ---- ALPN (T10) on STARTTLS and implicit listeners -------------------------------------------

QUIT = {"imap": b"z LOGOUT\n", "pop3": b"QUIT\n", "smtp": b"QUIT\n"}


@pytest.mark.parametrize("mode", ["st", "implicit"])
@pytest.mark.parametrize("proto", PROTOS)
def test_alpn(env: StartTlsEnv, proto, mode):
    listener = f"{proto}-{mode}"
    starttls = proto if mode == "st" else None
    addr = env.addr(listener)
    failures_before = env.postern.metrics().value("postern_tls_handshake_failures_total", listener=listener, reason="alpn")

    bad = s_client(addr, env.certs.cert, QUIT[proto], starttls=starttls, alpn="h2")
    text = bad.stdout + bad.stderr
    assert bad.returncode != 0, text[-2000:]
    assert b"no application protocol" in text and b"alert number 120" in text, text[-2000:]
    env.postern.wait_metric("postern_tls_handshake_failures_total", lambda v: v >= failures_before + 1, listener=listener, reason="alpn")

    for offer in (proto, f"h2,{proto}"):
        good = s_client(addr, env.certs.cert, QUIT[proto], starttls=starttls, alpn=offer)
        assert good.returncode == 0, (good.stdout + good.stderr)[-2000:]
        assert f"ALPN protocol: {proto}\n".encode() in good.stdout, good.stdout[-1500:]

    none = s_client(addr, env.certs.cert, QUIT[proto], starttls=starttls)
    assert none.returncode == 0, (none.stdout + none.stderr)[-2000:]
    assert b"No ALPN negotiated" in none.stdout
    got = served(none.stdout)
    assert {"imap": b"* BYE", "pop3": b"+OK", "smtp": b"221"}[proto] in got, none.stdout


# ---- no backend reachable: the goodbye after the upgrade --------------------------------------

UNAVAILABLE = {
    "imap": b"* BYE [UNAVAILABLE] ",
    "pop3": b"-ERR [SYS/TEMP] ",
    "smtp": b"421 4.3.0 ",
}


@pytest.mark.parametrize("proto", PROTOS)
def test_no_backend_goodbye_after_starttls(env: StartTlsEnv, client_ctx, proto):
    with env.starttls(proto, f"{proto}-dead-st", client_ctx) as c:
        got = c.read_to_eof(timeout=10)
    assert got.startswith(UNAVAILABLE[proto]) and got.endswith(b"\r\n") and got.count(b"\r\n") == 1, got
    assert env.ended(c)["outcome"] == "backend_unavailable"


# ---- a reset after the last reply is a normal end ----------------------------------------


@pytest.mark.parametrize("proto", PROTOS)
def test_reset_after_quit_is_a_normal_close(env: StartTlsEnv, client_ctx, proto):
    """What imaplib/poplib/smtplib do: read the QUIT reply, then close the socket without
    reading postern's close_notify. Made deterministic here: wait until that record is in
    the socket's receive queue, then close, so the kernel sends RST."""
    import select

    with env.starttls(proto, f"{proto}-st", client_ctx) as c:
        if proto == "imap":
            c.cmd(b"z LOGOUT")
            c.tagged(b"z")
        elif proto == "pop3":
            c.cmd(b"QUIT")
            assert c.line().startswith(b"+OK")
        else:
            c.cmd(b"QUIT")
            assert c.line().startswith(b"221")
        assert not c.buf
        readable, _, _ = select.select([c.sock], [], [], 10)
        assert readable, "postern did not close its side after the backend closed"
    rec = env.ended(c)
    assert rec["outcome"] == "closed", rec


# ---- last: no password in any log line -------------------------------------------------------


def test_zz_no_password_in_postern_log(env: StartTlsEnv):
    """Runs last in this module (file order): no secret any test sent so far was logged."""
    env.assert_no_secret_logged()
