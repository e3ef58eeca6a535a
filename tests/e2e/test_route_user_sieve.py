"""ManageSieve under route = "user": two Dovecots with Pigeonhole behind one route = "user"
sieve backend, two postern instances with the same config. Sieve scripts live on the user's
backend, so the affinity matters as much as for mail: every user's ManageSieve logins
(AUTHENTICATE "PLAIN" with the initial response as a quoted string and as a literal),
through either instance, land on the one Dovecot that serves that user's IMAP too, as
Dovecot's own login log shows; a script put through postern is on that Dovecot's disk."""

from __future__ import annotations

import base64

from harness import wait_for
from harness.director import HOSTS, ctl_json, placed, route_user_config
from harness.line_client import LineClient

USERS = {f"user{i:02d}": f"pw-{i:02d}-x" for i in range(20)}


def _fixture_dovecots(dovecot_factory):
    return [dovecot_factory(host=HOSTS[i], users=dict(USERS), spare_users=0) for i in range(2)]


def _response(c: LineClient) -> list[bytes]:
    """Lines up to and including the next OK/NO/BYE line."""
    return c.lines_until(lambda ln: ln.split(b" ", 1)[0].rstrip(b"\r\n") in (b"OK", b"NO", b"BYE"))


def _sieve_session(p, ctx, user: str, literal: bool) -> LineClient:
    """A ManageSieve session through postern's STARTTLS listener, logged in as `user`."""
    c = LineClient.connect(p.addr("sieve"), source="127.0.0.6")
    before = _response(c)
    assert b'"STARTTLS"' in b"".join(before) and before[-1].startswith(b"OK"), before
    c.cmd(b"STARTTLS")
    assert _response(c)[-1].startswith(b"OK"), "postern's go-ahead"
    c.start_tls(ctx)
    after = _response(c)  # RFC 5804: the capabilities again, over TLS
    assert b'"SASL"' in b"".join(after) and b'"STARTTLS"' not in b"".join(after), after
    ir = base64.b64encode(f"\0{user}\0{USERS[user]}".encode())
    if literal:
        c.send(b'AUTHENTICATE "PLAIN" {%d+}\r\n%s\r\n' % (len(ir), ir))
    else:
        c.send(b'AUTHENTICATE "PLAIN" "%s"\r\n' % ir)
    reply = _response(c)
    assert reply[-1].startswith(b"OK"), reply
    return c


def test_every_managesieve_login_of_a_user_lands_on_its_imap_server(postern_factory, dovecot_factory, client_ctx):
    dovecots = _fixture_dovecots(dovecot_factory)
    backends = {
        "sieve": ("sieve", [dv.server("sieve") for dv in dovecots]),
        "imap": ("imap", [dv.server("imap") for dv in dovecots]),
    }
    pair = []
    for _ in range(2):
        cfg = route_user_config(postern_factory.config(), backends, tls="starttls")
        pair.append(postern_factory.start(cfg))
    for p in pair:
        wait_for(lambda p=p: all(s["up"] for s in ctl_json(p, "servers")["data"]["servers"]), 15, "servers up")

    for p in pair:
        for user in USERS:
            for literal in (False, True):
                c = _sieve_session(p, client_ctx, user, literal)
                c.cmd(b"LOGOUT")
                assert _response(c)[-1].startswith(b"OK")
                c.close()

    def all_logged():
        seen = {u: [len(dv.logins(u)) for dv in dovecots] for u in USERS}
        return seen if all(sum(n) == 4 for n in seen.values()) else None

    seen = wait_for(all_logged, 20, "every ManageSieve login in Dovecot's logs")
    homes = {}
    for user, counts in seen.items():
        assert 0 in counts, f"{user} reached both Dovecots: {counts}"
        homes[user] = counts.index(4)
        # the same server both instances place the user's mail on
        for p in pair:
            assert placed(p, "sieve", user) == dovecots[homes[user]].server("sieve")
            assert placed(p, "imap", user) == dovecots[homes[user]].server("imap")
        assert {r["service"] for r in dovecots[homes[user]].logins(user)} == {"managesieve-login"}
    assert set(homes.values()) == {0, 1}, "both servers take users"

    # A script put through postern lands on the user's own Dovecot.
    user = "user03"
    script = b'require "fileinto";\r\nif header :contains "subject" "x" { fileinto "X"; }\r\n'
    c = _sieve_session(pair[1], client_ctx, user, literal=False)
    c.send(b'PUTSCRIPT "routed" {%d+}\r\n%s\r\n' % (len(script), script))
    assert _response(c)[-1].startswith(b"OK")
    c.cmd(b"LISTSCRIPTS")
    assert any(b'"routed"' in ln for ln in _response(c))
    c.cmd(b"LOGOUT")
    _response(c)
    c.close()
    home, other = dovecots[homes[user]], dovecots[1 - homes[user]]
    assert (home.root / "mail" / user / "sieve" / "routed.sieve").read_bytes() == script
    assert not (other.root / "mail" / user / "sieve" / "routed.sieve").exists()
