"""The brute-force brake (issue 12; `limits.auth_failures` / `auth_failure_window` of
docs/configuration.md): against real Dovecot, 127.0.0.3 fails `auth_failures` logins and its
new connections are then refused with reason `auth_failures` on every listener (STARTTLS: the
protocol's refusal; implicit TLS: a close, no handshake spent) until the window has passed,
while 127.0.0.2 keeps logging in throughout; after the window 127.0.0.3 is served again, and
an exempt network is never blocked.
"""

from __future__ import annotations

import time

from harness import LineClient, wait_for
from harness.edge import BAD, GOOD, REFUSAL, edge_gateway, imaps_login, refused_without_handshake, rejected, starttls_refusal

N = 3
# Long enough that N failed logins fit well inside one window on a busy machine, short
# enough that the test can wait for its end.
WINDOW = 4.0


def _fail(gw, ctx, user, source=BAD):
    """One failed IMAP LOGIN from `source` in a session of its own; returns the time the
    command was sent (postern counts the failure after that, before it passes the NO on)."""
    with LineClient.tls(gw.addr("imaps"), ctx, "mail.test", source=source, read_greeting=True) as c:
        failed_at = time.monotonic()
        c.cmd(f'a LOGIN "{user}" "wrong-password"'.encode())
        assert c.tagged(b"a")[-1].startswith(b"a NO")
        c.cmd(b"z LOGOUT")
        c.tagged(b"z")
    return failed_at


class Probe:
    """Whether imap-st greets a client from `source` or refuses it; counts the refusals."""

    def __init__(self, gw, source=BAD):
        self.gw, self.source, self.refused = gw, source, 0

    def __call__(self) -> bool:
        with LineClient.connect(self.gw.addr("imap-st"), source=self.source, timeout=5) as c:
            first = c.line()
            if first == REFUSAL["imap-st"]:
                assert c.lines_to_eof() == []
                self.refused += 1
                return False
            assert first.startswith(b"* OK"), first
            c.cmd(b"z LOGOUT")
            c.tagged(b"z")
            return True


def _fail_until_blocked(gw, ctx, user, probe, between=lambda: None):
    """Fails logins from BAD, one session each, until its next connection is refused; after
    each failure `between()` runs (the legitimate client). Returns (failures, time of the last)."""
    for failures in range(1, N + 2):
        last = _fail(gw, ctx, user)
        between()
        served = probe()
        if failures < N:
            assert served, f"served after {failures} of {N} failures"
        elif not served:
            return failures, last
    # The table counts failures with a sliding-window estimate (two counters, not one time per
    # failure): when the failures straddle a window boundary, it may lag by less than one
    # failure, so the block may come with failure N + 1, never later.
    raise AssertionError(f"still served after {N + 1} failures")


def test_failed_logins_block_the_address_on_every_listener_until_the_window_has_passed(
    postern_factory, dovecot, client_ctx
):
    gw = edge_gateway(postern_factory, dovecot, auth_failures=N, auth_failure_window=f"{int(WINDOW)}s")
    user, password = dovecot.new_user()
    probe = Probe(gw)
    failures, last = _fail_until_blocked(
        gw, client_ctx, user, probe, between=lambda: imaps_login(gw, client_ctx, user, password, source=GOOD)
    )
    handshakes = gw.metrics().value("postern_tls_handshake_failures_total")

    # Blocked on every listener, the protocol's way; the legitimate client is served.
    assert not probe()
    assert refused_without_handshake(gw.addr("imaps"), BAD)
    for listener in ("pop3-st", "smtp-st"):
        assert starttls_refusal(gw, listener, BAD) == [REFUSAL[listener]], listener
    imaps_login(gw, client_ctx, user, password, source=GOOD)
    wait_for(lambda: rejected(gw, "auth_failures") == probe.refused + 3, 5, "auth_failures refusals counted")
    assert rejected(gw, "auth_failures", "imaps") == 1
    assert gw.metrics().value("postern_tls_handshake_failures_total") == handshakes, "no handshake spent"
    assert gw.metrics().value("postern_logins_total", result="failed") == failures
    assert rejected(gw, "per_ip") == rejected(gw, "rate") == 0

    # Served again once the window since the last failure has passed, and not before.
    wait_for(probe, WINDOW + 10, "127.0.0.3 served again after the window", interval=0.25)
    served_after = time.monotonic() - last
    assert served_after >= WINDOW, f"served {served_after:.2f}s after the last failure"
    imaps_login(gw, client_ctx, user, password, source=BAD)
    imaps_login(gw, client_ctx, user, password, source=GOOD)
    assert rejected(gw, "auth_failures") == probe.refused + 3


def test_a_session_opened_before_the_block_goes_on_and_its_failures_extend_it(postern_factory, dovecot, client_ctx):
    gw = edge_gateway(postern_factory, dovecot, auth_failures=N, auth_failure_window=f"{int(WINDOW)}s")
    user, password = dovecot.new_user()
    probe = Probe(gw)
    with LineClient.tls(gw.addr("imaps"), client_ctx, "mail.test", source=BAD, read_greeting=True) as held:
        failures, _ = _fail_until_blocked(gw, client_ctx, user, probe)
        # the open session is not cut, and a failure in it starts the block's window again
        again = time.monotonic()
        held.cmd(b'a LOGIN "nobody" "wrong"')
        assert held.tagged(b"a")[-1].startswith(b"a NO")
        held.imap_login(user, password)
        held.imap("s", "SELECT INBOX")
        held.cmd(b"z LOGOUT")
        held.tagged(b"z")
    assert not probe()
    wait_for(probe, WINDOW + 10, "served again after the window", interval=0.25)
    assert time.monotonic() - again >= WINDOW
    assert gw.metrics().value("postern_logins_total", result="failed") == failures + 1
    assert rejected(gw, "auth_failures") == probe.refused


def test_exempt_networks_are_never_blocked(postern_factory, dovecot, client_ctx):
    gw = edge_gateway(postern_factory, dovecot, auth_failures=N, auth_failure_window="1m", exempt=[f"{BAD}/32"])
    user, password = dovecot.new_user()
    for _ in range(N + 2):
        _fail(gw, client_ctx, user)
    assert Probe(gw)()
    imaps_login(gw, client_ctx, user, password, source=BAD)
    assert gw.metrics().value("postern_logins_total", result="failed") == N + 2
    assert gw.metrics().value("postern_connections_rejected_total") == 0
