"""The login guard on SMTP, seen from a scripted backend that records every line it gets
(issue 11): `XCLIENT` and `XFORWARD` are refused for the whole session, after AUTH too (a
Postfix that trusts postern would let a logged-in user pose as another address), and a
`BDAT` chunk before AUTH never reaches the backend (one without CHUNKING would read the
chunk as commands). The client gets an error reply for each, and the session goes on; the
third refused claim ends it.
"""

from __future__ import annotations

import base64

from harness import LineClient
from harness.fake_backend import smtp_responder


def _gateway(postern_factory, greeters):
    [backend] = greeters(1, greeting=b"220 smtp.fake ESMTP\r\n", respond=smtp_responder)
    cfg = postern_factory.config()
    cfg.backend("fake", [backend.server], forward_client="none")
    cfg.listener("submissions", "smtp", "fake")
    return postern_factory.start(cfg), backend


def _client(gw, client_ctx) -> LineClient:
    c = LineClient.tls(gw.addr("submissions"), client_ctx, "mail.test", read_greeting=True)
    c.cmd(b"EHLO client.test")
    assert c.smtp_reply()[-1].startswith(b"250 ")
    return c


def _auth(c: LineClient) -> None:
    c.cmd(b"AUTH PLAIN " + base64.b64encode(b"\0someone\0pw"))
    assert c.smtp_reply()[-1].startswith(b"235 ")


def _session_lines(backend, marker: bytes) -> list[bytes]:
    """The lines of the client session that sent `marker` (health probes are connections too),
    once its QUIT arrived."""
    conn = backend.wait_connection(
        lambda cn: any(marker in ln for ln in cn.lines) and cn.lines[-1].upper() == b"QUIT\r\n",
        what=f"the session with {marker!r} through QUIT",
    )
    return conn.lines


def _no_claim(lines: list[bytes], *ips: bytes) -> None:
    for ln in lines:
        assert not ln.upper().startswith((b"XCLIENT", b"XFORWARD")), lines
        assert not any(ip in ln for ip in ips), lines


def test_xclient_and_xforward_after_auth_never_reach_the_backend(postern_factory, greeters, client_ctx):
    gw, backend = _gateway(postern_factory, greeters)
    with _client(gw, client_ctx) as c:
        _auth(c)
        c.cmd(b"XCLIENT ADDR=203.0.113.1 LOGIN=victim")
        assert c.smtp_reply()[-1].startswith(b"550 5.7.0 XCLIENT"), c.lines[-1:]
        c.cmd(b"xforward addr=203.0.113.2")
        assert c.smtp_reply()[-1].startswith(b"550 5.7.0 XFORWARD"), c.lines[-1:]
        # still a working session: the refusals were answered in order
        c.cmd(b"MAIL FROM:<after-claims@mail.test>")
        assert c.smtp_reply()[-1].startswith(b"250 ")
        c.cmd(b"QUIT")
        c.read_to_eof()
    lines = _session_lines(backend, b"after-claims@mail.test")
    assert lines[1].startswith(b"AUTH "), lines
    _no_claim(lines, b"203.0.113.1", b"203.0.113.2")


def test_bdat_chunk_before_auth_never_reaches_the_backend(postern_factory, greeters, client_ctx):
    gw, backend = _gateway(postern_factory, greeters)
    chunk = b"XCLIENT ADDR=203.0.113.3\r\n"
    with _client(gw, client_ctx) as c:
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        assert c.smtp_reply()[-1].startswith(b"530 "), c.lines[-1:]
        # the chunk was dropped whole, not read as a command: the next reply is the NOOP's
        c.cmd(b"NOOP")
        assert c.smtp_reply()[-1].startswith(b"250 "), c.lines[-1:]
        _auth(c)
        c.cmd(b"MAIL FROM:<after-bdat@mail.test>")
        assert c.smtp_reply()[-1].startswith(b"250 ")
        c.cmd(b"QUIT")
        c.read_to_eof()
    lines = _session_lines(backend, b"after-bdat@mail.test")
    assert not any(ln.upper().startswith(b"BDAT") for ln in lines), lines
    _no_claim(lines, b"203.0.113.3")


def test_the_third_refused_claim_ends_the_session(postern_factory, greeters, client_ctx):
    gw, backend = _gateway(postern_factory, greeters)
    mark = gw.log_mark()
    with _client(gw, client_ctx) as c:
        _auth(c)
        for n in range(3):
            c.cmd(b"XCLIENT ADDR=203.0.113.%d" % (10 + n))
            assert c.smtp_reply()[-1].startswith(b"550 "), c.lines[-1:]
        # then the goodbye and the close
        rest = c.read_to_eof()
        assert rest.startswith(b"421 "), rest
    [ended] = gw.wait_session_end(after=mark, listener="submissions", peer=c.peer)
    assert ended["outcome"] == "protocol_error", ended
    _no_claim(backend.received(), b"203.0.113.1")
