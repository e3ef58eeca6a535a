"""Edge protection (`[limits]`, `allow`/`deny`): a gateway with one implicit-TLS and three
STARTTLS listeners in front of Dovecot, the refusals as each kind of listener shows them, and
the reason counter. Shared by test_limits.py, test_brake.py, test_prelogin.py and test_flood.py.

127.0.0.2 plays the legitimate client and 127.0.0.3 the hostile one; the gateway exempts no
one, so loopback addresses are limited like any other.
"""

from __future__ import annotations

from .line_client import LineClient
from .sockets import connect

GOOD = "127.0.0.2"
BAD = "127.0.0.3"

REFUSAL = {
    "imap-st": b"* BYE [UNAVAILABLE] connection refused\r\n",
    "pop3-st": b"-ERR [IN-USE] connection refused\r\n",
    "smtp-st": b"421 4.7.0 connection refused\r\n",
}


def edge_gateway(postern_factory, dovecot, listener_keys=None, tls_keys=None, **limits):
    """imaps (implicit TLS) and imap-st, pop3-st, smtp-st (STARTTLS) in front of Dovecot, with
    `[limits]` = `limits` over defaults that stay out of the way, nothing exempt (and `[tls]`
    keys from `tls_keys`)."""
    cfg = postern_factory.config()
    cfg.section("tls").update(tls_keys or {})
    base = {"exempt": [], "per_ip_connections": 0, "per_ip_rate": 0, "auth_failures": 0}
    cfg.section("limits").update({**base, **limits})
    cfg.backend("imap", [dovecot.server("imap")])
    cfg.backend("pop3", [dovecot.server("pop3")])
    cfg.backend("submission", [dovecot.server("submission")])
    extra = listener_keys or {}
    cfg.listener("imaps", "imap", "imap", **extra.get("imaps", {}))
    cfg.listener("imap-st", "imap", "imap", tls="starttls", **extra.get("imap-st", {}))
    cfg.listener("pop3-st", "pop3", "pop3", tls="starttls", **extra.get("pop3-st", {}))
    cfg.listener("smtp-st", "smtp", "submission", tls="starttls", **extra.get("smtp-st", {}))
    return postern_factory.start(cfg)


def rejected(gw, reason, listener=None):
    """`postern_connections_rejected_total` for `reason` (summed over listeners unless named)."""
    labels = {"reason": reason}
    if listener:
        labels["listener"] = listener
    return gw.metrics().value("postern_connections_rejected_total", **labels)


def imaps_login(gw, ctx, user, password, source=GOOD):
    """A full IMAPS session: TLS, greeting, LOGIN, SELECT, LOGOUT."""
    with LineClient.tls(gw.addr("imaps"), ctx, "mail.test", source=source, read_greeting=True) as c:
        c.imap_login(user, password)
        c.imap("s", "SELECT INBOX")
        c.cmd(b"z LOGOUT")
        c.tagged(b"z")


def held_imaps(gw, ctx, user, password, source):
    """An IMAPS session logged in and left open (the caller closes it)."""
    c = LineClient.tls(gw.addr("imaps"), ctx, "mail.test", source=source, read_greeting=True)
    c.imap_login(user, password)
    return c


def refused_without_handshake(addr, source):
    """An implicit-TLS refusal: the connection is closed before postern sends a byte or reads
    a ClientHello (a served client would wait here for the handshake it has not started)."""
    s = connect(addr, timeout=5, source=source)
    try:
        s.settimeout(5)
        try:
            data = s.recv(1024)
        except ConnectionResetError:
            data = b""
        return data == b""
    finally:
        s.close()


def starttls_refusal(gw, listener, source):
    """Every line a STARTTLS listener sends `source` before it closes."""
    with LineClient.connect(gw.addr(listener), source=source, timeout=5) as c:
        return c.lines_to_eof()
