"""ManageSieve (`protocol = "sieve"`, RFC 5804) through postern to Dovecot's Pigeonhole.

A real client (Python's `managesieve` package) against a STARTTLS listener: before STARTTLS
it sees postern's own capability list (no SASL mechanism, STARTTLS offered), after it
Dovecot's (without STARTTLS); it logs in with AUTHENTICATE "PLAIN" (the SASL data as a
literal, as that client sends it), stores a script with PUTSCRIPT, lists it, and GETSCRIPT
returns exactly the bytes it stored (Dovecot's file on disk holds them too). A wrong
password gives one `login failed` line with the name tried. Raw dialogues show what the
client library cannot: AUTHENTICATE before STARTTLS never reaches Dovecot, and XCLIENT (an
address claim Dovecot's managesieve-login honours from trusted networks) is refused inside
TLS.
"""

from __future__ import annotations

import socket
import ssl

import managesieve
import pytest

from harness import message_is

pytestmark = pytest.mark.timeout(120)

# UTF-8 beyond ASCII and CRLF line ends: the literal's length is in octets, not characters.
SCRIPT = (
    'require ["fileinto", "reject"];\r\n'
    "# Grüße: a comment that is not ASCII\r\n"
    'if header :contains "subject" "[spam]" {\r\n'
    '  fileinto "Junk";\r\n'
    "}\r\n"
)


def gateway(postern_factory, dovecot):
    cfg = postern_factory.config()
    cfg.backend("sieve", [dovecot.server("sieve")])
    cfg.listener("sieve", "sieve", "sieve", tls="starttls")
    return postern_factory.start(cfg)


@pytest.fixture
def trust_test_ca(monkeypatch, certs):
    """The client library builds its own default TLS context: make it trust the test CA."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.cert))


def hang_up(m: managesieve.MANAGESIEVE) -> None:
    """Closes the client's connection for real: the library's logout closes the socket it
    wrapped in TLS, which the TLS socket no longer uses, so the connection stays open."""
    getattr(m.sock, "sslobj", m.sock).close()


def read_response(f) -> list[bytes]:
    """Lines up to and including the next OK/NO/BYE line (no literals expected)."""
    lines = []
    while True:
        line = f.readline()
        assert line, f"connection closed after {lines!r}"
        lines.append(line)
        if line.split(b" ", 1)[0].rstrip(b"\r\n") in (b"OK", b"NO", b"BYE"):
            return lines


def starttls(addr, client_ctx):
    """Raw: postern's greeting, STARTTLS, then the TLS socket and the lines after the upgrade."""
    raw = socket.create_connection(addr, timeout=10)
    f = raw.makefile("rb")
    greeting = read_response(f)
    raw.sendall(b"STARTTLS\r\n")
    assert read_response(f) == [b'OK "Begin TLS negotiation now."\r\n']
    f.close()
    tls = client_ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    return greeting, tls, tls.makefile("rb")


def test_client_puts_lists_and_gets_a_script_through_starttls(
    postern_factory, dovecot, trust_test_ca
):
    user, password = dovecot.new_user()
    p = gateway(postern_factory, dovecot)
    host, port = p.addr("sieve")

    m = managesieve.MANAGESIEVE(host, port, timeout=10)
    # Before STARTTLS: postern's own list, no mechanism to log in with.
    assert (m.implementation, m.loginmechs, m.supports_tls) == ("postern", [], 1)
    assert m.starttls()[0] == "OK"
    # After it: Dovecot's list (the client asks for CAPABILITY again), STARTTLS taken out.
    assert m.implementation.startswith("Dovecot") and "Pigeonhole" in m.implementation
    assert "PLAIN" in m.loginmechs and "fileinto" in m.capabilities
    assert m.supports_tls == 0
    assert m.login("", user, password) == "OK"

    assert m.putscript("filter", SCRIPT) == "OK"
    assert m.setactive("filter") == "OK"
    assert m.listscripts() == ("OK", [("filter", True)])
    typ, body = m.getscript("filter")
    assert typ == "OK"
    assert body.encode() == SCRIPT.encode()
    assert m.logout() == "OK"
    hang_up(m)

    on_disk = dovecot.root / "mail" / user / "sieve" / "filter.sieve"
    assert on_disk.read_bytes() == SCRIPT.encode()
    (rec,) = p.wait_session_end(listener="sieve", user=user)
    assert rec["outcome"] == "closed"
    dovecot.login_line(user, service="managesieve")


def test_a_wrong_password_gives_one_login_failed_line(postern_factory, dovecot, trust_test_ca):
    user, _ = dovecot.new_user()
    p = gateway(postern_factory, dovecot)
    m = managesieve.MANAGESIEVE(*p.addr("sieve"), use_tls=True, timeout=10)
    assert m.login("", user, "not-the-password") == "NO"
    assert m.logout() == "OK"
    hang_up(m)
    (rec,) = p.wait_session_end(listener="sieve")
    assert rec["outcome"] == "closed" and not rec.get("user")
    failed = p.find_records(message_is("login failed"))
    assert len(failed) == 1, failed
    assert (failed[0]["listener"], failed[0]["user"]) == ("sieve", user)
    assert failed[0]["backend"] == dovecot.server("sieve")


def test_own_capabilities_before_tls_dovecots_after_and_no_claims(
    postern_factory, dovecot, client_ctx
):
    user, password = dovecot.new_user()
    p = gateway(postern_factory, dovecot)
    addr = p.addr("sieve")
    with socket.create_connection(addr, timeout=10) as raw, raw.makefile("rb") as f:
        greeting = read_response(f)
        assert greeting[:5] == [
            b'"IMPLEMENTATION" "postern"\r\n',
            b'"SASL" ""\r\n',
            b'"SIEVE" ""\r\n',
            b'"STARTTLS"\r\n',
            b'"VERSION" "1.0"\r\n',
        ]
        assert greeting[5].startswith(b'OK "') and len(greeting) == 6
        raw.sendall(b'AUTHENTICATE "PLAIN" "AGFsaWNlAHNlY3JldDE="\r\n')
        assert read_response(f)[0].startswith(b"NO (ENCRYPT-NEEDED) ")

    greeting, tls, f = starttls(addr, client_ctx)
    with tls, f:
        after = read_response(f)
        assert after[0].startswith(b'"IMPLEMENTATION" "Dovecot') and b"Pigeonhole" in after[0]
        assert after[-1].startswith(b"OK ")
        assert not any(line.upper() == b'"STARTTLS"\r\n' for line in after), after
        assert any(line.startswith(b'"SASL" "') and b"PLAIN" in line for line in after), after
        tls.sendall(b"XCLIENT ADDR=192.0.2.66 PORT=4711\r\n")
        assert read_response(f) == [b'NO "XCLIENT is not accepted from clients"\r\n']
        tls.sendall(b"STARTTLS\r\n")
        assert read_response(f) == [b'NO "TLS is already active"\r\n']
        tls.sendall(b"NOOP\r\n")
        assert read_response(f)[-1].startswith(b"OK ")
        tls.sendall(b"LOGOUT\r\n")
        assert read_response(f)[-1].startswith(b"OK ")
    p.wait_session_end(listener="sieve", count=2)
    # Dovecot saw neither the plaintext login nor the claim.
    log = dovecot.log_text()
    assert "192.0.2.66" not in log
