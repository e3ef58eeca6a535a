"""route = "user" sessions end to end: two Dovecots (each on its own loopback host) behind one
route = "user" backend, two postern instances with the same config. Every session of a user,
through either instance and any login spelling (IMAP LOGIN, AUTHENTICATE PLAIN with and
without SASL-IR, POP3 USER and AUTH PLAIN), lands on one Dovecot, as Dovecot's own login log
shows; a stopped server moves only its users and its restart brings them home; `ctl server
... offline` ends its sessions with the goodbye; a wrong password gives the `login failed` line
naming the server. XOAUTH2 and OAUTHBEARER against scripted servers that accept them.
Submission (EHLO replayed before AUTH PLAIN / AUTH LOGIN) and STARTTLS listeners (no second
greeting after the upgrade) route the same way."""

from __future__ import annotations

import base64
import time
from collections import defaultdict

import pytest

from harness import wait_for
from harness.director import HOSTS, ctl, ctl_json, placed, route_user_config
from harness.line_client import LineClient

USERS = {f"user{i:02d}": f"pw-{i:02d}-x" for i in range(20)}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture
def dovecots(dovecot_factory):
    return [dovecot_factory(host=HOSTS[i], users=dict(USERS), spare_users=0) for i in range(2)]


def start_pair(postern_factory, backends, count=2):
    pair = []
    for _ in range(count):
        cfg = route_user_config(postern_factory.config(), backends)
        cfg.data["server"]["drain_spread"] = "1s"
        pair.append(postern_factory.start(cfg))
    for p in pair:
        wait_for(lambda p=p: all(s["up"] for s in ctl_json(p, "servers")["data"]["servers"] if s["route"] == "user"),
                 15, "servers up")
    return pair


def dovecot_backends(dvs, protocols=("imap", "pop3")):
    return {proto: (proto, [dv.server(proto) for dv in dvs]) for proto in protocols}


def imap(p, ctx, source="127.0.0.2") -> LineClient:
    c = LineClient.tls(p.addr("imap"), ctx, server_hostname="localhost", source=source, read_greeting=True)
    assert c.greeting.startswith(b"* OK [CAPABILITY ") and b"(postern)" in c.greeting, c.greeting
    return c


def imap_session(p, ctx, user, how):
    """One IMAP session logged in as `user` by `how`; returns the open client."""
    pw = USERS.get(user, "pw")
    c = imap(p, ctx)
    plain = b64(f"\0{user}\0{pw}".encode())
    if how == "login":
        c.imap("a", f'LOGIN "{user}" "{pw}"')
    elif how == "plain-ir":
        c.imap("a", f"AUTHENTICATE PLAIN {plain}")
    elif how == "plain":
        c.send(b"a AUTHENTICATE PLAIN\r\n")
        assert c.line().startswith(b"+"), "postern's continuation"
        c.send(plain.encode() + b"\r\n")
        lines = c.tagged("a")
        assert lines[-1].startswith(b"a OK"), lines
        assert not any(ln.startswith(b"+") for ln in lines), f"the server's continuation leaked: {lines}"
    else:
        raise AssertionError(how)
    return c


def pop3_session(p, ctx, user, how):
    pw = USERS[user]
    c = LineClient.tls(p.addr("pop3"), ctx, server_hostname="localhost", source="127.0.0.3", read_greeting=True)
    if how == "user":
        c.cmd(f"USER {user}".encode())
        assert c.line().startswith(b"+OK")
        c.cmd(f"PASS {pw}".encode())
    else:
        c.cmd(b"AUTH PLAIN")
        assert c.line().startswith(b"+")
        c.cmd(b64(f"\0{user}\0{pw}".encode()).encode())
    assert c.line().startswith(b"+OK"), "logged in"
    c.cmd(b"STAT")
    assert c.line().startswith(b"+OK")
    return c


def logins_by_dovecot(dvs):
    """user -> {dovecot index: logins}, from Dovecot's own log."""
    seen: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for i, dv in enumerate(dvs):
        for rec in dv.logins():
            seen[rec["user"]][i] += 1
    return seen


def test_every_session_of_a_user_lands_on_one_dovecot(postern_factory, dovecots, client_ctx):
    a, b = start_pair(postern_factory, dovecot_backends(dovecots))
    per_user = 0
    for p in (a, b):
        for user in USERS:
            for how in ("login", "plain-ir", "plain"):
                c = imap_session(p, client_ctx, user, how)
                c.imap("z", "LOGOUT")
                c.close()
            for how in ("user", "auth"):
                c = pop3_session(p, client_ctx, user, how)
                c.cmd(b"QUIT")
                c.close()
        per_user += 5
    def all_logged():
        seen = logins_by_dovecot(dovecots)
        return seen if all(sum(seen[u].values()) == per_user for u in USERS) else None
    seen = wait_for(all_logged, 15, "every login in Dovecot's logs")
    for user in USERS:
        assert len(seen[user]) == 1, f"{user} reached both Dovecots: {dict(seen[user])}"
    homes = {u: next(iter(seen[u])) for u in USERS}
    assert set(homes.values()) == {0, 1}, "20 users spread over both servers"
    # postern's own view agrees with Dovecot's, on both instances.
    for p in (a, b):
        for u in USERS:
            assert placed(p, "imap", u) == dovecots[homes[u]].server("imap")


