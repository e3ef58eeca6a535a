"""TLS from postern to the backend (`[[backend]] tls`, `tls_ca`, `tls_name`; docs/starttls.md,
"Towards the backend", rules B1-B4) against a real Dovecot with `ssl = yes` and a certificate
from a test CA: implicit TLS (imaps, pop3s) and STARTTLS (imap 143, pop3 STLS) sessions work
and Dovecot logs them as TLS; a server whose certificate is from another CA or for another
name, and a STARTTLS server that does not offer STARTTLS, are never used: the client gets
the protocol's "unavailable" goodbye, postern's `backend connect failed` line names the server
and the reason, health marks it down, and no login reaches it.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest

from harness import Dovecot, LineClient, Postern, ScriptedBackend, check_config, make_ca
from harness.pool import FAST_HEALTH, wait_up

UNAVAILABLE = b"* BYE [UNAVAILABLE]"


@pytest.fixture(scope="module")
def pki(test_root: Path) -> SimpleNamespace:
    """A test CA, the Dovecot certificate it issued (mail.test, localhost, 127.0.0.1), and
    another CA that issued nothing Dovecot serves."""
    d = test_root / "backend-tls-pki"
    ca = make_ca(d, "postern backend test CA", "ca")
    other = make_ca(d, "some other CA", "other-ca")
    return SimpleNamespace(ca=ca, other=other, server=ca.issue(d, "dovecot"))


@pytest.fixture(scope="module")
def tls_dovecot(test_root: Path, pki: SimpleNamespace, smtp_sink) -> Iterator[Dovecot]:
    dv = Dovecot(test_root / "backend-tls-dovecot", name=f"dovetest-btls-{os.getpid()}",
                 ssl=pki.server, relay_port=smtp_sink.port, spare_users=20)
    dv.start()
    yield dv
    dv.stop()


def _gateway(postern_factory, backend: str, proto: str, servers: list[str], **backend_kw) -> Postern:
    cfg = postern_factory.config()
    cfg.backend(backend, servers, health=FAST_HEALTH, **backend_kw)
    cfg.listener("front", proto, backend)
    return postern_factory.start(cfg)


def _imap_login(gw: Postern, ctx, user: str, password: str) -> list[bytes]:
    with LineClient.tls(gw.addr("front"), ctx, "mail.test") as s:
        got = [s.line()]
        s.send(f"a1 LOGIN {user} {password}\r\n".encode())
        got += s.tagged(b"a1")
        s.send(b"a2 SELECT INBOX\r\n")
        got += s.tagged(b"a2")
        s.send(b"a3 LOGOUT\r\n")
        got += s.tagged(b"a3")
        return got


def _pop3_login(gw: Postern, ctx, user: str, password: str) -> list[bytes]:
    with LineClient.tls(gw.addr("front"), ctx, "mail.test") as s:
        got = [s.line()]
        for cmd in (f"USER {user}", f"PASS {password}", "STAT", "QUIT"):
            s.send(cmd.encode() + b"\r\n")
            got.append(s.line())
        return got


@pytest.mark.parametrize("mode,listener", [("implicit", "imaps"), ("starttls", "imap")])
def test_imap_over_tls_to_dovecot(postern_factory, tls_dovecot, pki, client_ctx, mode, listener):
    server = tls_dovecot.server(listener)
    gw = _gateway(postern_factory, "remote", "imap", [server], tls=mode, tls_ca=str(pki.ca.cert))
    user, password = tls_dovecot.new_user()
    got = _imap_login(gw, client_ctx, user, password)
    greeting = got[0]
    assert greeting.startswith(b"* OK [CAPABILITY "), got
    # the capabilities the client sees are the ones Dovecot offers over TLS (B2)
    assert b"AUTH=PLAIN" in greeting and b"STARTTLS" not in greeting, greeting
    assert got[1].startswith(b"a1 OK"), got
    assert any(line.startswith(b"a2 OK") for line in got), got
    # Dovecot's own log: this login came over TLS
    line = tls_dovecot.login_line(user)
    assert "TLS" in line.split(", "), line
    rec = gw.wait_session_end(timeout=10)[0]
    assert rec.get("backend") == server, rec


@pytest.mark.parametrize("mode,listener", [("implicit", "pop3s"), ("starttls", "pop3")])
def test_pop3_over_tls_to_dovecot(postern_factory, tls_dovecot, pki, client_ctx, mode, listener):
    gw = _gateway(postern_factory, "remote", "pop3", [tls_dovecot.server(listener)], tls=mode,
                  tls_ca=str(pki.ca.cert))
    user, password = tls_dovecot.new_user()
    got = _pop3_login(gw, client_ctx, user, password)
    assert got[0].startswith(b"+OK"), got
    assert got[2].startswith(b"+OK"), got
    line = tls_dovecot.login_line(user, service="pop3")
    assert "TLS" in line.split(", "), line


def _refused(gw: Postern, ctx) -> bytes:
    with LineClient.tls(gw.addr("front"), ctx, "mail.test") as s:
        first = s.line()
        s.send(b"a1 LOGIN nobody-here x\r\n")
        return first + s.read_to_eof()


def _failure_line(gw: Postern, server: str, after: int) -> dict:
    return gw.wait_for_record(
        lambda r: r.get("message") == "backend connect failed" and r.get("server") == server,
        timeout=10, what=f"backend connect failed for {server}", after=after)[0]


@pytest.mark.parametrize("case,listener,mode", [
    ("other-ca", "imaps", "implicit"),
    ("wrong-name", "imaps", "implicit"),
    ("wrong-name", "imap", "starttls"),
])
def test_a_server_that_fails_verification_is_never_used(postern_factory, tls_dovecot, pki, client_ctx, case, listener, mode):
    server = tls_dovecot.server(listener)
    if case == "other-ca":
        kw = {"tls_ca": str(pki.other.cert)}
        reason = "UnknownIssuer"
    else:
        kw = {"tls_ca": str(pki.ca.cert), "tls_name": "wrong.test"}
        reason = 'certificate not valid for name "wrong.test"'
    logins_before = len(tls_dovecot.logins())
    gw = _gateway(postern_factory, "remote", "imap", [server], tls=mode, **kw)
    mark = gw.log_mark()
    got = _refused(gw, client_ctx)
    assert got.startswith(UNAVAILABLE), got
    rec = _failure_line(gw, server, mark)
    assert "TLS handshake failed" in rec.get("error", "") and reason in rec.get("error", ""), rec
    # health checks speak the same TLS: the server is down, and sessions counted as failures
    wait_up(gw, "remote", server, 0)
    assert gw.metrics().value("postern_backend_connect_failures_total", backend="remote", server=server) >= 1
    assert len(tls_dovecot.logins()) == logins_before, "no login reached the unverified server"


def test_a_starttls_server_that_does_not_offer_it_is_never_used(postern_factory, client_ctx):
    # B1: no plaintext fallback; the greeting's capability list has no STARTTLS
    fake = ScriptedBackend("plain-only", greeting=b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] plain only\r\n").start()
    try:
        gw = _gateway(postern_factory, "remote", "imap", [fake.server], tls="starttls")
        mark = gw.log_mark()
        got = _refused(gw, client_ctx)
        assert got.startswith(UNAVAILABLE), got
        rec = _failure_line(gw, fake.server, mark)
        assert "does not offer STARTTLS" in rec.get("error", ""), rec
        wait_up(gw, "remote", fake.server, 0)
        # probes and the session connected, read the greeting and left: not one line
        assert fake.received(probes=True) == [], fake.received(probes=True)
        assert len(fake.connections) >= 2
    finally:
        fake.stop()


def test_the_system_roots_do_not_trust_a_private_ca(postern_factory, tls_dovecot, client_ctx):
    # no tls_ca: the system roots, which do not know the test CA
    server = tls_dovecot.server("imaps")
    gw = _gateway(postern_factory, "remote", "imap", [server], tls="implicit", tls_name="mail.test")
    mark = gw.log_mark()
    assert _refused(gw, client_ctx).startswith(UNAVAILABLE)
    assert "UnknownIssuer" in _failure_line(gw, server, mark).get("error", "")


def test_check_config_refuses_a_tls_ca_that_is_not_pem(postern_factory, tls_dovecot, tmp_path):
    bad = tmp_path / "not-a-ca.pem"
    bad.write_text("this is not a certificate\n")
    cfg = postern_factory.config()
    cfg.backend("remote", [tls_dovecot.server("imaps")], tls="implicit", tls_ca=str(bad))
    cfg.listener("front", "imap", "remote")
    res = check_config(postern_factory.binary, cfg.write())
    assert res.returncode == 2, res
    assert "tls_ca" in res.stderr and str(bad) in res.stderr, res.stderr
