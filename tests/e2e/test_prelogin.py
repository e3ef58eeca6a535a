"""The pre-login budget (issue 12; `limits.prelogin_timeout` and `limits.max_prelogin` of
docs/configuration.md), against real Dovecot with nothing exempt:

- a client that never logs in is closed `prelogin_timeout` after its accept, with the
  protocol's goodbye, whichever step it stopped at (IMAPS after the greeting, POP3 and SMTP
  after STARTTLS, IMAP before STARTTLS), and its session ends with outcome `prelogin_timeout`;
  a logged-in session open just as long is untouched;
- with `max_prelogin = 2`, a third connection not logged in is refused (reason `prelogin`:
  the protocol's refusal on STARTTLS listeners, a close without handshake on implicit TLS),
  whatever its address, while logged-in sessions neither count nor are disturbed; a login
  frees a place at once.
"""

from __future__ import annotations

import time

from harness import LineClient, wait_for
from harness.edge import BAD, GOOD, REFUSAL, edge_gateway, held_imaps, imaps_login, refused_without_handshake, rejected, starttls_refusal
from harness.starttls import open_starttls

PRELOGIN = 2.0
THIRD = "127.0.0.4"


def test_a_client_that_never_logs_in_is_closed_after_prelogin_timeout(postern_factory, dovecot, client_ctx):
    gw = edge_gateway(
        postern_factory, dovecot, tls_keys={"handshake_timeout": "1s"}, prelogin_timeout=f"{int(PRELOGIN)}s"
    )
    user, password = dovecot.new_user()
    mark = gw.log_mark()
    logged_in = held_imaps(gw, client_ctx, user, password, GOOD)
    started = time.monotonic()
    idle = {
        "imaps": LineClient.tls(gw.addr("imaps"), client_ctx, "mail.test", source=BAD, read_greeting=True),
        "pop3-st": open_starttls("pop3", gw.addr("pop3-st"), client_ctx, source=BAD),
        "smtp-st": open_starttls("smtp", gw.addr("smtp-st"), client_ctx, source=BAD),
        "imap-st": LineClient.connect(gw.addr("imap-st"), source=BAD),
    }
    idle["smtp-st"].smtp("EHLO client.test")  # the session after TLS, not logged in
    assert idle["imap-st"].line().startswith(b"* OK")  # postern's greeting; STARTTLS never comes
    goodbyes = {name: c.lines_to_eof(timeout=PRELOGIN + 10) for name, c in idle.items()}
    waited = time.monotonic() - started
    assert goodbyes == {
        "imaps": [b"* BYE Autologout; timeout waiting for login\r\n"],
        "pop3-st": [b"-ERR Timeout waiting for login, closing connection\r\n"],
        "smtp-st": [b"421 4.4.2 Timeout waiting for login, closing connection\r\n"],
        # still in the plaintext phase: its own timeout goodbye, cut to the pre-login deadline
        "imap-st": [b"* BYE Autologout; timeout waiting for STARTTLS\r\n"],
    }
    assert waited >= PRELOGIN
    for c in idle.values():
        assert c.eof_kind == "clean", c.eof_kind
        c.close()
    ended = gw.wait_session_end(after=mark, outcome="prelogin_timeout", count=4)
    assert {r["listener"] for r in ended} == set(idle)
    assert gw.metrics().value("postern_sessions_total", outcome="prelogin_timeout") == 4
    # the logged-in session, open longer than prelogin_timeout, goes on
    logged_in.imap("n", "NOOP")
    logged_in.cmd(b"z LOGOUT")
    logged_in.tagged(b"z")
    logged_in.close()
    gw.wait_session_end(after=mark, outcome="closed", listener="imaps")
    assert gw.metrics().value("postern_sessions_total", outcome="prelogin_timeout") == 4


def test_max_prelogin_refuses_a_third_session_not_logged_in_and_logged_in_ones_do_not_count(
    postern_factory, dovecot, client_ctx
):
    gw = edge_gateway(postern_factory, dovecot, max_prelogin=2)
    user, password = dovecot.new_user()
    handshakes = gw.metrics().value("postern_tls_handshake_failures_total")
    # logged-in sessions (held, and one that came and went) take no place
    logged_in = [held_imaps(gw, client_ctx, user, password, GOOD) for _ in range(3)]
    imaps_login(gw, client_ctx, user, password, GOOD)
    plain = LineClient.connect(gw.addr("imap-st"), source=BAD)
    assert plain.line().startswith(b"* OK")
    tls = LineClient.tls(gw.addr("imaps"), client_ctx, "mail.test", source=BAD, read_greeting=True)

    # the budget is process-wide: a third address not logged in is refused, the protocol's way
    assert refused_without_handshake(gw.addr("imaps"), THIRD)
    assert starttls_refusal(gw, "imap-st", THIRD) == [REFUSAL["imap-st"]]
    assert starttls_refusal(gw, "pop3-st", GOOD) == [REFUSAL["pop3-st"]]
    wait_for(lambda: rejected(gw, "prelogin") == 3, 5, "three prelogin refusals")
    assert rejected(gw, "prelogin", "imaps") == 1
    assert gw.metrics().value("postern_tls_handshake_failures_total") == handshakes, "no handshake spent"
    for c in logged_in:
        c.imap("n", "NOOP")

    # a login frees its place at once; the next one not logged in takes it
    tls.imap_login(user, password)
    with LineClient.connect(gw.addr("pop3-st"), source=THIRD) as c:
        assert c.line().startswith(b"+OK")
        assert starttls_refusal(gw, "smtp-st", THIRD) == [REFUSAL["smtp-st"]]
        c.cmd(b"QUIT")
        c.lines_to_eof()
    # an ended session frees its place too
    plain.cmd(b"z LOGOUT")
    plain.lines_to_eof()
    plain.close()
    wait_for(lambda: gw.metrics().value("postern_connections_active", listener="imap-st") == 0, 5, "imap-st closed")
    imaps_login(gw, client_ctx, user, password, THIRD)
    assert rejected(gw, "prelogin") == 4
    for c in [tls, *logged_in]:
        c.imap("n", "NOOP")
        c.close()