def test_a_wrong_password_is_logged_with_the_server_and_ends_the_session(postern_factory, dovecots, client_ctx):
    (p,) = start_pair(postern_factory, dovecot_backends(dovecots, ("imap",)), count=1)
    user = "user03"
    home = placed(p, "imap", user)
    mark = p.log_mark()
    c = imap(p, client_ctx)
    c.send(f'a LOGIN "{user}" "wrong"\r\n'.encode())
    lines = c.tagged("a")
    assert lines[-1].startswith(b"a NO"), lines
    assert c.line().startswith(b"* BYE"), "a refused login ends the routed session"
    rec = p.wait_for_record(lambda r: r.get("message") == "login failed", after=mark)[0]
    assert rec["user"] == user and rec["backend"] == home, rec
    end = p.wait_for_record(lambda r: r.get("message") == "session ended", after=mark)[0]
    assert end["backend"] == home, end


def test_a_stopped_server_moves_only_its_users_and_they_come_home(postern_factory, dovecots, client_ctx):
    (p,) = start_pair(postern_factory, dovecot_backends(dovecots, ("imap",)), count=1)
    servers = [dv.server("imap") for dv in dovecots]
    home = {u: servers.index(placed(p, "imap", u)) for u in USERS}
    open_ = {u: imap_session(p, client_ctx, u, "login") for u in USERS}
    for u, c in open_.items():
        c.imap("n", "NOOP")

    dovecots[0].stop()
    wait_for(lambda: all(placed(p, "imap", u) == servers[1] for u in USERS), 15, "users off the stopped server")
    moved = [u for u in USERS if home[u] == 0]
    stayed = [u for u in USERS if home[u] == 1]
    assert moved and stayed
    for u in stayed:
        open_[u].imap("n2", "NOOP")  # untouched
    before = len(dovecots[1].logins())
    for u in moved:
        open_[u].close()
        open_[u] = imap_session(p, client_ctx, u, "plain-ir")
    wait_for(lambda: len(dovecots[1].logins()) >= before + len(moved), 10, "moved users on the other server")
    assert {r["user"] for r in dovecots[1].logins()[before:]} == set(moved)

    # Back: the moved users' sessions get the goodbye (spread over drain_spread), nobody else's.
    dovecots[0].start()
    back = time.monotonic()
    byes = []
    for u in moved:
        got = open_[u].lines_until(lambda ln: ln.startswith(b"* BYE"))
        assert b"please reconnect" in got[-1], got
        byes.append(open_[u].lines[-1][0])
    # Two servers for one user only around the change: the goodbyes come within the health
    # rise + one reconcile poll, spread over drain_spread (1 s).
    assert max(byes) - min(byes) <= 2.5, byes
    assert max(byes) - back <= 6, (back, byes)
    for u in stayed:
        open_[u].imap("n3", "NOOP")
    start = len(dovecots[0].logins())
    for u in moved:
        imap_session(p, client_ctx, u, "login").close()
    wait_for(lambda: {r["user"] for r in dovecots[0].logins()[start:]} == set(moved), 10, "moved users home again")
    for c in open_.values():
        c.close()


def test_offline_ends_its_sessions_with_the_goodbye(postern_factory, dovecots, client_ctx):
    (p,) = start_pair(postern_factory, dovecot_backends(dovecots, ("imap",)), count=1)
    servers = [dv.server("imap") for dv in dovecots]
    open_ = {u: imap_session(p, client_ctx, u, "plain") for u in USERS}
    on_1 = [u for u in USERS if placed(p, "imap", u) == servers[1]]
    r = ctl(p, "server", "imap", servers[1], "offline")
    assert r.rc == 0, r
    for u in on_1:
        got = open_[u].lines_until(lambda ln: ln.startswith(b"* BYE"))
        assert b"[UNAVAILABLE]" in got[-1], got
    for u in USERS:
        if u not in on_1:
            open_[u].imap("n", "NOOP")
        open_[u].close()
    assert all(placed(p, "imap", u) == servers[0] for u in USERS)


