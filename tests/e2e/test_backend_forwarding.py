"""Client address forwarding to the backend (issue 5): PROXY v1/v2, IMAP ID and POP3/SMTP
XCLIENT, each seen in Dovecot's own log (`rip=`), for IPv4 and IPv6 clients; a client
cannot spoof its address with its own ID or XCLIENT; an untrusted Dovecot that ignores
XCLIENT gets no session under postern's address.
"""

from __future__ import annotations

import base64
import re

import pytest

from harness import LineClient, Postern, wait_for
from harness.pool import FAST_HEALTH, up


# ---- client address forwarding ----------------------------------------------------------------


def _imap_login_from(gw: Postern, ctx, user: str, password: str, source_ip: str) -> list[bytes]:
    """Greeting, NOOP, LOGIN, LOGOUT with the line client; returns every line the client got."""
    with LineClient.tls(gw.addr("imaps"), ctx, "mail.test", source=source_ip) as s:
        got = [s.line()]
        s.send(b"a1 NOOP\r\n")
        got += s.tagged(b"a1")
        s.send(f"a2 LOGIN {user} {password}\r\n".encode())
        got += s.tagged(b"a2")
        s.send(b"a3 LOGOUT\r\n")
        got += s.tagged(b"a3")
        rest = s.read_to_eof()
        got += rest.splitlines(keepends=True)
        return got


def _pop3_login_from(gw: Postern, ctx, user: str, password: str, source_ip: str) -> list[bytes]:
    with LineClient.tls(gw.addr("pop3s"), ctx, "mail.test", source=source_ip) as s:
        got = [s.line()]
        s.send(b"CAPA\r\n")
        while True:
            got.append(s.line())
            if got[-1] == b".\r\n":
                break
        for cmd in (f"USER {user}", f"PASS {password}", "STAT", "QUIT"):
            s.send(cmd.encode() + b"\r\n")
            got.append(s.line())
        got += s.read_to_eof().splitlines(keepends=True)
        return got


def _smtp_login_from(gw: Postern, ctx, user: str, password: str, source_ip: str) -> list[bytes]:
    """Greeting, EHLO, AUTH PLAIN, QUIT with the line client; every line the client got."""
    with LineClient.tls(gw.addr("submissions"), ctx, "mail.test", source=source_ip) as s:
        got = [s.line()]
        s.send(b"EHLO client.test\r\n")
        while True:
            got.append(s.line())
            if got[-1][3:4] == b" ":
                break
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        s.send(f"AUTH PLAIN {token}\r\n".encode())
        got.append(s.line())
        s.send(b"QUIT\r\n")
        got.append(s.line())
        got += s.read_to_eof().splitlines(keepends=True)
        return got


@pytest.mark.parametrize("version", ["proxy-v2", "proxy-v1"])
def test_proxy_header_gives_dovecot_the_client_address(postern_factory, dovecot, client_ctx, version):
    cfg = postern_factory.config(dovecot, protocols=("imap", "pop3", "smtp"), forward_client=version,
                                 dovecot_listeners={"imap": "imap_haproxy", "pop3": "pop3_haproxy",
                                                    "smtp": "submission_haproxy"},
                                 health=FAST_HEALTH)
    probes_before = dovecot.log_text().count("Aborted login by logging out")
    gw = postern_factory.start(cfg)
    user, password = dovecot.new_user()
    got = _imap_login_from(gw, client_ctx, user, password, "127.0.0.2")
    assert got[0].startswith(b"* OK"), got
    assert got[-1].startswith(b"a3 OK"), got
    line = dovecot.login_line(user, "imap")
    assert "rip=127.0.0.2," in line, line

    user, password = dovecot.new_user()
    got = _pop3_login_from(gw, client_ctx, user, password, "127.0.0.3")
    assert got[0].startswith(b"+OK"), got
    line = dovecot.login_line(user, "pop3")
    assert "rip=127.0.0.3," in line, line

    user, password = dovecot.new_user()
    got = _smtp_login_from(gw, client_ctx, user, password, "127.0.0.4")
    assert got[0].startswith(b"220 ") and got[-1].startswith(b"221 "), got
    line = dovecot.login_line(user, "submission")
    assert "rip=127.0.0.4," in line, line

    # health probes on the haproxy listeners (a LOCAL header, then the greeting) pass: after
    # more than `fall` probe rounds both servers are still up
    wait_for(lambda: dovecot.log_text().count("Aborted login by logging out") >= probes_before + 8, 10,
             "postern's health probes in Dovecot's log")
    assert up(gw, "imap", dovecot.server("imap_haproxy")) == 1
    assert up(gw, "pop3", dovecot.server("pop3_haproxy")) == 1


