"""The harness pieces other tests build on, checked on their own and through postern: PROXY
headers written by a client and parsed by the scripted backend, distinct loopback source
addresses, and the scripted backend recording every line postern relays (IMAP and SMTP)."""

from __future__ import annotations

import pytest

from harness import (
    LineClient,
    ScriptedBackend,
    parse_proxy,
    proxy_v1,
    proxy_v1_unknown,
    proxy_v2,
    smtps,
    smtp_responder,
)


@pytest.mark.parametrize(
    "header, want",
    [
        (proxy_v1(("127.0.0.2", 4000), ("127.0.0.1", 993)), (1, "PROXY", ("127.0.0.2", 4000), ("127.0.0.1", 993))),
        (proxy_v1(("::1", 4000), ("::1", 993)), (1, "PROXY", ("::1", 4000), ("::1", 993))),
        (proxy_v1_unknown(), (1, "UNKNOWN", None, None)),
        (proxy_v2(("127.0.0.2", 4000), ("127.0.0.1", 993)), (2, "PROXY", ("127.0.0.2", 4000), ("127.0.0.1", 993))),
        (proxy_v2(("::1", 4000), ("::1", 993)), (2, "PROXY", ("::1", 4000), ("::1", 993))),
        (proxy_v2(None), (2, "LOCAL", None, None)),
    ],
    ids=["v1-tcp4", "v1-tcp6", "v1-unknown", "v2-tcp4", "v2-tcp6", "v2-local"],
)
def test_proxy_header_round_trip(header, want):
    for cut in range(len(header)):
        assert parse_proxy(header[:cut]) is None, f"complete after {cut} of {len(header)} bytes"
    parsed, used = parse_proxy(header + b"* rest")
    assert used == len(header) and parsed.raw == header
    assert (parsed.version, parsed.command, parsed.src, parsed.dst) == want


def test_client_proxy_header_and_source_reach_a_scripted_backend():
    backend = ScriptedBackend("direct", proxy=True).start()
    try:
        hdr = proxy_v2(("192.0.2.7", 5555), ("127.0.0.1", backend.port))
        with LineClient.connect(("127.0.0.1", backend.port), source="127.0.0.3", proxy=hdr, read_greeting=True) as c:
            assert c.peer.startswith("127.0.0.3:")
            assert c.greeting == b"* OK ready direct\r\n"
            c.cmd(b"a1 NOOP")
            assert c.tagged(b"a1") == [b"a1 OK NOOP done direct\r\n"]
        conn = backend.connections[0]
        assert conn.proxy is not None and conn.proxy.src == ("192.0.2.7", 5555)
        assert conn.lines == [b"a1 NOOP\r\n"]
    finally:
        backend.stop()


@pytest.mark.parametrize("forward", ["proxy-v1", "proxy-v2"])
def test_scripted_backend_sees_what_postern_forwards(postern_factory, client_ctx, forward):
    backend = ScriptedBackend("fwd", proxy=True).start()
    try:
        cfg = postern_factory.config()
        cfg.backend("fake", [backend.server], forward_client=forward)
        cfg.listener("imaps", "imap", "fake")
        gw = postern_factory.start(cfg)
        with LineClient.tls(gw.addr("imaps"), client_ctx, "mail.test", source="127.0.0.3", read_greeting=True) as c:
            c.cmd(b"a1 NOOP")
            assert c.tagged(b"a1")[-1].startswith(b"a1 OK")
            c.cmd(b"a2 LOGOUT")
            c.tagged(b"a2")
        backend.wait_line(lambda ln: ln.startswith(b"a2 "), what="the client's LOGOUT")
        conn = next(cn for cn in backend.connections if b"a1 NOOP\r\n" in cn.lines)
        assert conn.proxy is not None and conn.proxy.src[0] == "127.0.0.3", conn.proxy
        assert conn.lines == [b"a1 NOOP\r\n", b"a2 LOGOUT\r\n"]
    finally:
        backend.stop()


def test_scripted_smtp_backend_records_the_session(postern_factory, client_ctx):
    backend = ScriptedBackend("smtp.fake", greeting=b"220 smtp.fake ESMTP\r\n", respond=smtp_responder).start()
    try:
        cfg = postern_factory.config()
        cfg.backend("fake", [backend.server])
        cfg.listener("submissions", "smtp", "fake")
        gw = postern_factory.start(cfg)
        s = smtps(gw.addr("submissions"), client_ctx, source="127.0.0.4")
        try:
            s.login("someone", "pw")
            assert s.sendmail("a@mail.test", ["b@example.org"], b"Subject: x\r\n\r\nbody\r\n") == {}
        finally:
            s.quit()
        # postern's health probes are connections too: the client's is the one that said AUTH
        conn = backend.wait_connection(lambda c: any(ln.startswith(b"AUTH") for ln in c.lines) and c.lines[-1].upper() == b"QUIT\r\n",
                                       what="the client's session through QUIT")
        verbs = [ln.split()[0].upper() for ln in conn.lines if ln.strip()]
        assert verbs[:2] == [b"EHLO", b"AUTH"] and b"MAIL" in verbs and b"DATA" in verbs, conn.lines
        assert b"body\r\n" in conn.lines and verbs[-1] == b"QUIT", conn.lines
    finally:
        backend.stop()