def oauth_responder(line, conn, backend):
    """IMAP that accepts any XOAUTH2 / OAUTHBEARER login (initial response or after `+ `)."""
    parts = line.strip().split(None, 3)
    if getattr(conn, "sasl_tag", None):
        tag, conn.sasl_tag = conn.sasl_tag, None
        return tag + b" OK AUTHENTICATE done " + backend.name.encode() + b"\r\n"
    if len(parts) >= 3 and parts[1].upper() == b"AUTHENTICATE":
        if len(parts) == 3:
            conn.sasl_tag = parts[0]
            return b"+ \r\n"
        return parts[0] + b" OK AUTHENTICATE done " + backend.name.encode() + b"\r\n"
    if len(parts) >= 2 and parts[1].upper() == b"LOGOUT":
        from harness.fake_backend import CloseAfter
        return CloseAfter(b"* BYE bye\r\n" + parts[0] + b" OK LOGOUT\r\n")
    return (parts[0] if parts else b"*") + b" OK done\r\n"


def test_xoauth2_and_oauthbearer_route_by_the_token_user(postern_factory, client_ctx):
    from harness.fake_backend import ScriptedBackend

    greeting = b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2 AUTH=OAUTHBEARER AUTH=CRAM-MD5] ready\r\n"
    made = [ScriptedBackend(f"s{i}", host=HOSTS[i], greeting=greeting, respond=oauth_responder).start() for i in range(2)]
    try:
        a, b = start_pair(postern_factory, {"imap": ("imap", [s.server for s in made])})
        # The server that answered each login, by its own name in the reply.
        answered = defaultdict(set)
        for p in (a, b):
            for user in USERS:
                email = f"{user}@example.org"
                c = imap(p, client_ctx)
                assert b"AUTH=XOAUTH2" in c.greeting and b"CRAM-MD5" not in c.greeting, c.greeting
                token = b64(f"user={email}\x01auth=Bearer t-{user}\x01\x01".encode())
                lines = c.imap("x", f"AUTHENTICATE XOAUTH2 {token}")
                answered[email].add(lines[-1].split()[-1])
                c.close()
                c = imap(p, client_ctx)
                c.send(b"o AUTHENTICATE OAUTHBEARER\r\n")
                assert c.line() == b"+ \r\n"
                c.send(b64(f"n,a={email},\x01auth=Bearer t\x01\x01".encode()).encode() + b"\r\n")
                lines = c.tagged("o")
                assert len(lines) == 1 and lines[0].startswith(b"o OK AUTHENTICATE done"), lines
                answered[email].add(lines[-1].split()[-1])
                c.close()
        for email, names in answered.items():
            assert len(names) == 1, (email, names)
            server = next(s.server for s in made if s.name.encode() in names)
            assert placed(a, "imap", email) == placed(b, "imap", email) == server
        assert {n for names in answered.values() for n in names} == {b"s0", b"s1"}
    finally:
        for s in made:
            s.stop()


def smtp_session(p, ctx, user, how):
    pw = USERS[user]
    c = LineClient.tls(p.addr("submission"), ctx, server_hostname="localhost", source="127.0.0.4", read_greeting=True)
    assert c.greeting.startswith(b"220 ") and b"(postern)" in c.greeting, c.greeting
    ehlo = c.smtp("EHLO client.test")
    assert any(b"AUTH PLAIN" in ln for ln in ehlo) and not any(b"STARTTLS" in ln for ln in ehlo), ehlo
    if how == "plain-ir":
        reply = c.smtp("AUTH PLAIN " + b64(f"\0{user}\0{pw}".encode()))
    else:
        assert c.smtp("AUTH LOGIN")[-1].startswith(b"334 ")
        assert c.smtp(b64(user.encode()))[-1].startswith(b"334 "), "the server's password prompt"
        reply = c.smtp(b64(pw.encode()))
    assert reply[-1].startswith(b"235"), reply
    assert c.smtp("NOOP")[-1].startswith(b"250")
    return c


def test_submission_routes_by_the_auth_user(postern_factory, dovecots, client_ctx):
    a, b = start_pair(postern_factory, {"submission": ("smtp", [dv.server("submission") for dv in dovecots])})
    for p in (a, b):
        for user in USERS:
            for how in ("plain-ir", "login"):
                c = smtp_session(p, client_ctx, user, how)
                c.smtp("QUIT")
                c.close()

    def all_logged():
        seen = logins_by_dovecot(dovecots)
        return seen if all(sum(seen[u].values()) == 4 for u in USERS) else None
    seen = wait_for(all_logged, 15, "every submission login in Dovecot's logs")
    for user in USERS:
        assert len(seen[user]) == 1, f"{user} reached both Dovecots: {dict(seen[user])}"
    assert {next(iter(seen[u])) for u in USERS} == {0, 1}


