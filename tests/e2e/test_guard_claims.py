"""The login guard against a Dovecot that trusts postern's address (issue 11):
`login_trusted_networks` holds 127.0.0.0/8 and the listener has `forward_client = "none"`, so
Dovecot applies the `x-originating-*` fields of the first `ID` it gets. First the review's
reading of Dovecot is checked against the real server (each claim spelling, sent straight to
Dovecot, moves the logged `rip`); then, through postern, no spelling, no tag-reuse trick and
no claim after a failed login ever shows the claimed address in Dovecot's log. And the other
side of the guard: RFC 2971's largest `ID` (30 pairs of 1024-byte values, quoted or as
literals) reaches Dovecot.
"""

from __future__ import annotations

import itertools

import pytest

from harness import LineClient

# One claimed address per connection (TEST-NET-2: never a real client), so that a leak names
# the case that leaked.
_ips = (f"198.51.100.{n}" for n in itertools.count(10))

# (name, ID command after the tag, with {ip}): every spelling an IMAP server decodes to the
# field name x-originating-ip. `sync` literals make the client wait for a go-ahead.
SPELLINGS = [
    ("quoted", b'ID ("x-originating-ip" "{ip}")'),
    ("upper_case", b'ID ("X-ORIGINATING-IP" "{ip}")'),
    ("mixed_case_keyword", b'iD ("x-Originating-Ip" "{ip}")'),
    ("escaped", b'ID ("x\\-originating\\-ip" "{ip}")'),
    ("literal_sync", b"ID ({16}\r\nx-originating-ip \"{ip}\")"),
    ("literal_plus", b"ID ({16+}\r\nx-originating-ip \"{ip}\")"),
    ("literal_minus", b"ID ({16-}\r\nx-originating-ip \"{ip}\")"),
    ("value_literal", b'ID ("x-originating-ip" {{{n}+}}\r\n{ip})'),
    ("second_pair", b'ID ("name" "webmail" "x-originating-ip" "{ip}")'),
]


def _claim(ip: str, template: bytes) -> bytes:
    return template.replace(b"{{{n}+}}", b"{%d+}" % len(ip)).replace(b"{ip}", ip.encode())


def _send_command(c: LineClient, tag: bytes, command: bytes) -> list[bytes]:
    """Sends `tag command`, waiting for the go-ahead of each synchronizing literal; the tagged
    reply (a `tag BAD/NO` instead of a go-ahead ends it early)."""
    parts = command.split(b"\r\n")
    c.send(tag + b" " + parts[0] + b"\r\n")
    for part in parts[1:]:
        if parts[0].endswith(b"}") and not parts[0].endswith((b"+}", b"-}")):
            go = c.line()
            if not go.startswith(b"+"):
                return [go]
        c.send(part + b"\r\n")
        parts[0] = part
    return c.tagged(tag)


def _login(c: LineClient, tag: bytes, user: str, password: str) -> bytes:
    c.cmd(b'%s LOGIN "%s" "%s"' % (tag, user.encode(), password.encode()))
    return c.tagged(tag)[-1]


@pytest.fixture
def gw(postern_factory, dovecot):
    assert dovecot.trusted, "these tests need a Dovecot that trusts postern's address"
    cfg = postern_factory.config(dovecot, protocols=("imap",), forward_client="none")
    cfg.section("limits").update({"exempt": [], "auth_failures": 0})
    return postern_factory.start(cfg)


def _through_postern(gw, client_ctx) -> LineClient:
    return LineClient.tls(gw.addr("imaps"), client_ctx, "mail.test", read_greeting=True)


@pytest.mark.parametrize("name,template", SPELLINGS, ids=[s[0] for s in SPELLINGS])
def test_dovecot_applies_each_spelling_sent_straight_to_it(dovecot, name, template):
    """The control: the claim works against this Dovecot, so refusing it matters."""
    ip = next(_ips)
    user, password = dovecot.new_user()
    with LineClient.connect(dovecot.addr("imap"), read_greeting=True) as c:
        reply = _send_command(c, b"a", _claim(ip, template))
        if name == "literal_minus" and reply[-1].startswith(b"a BAD"):
            # Dovecot 2.3 refuses {n-} before login ("Invalid literal size"): nothing to apply
            c.cmd(b"z LOGOUT")
            c.read_to_eof()
            return
        assert reply[-1].startswith(b"a OK"), reply
        assert _login(c, b"b", user, password).startswith(b"b OK")
        c.cmd(b"z LOGOUT")
        c.read_to_eof()
    assert f"rip={ip}" in dovecot.login_line(user)