def test_protocol_forwarding_imap_id(postern_factory, dovecot, client_ctx):
    cfg = postern_factory.config(dovecot, protocols=("imap",), forward_client="protocol")
    gw = postern_factory.start(cfg)
    user, password = dovecot.new_user()
    got = _imap_login_from(gw, client_ctx, user, password, "127.0.0.2")
    # the client sees the greeting, then only replies to its own commands: no `* ID`, no
    # reply tagged with postern's ID tag
    assert got[0].startswith(b"* OK"), got
    assert [l for l in got[1:] if not l.startswith((b"a1 ", b"a2 ", b"a3 ", b"* BYE"))] == [], got
    assert got[1].startswith(b"a1 OK"), got
    assert got[2].startswith(b"a2 OK"), got
    line = dovecot.login_line(user, "imap")
    assert "rip=127.0.0.2," in line, line


def test_protocol_forwarding_keeps_early_client_bytes_in_order(postern_factory, dovecot, client_ctx):
    cfg = postern_factory.config(dovecot, protocols=("imap",), forward_client="protocol")
    gw = postern_factory.start(cfg)
    with LineClient.tls(gw.addr("imaps"), client_ctx, "mail.test", source="127.0.0.2") as s:
        # sent before the greeting arrives, i.e. while postern still talks ID with Dovecot
        s.send(b"p1 NOOP\r\np2 CAPABILITY\r\np3 LOGOUT\r\n")
        got = [s.line()]
        got += s.tagged(b"p1")
        got += s.tagged(b"p2")
        got += s.tagged(b"p3")
        assert s.read_to_eof() == b""
    assert got[0].startswith(b"* OK"), got
    assert got[1].startswith(b"p1 OK"), got
    assert got[2].startswith(b"* CAPABILITY") and got[3].startswith(b"p2 OK"), got
    assert got[4].startswith(b"* BYE") and got[5].startswith(b"p3 OK"), got
    assert len(got) == 6, got


def test_client_cannot_spoof_its_address_with_id_or_xclient(postern_factory, dovecot, client_ctx):
    """With `protocol` forwarding Dovecot believes whatever postern's connection says; a
    client's own ID x-originating-ip / XCLIENT must not reach it, so the log keeps the real
    address."""
    cfg = postern_factory.config(dovecot, protocols=("imap", "pop3"), forward_client="protocol")
    gw = postern_factory.start(cfg)

    user, password = dovecot.new_user()
    with LineClient.tls(gw.addr("imaps"), client_ctx, "mail.test", source="127.0.0.2") as s:
        assert s.line().startswith(b"* OK")
        s.send(b'c1 ID ("x-originating-ip" "192.0.2.66" "x-originating-port" "4242")\r\n')
        reply = s.tagged(b"c1")
        assert reply[-1].startswith(b"c1 BAD"), reply
        s.send(f"c2 LOGIN {user} {password}\r\nc3 LOGOUT\r\n".encode())
        assert s.tagged(b"c2")[-1].startswith(b"c2 OK")
        assert s.tagged(b"c3")[-1].startswith(b"c3 OK")
    line = dovecot.login_line(user, "imap")
    assert "rip=127.0.0.2," in line, line

    user, password = dovecot.new_user()
    with LineClient.tls(gw.addr("pop3s"), client_ctx, "mail.test", source="127.0.0.2") as s:
        assert s.line().startswith(b"+OK")
        s.send(b"XCLIENT ADDR=192.0.2.66 PORT=4242\r\n")
        assert s.line().startswith(b"-ERR")
        for cmd in (f"USER {user}", f"PASS {password}", "QUIT"):
            s.send(cmd.encode() + b"\r\n")
            assert s.line().startswith(b"+OK")
    line = dovecot.login_line(user, "pop3")
    assert "rip=127.0.0.2," in line, line
    assert "192.0.2.66" not in dovecot.log_text()


