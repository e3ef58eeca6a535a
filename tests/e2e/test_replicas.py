"""Replicas sharing `[tls] ticket_key_file`: a client that got a session ticket from one
postern resumes its TLS session on the other (a load balancer may send it to either)."""

from __future__ import annotations

import base64
import os
import socket

from harness.fake_backend import ScriptedBackend


def _tls(addr, ctx, session=None):
    raw = socket.create_connection(addr, timeout=10)
    s = ctx.wrap_socket(raw, server_hostname="mail.test", session=session)
    # The greeting: TLS 1.3 tickets come after the handshake, read with the first data.
    data = b""
    while b"\n" not in data:
        chunk = s.recv(4096)
        assert chunk, "closed before the greeting"
        data += chunk
    return s, data


def test_a_session_resumes_on_the_other_replica(postern_factory, client_ctx):
    backend = ScriptedBackend("r").start()
    try:
        keys = postern_factory.root / f"ticket-keys-{os.getpid()}-{id(backend)}"
        keys.write_text(base64.b64encode(os.urandom(80)).decode() + "\n")
        keys.chmod(0o600)
        pair = []
        for _ in range(2):
            cfg = postern_factory.config()
            cfg.section("tls")["ticket_key_file"] = str(keys)
            cfg.backend("imap", [backend.server])
            cfg.listener("imaps", "imap", "imap")
            pair.append(postern_factory.start(cfg))
        a, b = pair
        ctx = client_ctx
        s1, greeting = _tls(a.addr("imaps"), ctx)
        assert greeting.startswith(b"* OK")
        session = s1.session
        assert session is not None and session.has_ticket, "no ticket from the first replica"
        s1.close()
        s2, _ = _tls(b.addr("imaps"), ctx, session=session)
        assert s2.session_reused, "the second replica did not resume the first one's session"
        s2.close()

        # A replica with other keys cannot: a full handshake, still served.
        other_keys = keys.with_suffix(".other")
        other_keys.write_text(base64.b64encode(os.urandom(80)).decode() + "\n")
        other_keys.chmod(0o600)
        cfg = postern_factory.config()
        cfg.section("tls")["ticket_key_file"] = str(other_keys)
        cfg.backend("imap", [backend.server])
        cfg.listener("imaps", "imap", "imap")
        c = postern_factory.start(cfg)
        s3, greeting = _tls(c.addr("imaps"), ctx, session=session)
        assert not s3.session_reused and greeting.startswith(b"* OK")
        s3.close()
    finally:
        backend.stop()
