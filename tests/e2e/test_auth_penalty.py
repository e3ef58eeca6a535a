"""One attacker must not slow everyone's logins (issue 12): Dovecot delays logins from an
address after failed ones (its auth penalty: 2, 4, 8 ... 15 s). With `forward_client =
"protocol"` and postern in Dovecot's `login_trusted_networks`, Dovecot charges the penalty to
the attacker's own address; with `forward_client = "none"` it sees postern's address for
everyone, and every user waits. Each test runs its own Dovecot with the penalty on (the shared
one has it off); one failed login is enough to show it, so each test stays within seconds.
"""

from __future__ import annotations

import time

from harness import LineClient

GOOD = "127.0.0.2"
BAD = "127.0.0.3"


def _gateway(postern_factory, dv, forward_client):
    cfg = postern_factory.config(dv, protocols=("imap",), forward_client=forward_client)
    # postern's own brake off: this is about Dovecot's penalty
    cfg.section("limits").update({"exempt": [], "auth_failures": 0})
    return postern_factory.start(cfg)


def _login(gw, ctx, user, password, source) -> tuple[bytes, float]:
    """The tagged reply to LOGIN and how long it took."""
    with LineClient.tls(gw.addr("imaps"), ctx, "mail.test", source=source, read_greeting=True, timeout=30) as c:
        started = time.monotonic()
        c.cmd(f'l1 LOGIN "{user}" "{password}"'.encode())
        reply = c.tagged(b"l1")[-1]
        took = time.monotonic() - started
        c.cmd(b"z LOGOUT")
        c.tagged(b"z")
        return reply, took


def test_forward_client_protocol_keeps_the_penalty_on_the_attacker(postern_factory, dovecot_factory, client_ctx):
    dv = dovecot_factory(trusted=True, auth_penalty=True)
    gw = _gateway(postern_factory, dv, "protocol")
    user, password = dv.new_user()
    reply, before = _login(gw, client_ctx, user, password, GOOD)
    assert reply.startswith(b"l1 OK"), reply
    reply, _ = _login(gw, client_ctx, user, "wrong", BAD)
    assert reply.startswith(b"l1 NO"), reply
    # the attacker's next attempt waits out its penalty ...
    reply, penalised = _login(gw, client_ctx, user, "wrong-again", BAD)
    assert reply.startswith(b"l1 NO") and penalised >= 1.5, (reply, penalised)
    # ... while the legitimate user logs in as fast as before
    reply, after = _login(gw, client_ctx, user, password, GOOD)
    assert reply.startswith(b"l1 OK"), reply
    assert after < before + 1.0, (before, after)
    assert "rip=127.0.0.3" in dv.log_text()


def test_forward_client_none_puts_every_user_behind_the_penalty(postern_factory, dovecot_factory, client_ctx):
    # What the README warns about: Dovecot sees postern's address for every client.
    dv = dovecot_factory(trusted=False, auth_penalty=True)
    gw = _gateway(postern_factory, dv, "none")
    user, password = dv.new_user()
    reply, before = _login(gw, client_ctx, user, password, GOOD)
    assert reply.startswith(b"l1 OK"), reply
    reply, _ = _login(gw, client_ctx, user, "wrong", BAD)
    assert reply.startswith(b"l1 NO"), reply
    reply, after = _login(gw, client_ctx, user, password, GOOD)
    assert reply.startswith(b"l1 OK"), reply
    assert after >= before + 1.5, (before, after)