@pytest.mark.parametrize("forward", ["proxy-v2", "proxy-v1", "protocol"])
def test_ipv6_client_address_forwarded(postern_factory, dovecot, client_ctx, forward):
    listener = "imap" if forward == "protocol" else "imap_haproxy"
    cfg = postern_factory.config()
    cfg.backend("imap", [dovecot.server(listener)], forward_client=forward)
    cfg.listener("imaps6", "imap", "imap", listen=["[::1]:0"])
    gw = postern_factory.start(cfg)
    user, password = dovecot.new_user()
    with LineClient.tls(gw.addr("imaps6"), client_ctx, "mail.test", source="::1") as s:
        assert s.line().startswith(b"* OK")
        s.send(f"a1 LOGIN {user} {password}\r\na2 LOGOUT\r\n".encode())
        assert s.tagged(b"a1")[-1].startswith(b"a1 OK")
        assert s.tagged(b"a2")[-1].startswith(b"a2 OK")
    line = dovecot.login_line(user, "imap")
    assert "rip=::1," in line, line


def test_pop3_xclient_refused_by_untrusted_dovecot(postern_factory, dovecot_factory, client_ctx):
    """An untrusted Dovecot ignores XCLIENT: postern must not run the session under its own
    address; the client gets the no-backend goodbye instead."""
    dv = dovecot_factory(trusted=False)
    cfg = postern_factory.config(dv, protocols=("pop3",), forward_client="protocol")
    gw = postern_factory.start(cfg)
    with LineClient.tls(gw.addr("pop3s"), client_ctx, "mail.test", source="127.0.0.2") as s:
        data = s.read_to_eof(timeout=10)
    assert data.startswith(b"-ERR [SYS/TEMP]") and data.count(b"\r\n") == 1, data
    gw.wait_for_record(lambda r: "trusted" in str(r.get("error", "")), what="a log line with the XCLIENT refusal")


def test_protocol_forwarding_pop3_xclient(postern_factory, dovecot, client_ctx):
    cfg = postern_factory.config(dovecot, protocols=("pop3",), forward_client="protocol")
    gw = postern_factory.start(cfg)
    user, password = dovecot.new_user()
    got = _pop3_login_from(gw, client_ctx, user, password, "127.0.0.2")
    assert got[0].startswith(b"+OK"), got
    # CAPA: "+OK", capability names, "." -- an XCLIENT reply leaking through would put a
    # second status line in front of the capability list
    assert got[1].startswith(b"+OK"), got
    end = got.index(b".\r\n")
    assert all(not l.startswith((b"+OK", b"-ERR")) for l in got[2:end]), got
    user_r, pass_r, stat_r, quit_r = got[end + 1:end + 5]
    assert user_r.startswith(b"+OK") and pass_r.startswith(b"+OK"), got
    assert re.match(rb"\+OK \d+ \d+\r\n", stat_r), got
    assert quit_r.startswith(b"+OK"), got
    assert got[end + 5:] == [], got
    line = dovecot.login_line(user, "pop3")
    assert "rip=127.0.0.2," in line, line


def test_protocol_forwarding_smtp_xclient(postern_factory, dovecot, client_ctx):
    cfg = postern_factory.config(dovecot, protocols=("smtp",), forward_client="protocol")
    gw = postern_factory.start(cfg)
    user, password = dovecot.new_user()
    got = _smtp_login_from(gw, client_ctx, user, password, "127.0.0.2")
    # exactly one greeting (XCLIENT's fresh 220 replaces Dovecot's first), then the EHLO reply
    assert got[0].startswith(b"220 "), got
    assert [l for l in got if l.startswith(b"220")] == [got[0]], got
    assert got[1].startswith(b"250"), got
    assert got[-2].startswith(b"235 "), got
    assert got[-1].startswith(b"221 "), got
    line = dovecot.login_line(user, "submission")
    assert "rip=127.0.0.2," in line, line
