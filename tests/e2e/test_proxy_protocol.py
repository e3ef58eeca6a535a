"""PROXY protocol in front of postern (issue 13; listener `proxy_protocol`, `proxy_from`): a
load balancer on a trusted loopback address sends a v1 or v2 header before the client's first
byte; the address it carries is the client in postern's log and in what postern forwards to
Dovecot. The same header from an untrusted peer, a trusted peer without a header, and a bad
header are refused (reason `proxy`), with the protocol's refusal on a STARTTLS listener and a
bare close on an implicit-TLS one.
"""

from __future__ import annotations

import ssl

import pytest

from harness import LineClient, wait_for
from harness.proxy import proxy_v1, proxy_v2

LB = "127.0.0.2"  # the trusted load balancer
STRANGER = "127.0.0.3"  # a peer not in proxy_from
CLIENT = ("192.0.2.7", 40123)  # the client the load balancer speaks for


def _gateway(postern_factory, dovecot):
    """imaps (implicit, any version) and imap-st (STARTTLS, v2 only), both trusting LB,
    relaying to Dovecot's haproxy listener with a PROXY v2 header of their own."""
    cfg = postern_factory.config()
    cfg.section("tls")["handshake_timeout"] = "1s"
    cfg.backend("imap", [dovecot.server("imap_haproxy")], forward_client="proxy-v2")
    cfg.listener("imaps", "imap", "imap", proxy_protocol="any", proxy_from=[f"{LB}/32"])
    cfg.listener("imap-st", "imap", "imap", tls="starttls", proxy_protocol="v2", proxy_from=[LB])
    return postern_factory.start(cfg)


def _rejected(gw, listener: str) -> float:
    return gw.metrics().value("postern_connections_rejected_total", listener=listener, reason="proxy")


def _login_logout(c: LineClient, user: str, password: str) -> None:
    c.send(f"a1 LOGIN {user} {password}\r\na2 LOGOUT\r\n".encode())
    assert c.tagged(b"a1")[-1].startswith(b"a1 OK")
    assert c.tagged(b"a2")[-1].startswith(b"a2 OK")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_trusted_header_makes_the_claimed_address_the_client(postern_factory, dovecot, client_ctx, version):
    gw = _gateway(postern_factory, dovecot)
    addr = gw.addr("imaps")
    header = proxy_v1(CLIENT, addr) if version == "v1" else proxy_v2(CLIENT, addr)
    user, password = dovecot.new_user()
    mark = gw.log_mark()
    c = LineClient.tls(addr, client_ctx, "mail.test", source=LB, proxy=header, read_greeting=True)
    try:
        assert c.greeting.startswith(b"* OK"), c.greeting
        _login_logout(c, user, password)
    finally:
        c.close()
    # postern's own log names the claimed client, not the load balancer
    gw.wait_session_end(after=mark, listener="imaps", peer=f"{CLIENT[0]}:{CLIENT[1]}", outcome="closed")
    # and Dovecot, told by postern's own PROXY header, logs the same address
    line = dovecot.login_line(user, "imap")
    assert f"rip={CLIENT[0]}," in line, line
    assert _rejected(gw, "imaps") == 0


def test_trusted_header_on_a_starttls_listener_comes_before_the_greeting(postern_factory, dovecot, client_ctx):
    gw = _gateway(postern_factory, dovecot)
    addr = gw.addr("imap-st")
    user, password = dovecot.new_user()
    mark = gw.log_mark()
    # the header and a pipelined CAPABILITY in one segment: the command is answered, not lost
    c = LineClient.connect(addr, source=LB, proxy=proxy_v2(CLIENT, addr) + b"c0 CAPABILITY\r\n")
    try:
        assert c.line().startswith(b"* OK [CAPABILITY"), c.lines
        caps = c.tagged(b"c0")
        assert caps[-1].startswith(b"c0 OK") and b"STARTTLS" in caps[0], caps
        c.send(b"s1 STARTTLS\r\n")
        assert c.tagged(b"s1")[-1].startswith(b"s1 OK")
        c.start_tls(client_ctx, "mail.test")
        _login_logout(c, user, password)
    finally:
        c.close()
    gw.wait_session_end(after=mark, listener="imap-st", peer=f"{CLIENT[0]}:{CLIENT[1]}")
    assert f"rip={CLIENT[0]}," in dovecot.login_line(user, "imap")


def test_untrusted_peer_with_a_header_is_refused(postern_factory, dovecot, client_ctx):
    gw = _gateway(postern_factory, dovecot)
    mark = gw.log_mark()
    # implicit TLS: closed at once, no handshake
    addr = gw.addr("imaps")
    with pytest.raises((ssl.SSLError, OSError, EOFError)):
        LineClient.tls(addr, client_ctx, "mail.test", source=STRANGER, proxy=proxy_v2(CLIENT, addr), timeout=5)
    # STARTTLS: the protocol's refusal, then the close
    addr = gw.addr("imap-st")
    c = LineClient.connect(addr, source=STRANGER, proxy=proxy_v2(CLIENT, addr), timeout=5)
    try:
        assert c.lines_to_eof() == [b"* BYE [UNAVAILABLE] connection refused\r\n"]
    finally:
        c.close()
    wait_for(lambda: _rejected(gw, "imaps") == 1 and _rejected(gw, "imap-st") == 1, 5, "two proxy rejections")
    refused = gw.find_records(lambda r: r.get("message") == "connection refused", mark)
    assert len(refused) == 2 and all(r["reason"] == "proxy" for r in refused), refused
    assert all(STRANGER in r["detail"] for r in refused), refused
    # no session line for a connection that never became a session
    assert gw.find_records(lambda r: r.get("message") == "session ended", mark) == []


def test_trusted_peer_without_a_header_is_refused(postern_factory, dovecot, client_ctx):
    gw = _gateway(postern_factory, dovecot)
    # implicit TLS: a ClientHello where the header should be
    with pytest.raises((ssl.SSLError, OSError, EOFError)):
        LineClient.tls(gw.addr("imaps"), client_ctx, "mail.test", source=LB, timeout=5)
    # STARTTLS: a client that waits for the greeting gets the refusal after the deadline
    c = LineClient.connect(gw.addr("imap-st"), source=LB, timeout=5)
    try:
        assert c.lines_to_eof() == [b"* BYE [UNAVAILABLE] connection refused\r\n"]
    finally:
        c.close()
    # a v1 header where only v2 is accepted, and plain garbage, are refused as well
    for junk in (proxy_v1(CLIENT, gw.addr("imap-st")), b"a1 LOGIN x y\r\n"):
        c = LineClient.connect(gw.addr("imap-st"), source=LB, proxy=junk, timeout=5)
        try:
            assert c.lines_to_eof() == [b"* BYE [UNAVAILABLE] connection refused\r\n"]
        finally:
            c.close()
    wait_for(lambda: _rejected(gw, "imaps") == 1 and _rejected(gw, "imap-st") == 3, 5, "four proxy rejections")
    # postern still serves the load balancer's real clients
    addr = gw.addr("imaps")
    c = LineClient.tls(addr, client_ctx, "mail.test", source=LB, proxy=proxy_v1(CLIENT, addr), read_greeting=True)
    c.close()
    assert c.greeting.startswith(b"* OK")