def test_starttls_listeners_route_after_the_upgrade(postern_factory, dovecots, client_ctx):
    cfg = route_user_config(postern_factory.config(), {"imap": ("imap", [dv.server("imap") for dv in dovecots]),
                                                       "submission": ("smtp", [dv.server("submission") for dv in dovecots])},
                            tls="starttls")
    p = postern_factory.start(cfg)
    wait_for(lambda: all(s["up"] for s in ctl_json(p, "servers")["data"]["servers"]), 15, "servers up")
    user = "user07"
    home = next(i for i, dv in enumerate(dovecots) if dv.server("imap") == placed(p, "imap", user))

    c = LineClient.connect(p.addr("imap"), source="127.0.0.5", read_greeting=True)
    assert b"STARTTLS" in c.greeting
    c.send(b"s STARTTLS\r\n")
    assert c.tagged("s")[-1].startswith(b"s OK")
    c.start_tls(client_ctx)
    caps = c.imap("c", "CAPABILITY")
    assert b"AUTH=PLAIN" in caps[0] and b"STARTTLS" not in caps[0], caps
    c.imap("a", f'LOGIN "{user}" "{USERS[user]}"')
    c.imap("z", "LOGOUT")
    c.close()

    c = LineClient.connect(p.addr("submission"), source="127.0.0.5", read_greeting=True)
    c.smtp("EHLO client.test")
    assert c.smtp("STARTTLS")[-1].startswith(b"220")
    c.start_tls(client_ctx)
    c.smtp("EHLO client.test")
    assert c.smtp("AUTH PLAIN " + b64(f"\0{user}\0{USERS[user]}".encode()))[-1].startswith(b"235")
    c.smtp("QUIT")
    c.close()
    wait_for(lambda: {r["service"] for r in dovecots[home].logins(user)} >= {"imap-login", "submission-login"}, 10,
             "both logins on the user's Dovecot")
    assert dovecots[1 - home].logins(user) == []


def test_user_map_pins_sessions_and_kick_ends_them(postern_factory, dovecots, client_ctx):
    users_file = postern_factory.root / f"route-users-{id(dovecots)}"
    users_file.write_text(f"user05 {HOSTS[1]}\n@pinned.example {HOSTS[1]}\n")
    cfg = route_user_config(postern_factory.config(), dovecot_backends(dovecots, ("imap",)), user_map=users_file)
    cfg.data["server"]["drain_spread"] = "1s"
    p = postern_factory.start(cfg)
    wait_for(lambda: all(s["up"] for s in ctl_json(p, "servers")["data"]["servers"]), 15, "servers up")
    c = imap_session(p, client_ctx, "user05", "login")
    wait_for(lambda: dovecots[1].logins("user05"), 10, "user05 on the pinned Dovecot")
    assert dovecots[0].logins("user05") == []
    sessions = ctl_json(p, "user", "user05")["data"]["sessions"]
    assert [s["server"] for s in sessions] == [dovecots[1].server("imap")], sessions

    # The edit moves the user: the open session gets the goodbye, the next one lands anew.
    users_file.write_text(f"user05 {HOSTS[0]}\n")
    got = c.lines_until(lambda ln: ln.startswith(b"* BYE"))
    assert b"please reconnect" in got[-1], got
    c.close()
    c = imap_session(p, client_ctx, "user05", "plain")
    wait_for(lambda: dovecots[0].logins("user05"), 10, "user05 on the newly pinned Dovecot")

    r = ctl(p, "kick", "user05")
    assert r.rc == 0 and "1 session(s)" in r.out, r
    got = c.lines_until(lambda ln: ln.startswith(b"* BYE"))
    assert b"[UNAVAILABLE]" in got[-1], got
    c.close()
    wait_for(lambda: ctl_json(p, "user", "user05")["data"]["sessions"] == [], 10, "the kicked session unregistered")


def test_a_full_server_is_never_swapped_and_the_client_address_is_forwarded(postern_factory, dovecots, client_ctx):
    cfg = route_user_config(postern_factory.config(), dovecot_backends(dovecots, ("imap",)),
                            forward_client="protocol", max_connections_per_server=1)
    p = postern_factory.start(cfg)
    wait_for(lambda: all(s["up"] for s in ctl_json(p, "servers")["data"]["servers"]), 15, "servers up")
    user = "user11"
    home = next(i for i, dv in enumerate(dovecots) if dv.server("imap") == placed(p, "imap", user))
    first = imap_session(p, client_ctx, user, "login")
    rec = dovecots[home].wait_login(user)
    assert rec["rip"] == "127.0.0.2", rec  # the ID exchange before the replayed login
    # The home is up but full: the session gets the goodbye, never the other server.
    c = imap(p, client_ctx)
    c.send(f'a LOGIN "{user}" "{USERS[user]}"\r\n'.encode())
    assert c.line().startswith(b"* BYE [UNAVAILABLE]")
    c.close()
    first.imap("n", "NOOP")
    first.close()
    assert dovecots[1 - home].logins(user) == []