@pytest.mark.parametrize("name,template", SPELLINGS, ids=[s[0] for s in SPELLINGS])
def test_no_claim_spelling_reaches_dovecot(gw, dovecot, client_ctx, name, template):
    ip = next(_ips)
    user, password = dovecot.new_user()
    with _through_postern(gw, client_ctx) as c:
        reply = _send_command(c, b"a", _claim(ip, template))
        assert reply[-1].startswith((b"a BAD", b"a NO")), reply
        assert b"reserved" in reply[-1].lower() or name.startswith("literal_minus"), reply
        # the session goes on: the refusal was answered, nothing was left half-read
        assert _login(c, b"b", user, password).startswith(b"b OK")
        c.cmd(b"z LOGOUT")
        c.read_to_eof()
    login = dovecot.login_line(user)
    assert "rip=127.0.0.1" in login, login
    assert ip not in dovecot.log_text()


def test_tag_reuse_cannot_confirm_a_login(gw, dovecot, client_ctx):
    """`a NOOP` and `a LOGIN victim wrong` in one write: the NOOP's `a OK` must not count as
    the login's, so the guard stays on (the claim after it is refused) and nobody is logged
    as `victim`."""
    ip = next(_ips)
    victim, _ = dovecot.new_user()
    user, password = dovecot.new_user()
    mark = gw.log_mark()
    with _through_postern(gw, client_ctx) as c:
        c.send(b'a NOOP\r\na LOGIN "%s" "wrong"\r\n' % victim.encode())
        first = c.tagged(b"a")
        second = c.tagged(b"a")
        replies = sorted([first[-1], second[-1]])
        assert replies[0].startswith(b"a BAD Tag already in use"), (first, second)
        assert replies[1].startswith(b"a OK"), (first, second)
        c.cmd(b'b ID ("x-originating-ip" "%s")' % ip.encode())
        assert c.tagged(b"b")[-1].startswith((b"b BAD", b"b NO"))
        assert _login(c, b"c", user, password).startswith(b"c OK")
        c.cmd(b"z LOGOUT")
        c.read_to_eof()
    [ended] = gw.wait_session_end(after=mark, listener="imaps", peer=c.peer)
    assert ended.get("user") == user, ended
    assert ip not in dovecot.log_text()
    assert f"user=<{victim}>" not in "".join(
        ln for ln in dovecot.log_text().splitlines() if "Login:" in ln
    )


@pytest.mark.parametrize("name,template", [SPELLINGS[0], SPELLINGS[3], SPELLINGS[5]],
                         ids=["quoted", "escaped", "literal_plus"])
def test_claims_after_a_failed_login_are_refused(gw, dovecot, client_ctx, name, template):
    ip = next(_ips)
    user, password = dovecot.new_user()
    with _through_postern(gw, client_ctx) as c:
        assert _login(c, b"a", user, "wrong").startswith(b"a NO")
        reply = _send_command(c, b"b", _claim(ip, template))
        assert reply[-1].startswith((b"b BAD", b"b NO")), reply
        assert _login(c, b"c", user, password).startswith(b"c OK")
        # and after the login too (the after-login filter)
        reply = _send_command(c, b"d", _claim(next(_ips), template))
        assert reply[-1].startswith((b"d BAD", b"d NO")), reply
        c.cmd(b"z LOGOUT")
        c.read_to_eof()
    assert "rip=127.0.0.1" in dovecot.login_line(user)
    assert ip not in dovecot.log_text()


def _largest_id(literal: bool) -> bytes:
    """RFC 2971's limits: 30 field pairs, names of at most 30 bytes, values of at most 1024."""
    parts = []
    for i in range(30):
        name = b"x-pytest-field-%02d" % i
        value = (b"v%02d-" % i) * 256
        assert len(value) == 1024
        parts.append(b'"%s" ' % name + (b"{1024+}\r\n" + value if literal else b'"%s"' % value))
    return b"ID (" + b" ".join(parts) + b")"


@pytest.mark.parametrize("literal", [False, True], ids=["quoted", "literal"])
def test_the_largest_id_reaches_dovecot(gw, dovecot, client_ctx, literal):
    user, password = dovecot.new_user()
    command = _largest_id(literal)
    assert len(command) > 30_000
    with _through_postern(gw, client_ctx) as c:
        reply = _send_command(c, b"a", command)
        # Dovecot's answer, not postern's: its own `* ID` and the tagged OK
        assert reply[0].startswith(b"* ID ") and reply[-1].startswith(b"a OK"), reply
        assert _login(c, b"b", user, password).startswith(b"b OK")
        c.cmd(b"z LOGOUT")
        c.read_to_eof()
