"""postern ctl and placement without sessions: two instances agree on every user's server,
server states (standby, offline) move only the users they must and survive a restart,
user_map edits apply without a restart (a bad edit keeps the last good map), and the control
socket serves nobody but postern's own user (and root)."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from harness import wait_for
from harness.director import HOSTS, ctl, ctl_json, placed, route_user_config, socket_of

USERS = [f"user{i:02d}@example.org" for i in range(20)]


@pytest.fixture
def three():
    """Three scripted IMAP servers, each on its own loopback host."""
    from harness.fake_backend import ScriptedBackend

    made = [ScriptedBackend(f"s{i}", host=h).start() for i, h in enumerate(HOSTS)]
    yield made
    for s in made:
        s.stop()


def start_pair(postern_factory, servers, **kw):
    """Two posterns with the same route = "user" config (each its own state_dir)."""
    pair = []
    for _ in range(2):
        cfg = route_user_config(postern_factory.config(), {"imap": ("imap", servers)}, **kw)
        pair.append(postern_factory.start(cfg))
    for p in pair:
        wait_for(lambda p=p: all(s["up"] for s in ctl_json(p, "servers")["data"]["servers"]), 10, "servers up")
    return pair


def placements(p, users=USERS):
    return {u: placed(p, "imap", u) for u in users}


def test_two_instances_agree_and_states_move_only_their_users(postern_factory, three):
    servers = [s.server for s in three]
    a, b = start_pair(postern_factory, servers)
    before = placements(a)
    assert before == placements(b), "two replicas with the same config must place alike"
    assert set(before.values()) <= set(servers) and len(set(before.values())) > 1

    out = ctl(a, "servers")
    assert out.rc == 0 and "STATE" in out.out and servers[0] in out.out, out

    # offline: that server's users move, nobody else does; the other instance is its own.
    off = servers[0]
    r = ctl(a, "server", "imap", off, "offline")
    assert r.rc == 0 and "offline (was online)" in r.out, r
    after = placements(a)
    for u in USERS:
        if before[u] == off:
            assert after[u] not in (off, None)
        else:
            assert after[u] == before[u], u
    assert placements(b) == before

    # standby elsewhere: with server 0 offline, its users avoid the standby server.
    standby = servers[1]
    assert ctl(a, "server", "imap", standby, "standby").rc == 0
    moved = placements(a)
    for u in USERS:
        if before[u] == off:
            assert moved[u] == servers[2], f"{u} was placed on the standby server"
        elif before[u] == standby:
            assert moved[u] == standby, f"{u} lost its standby home"

    # The states survive a restart.
    a.stop()
    cfg = a.config
    a2 = postern_factory.start(cfg)
    states = {s["server"]: s["state"] for s in ctl_json(a2, "servers")["data"]["servers"]}
    assert states == {servers[0]: "offline", servers[1]: "standby", servers[2]: "online"}
    assert placements(a2) == moved
    assert ctl(a2, "server", "imap", off, "online").rc == 0
    assert ctl(a2, "server", "imap", standby, "online").rc == 0
    assert placements(a2) == before, "back online: every user is home again"

    # A server that goes down moves only its users, and they come back with it.
    three[2].stop()
    wait_for(lambda: all(placed(a2, "imap", u) != servers[2] for u in USERS), 10, "users off the dead server")
    for u in USERS:
        if before[u] != servers[2]:
            assert placed(a2, "imap", u) == before[u]
    three[2].start()
    wait_for(lambda: placements(a2) == before, 10, "users back home")


def test_ctl_says_what_is_wrong(postern_factory, three):
    cfg = route_user_config(postern_factory.config(), {"imap": ("imap", [three[0].server])})
    cfg.backend("plain", [three[1].server])
    cfg.listener("plain", "imap", "plain")
    p = postern_factory.start(cfg)
    for args, text in [
        (("server", "nope", three[0].server, "offline"), 'no backend "nope"'),
        (("server", "imap", "10.9.9.9:143", "offline"), "has no server"),
        (("server", "plain", three[1].server, "offline"), "routes by connection"),
    ]:
        r = ctl(p, *args)
        assert r.rc == 1 and text in r.err, (args, r)
    r = ctl(p, "server", "imap", three[0].server, "sideways")
    assert r.rc == 2 and "sideways" in r.err, r
    servers = ctl_json(p, "servers")["data"]["servers"]
    assert {s["route"] for s in servers} == {"user", "connection"}
    r = ctl(p, "kick", "nobody-here")
    assert r.rc == 0 and "0 session(s)" in r.out
    p.stop()
    r = ctl(p, "servers")
    assert r.rc == 1 and "cannot reach postern" in r.err, r


def test_user_map_pins_and_an_edit_applies_without_restart(postern_factory, three):
    servers = [s.server for s in three]
    users_file = postern_factory.root / f"users-{os.getpid()}-{id(three)}"
    users_file.write_text(f"alice {HOSTS[1]}\n@pinned.example {HOSTS[2]}\n")
    (p,) = [postern_factory.start(route_user_config(postern_factory.config(), {"imap": ("imap", servers)}, user_map=users_file))]
    assert placed(p, "imap", "alice") == servers[1]
    assert placed(p, "imap", "Alice") == servers[1]
    assert placed(p, "imap", "bob@pinned.example") == servers[2]
    why = ctl_json(p, "user", "bob@pinned.example")["data"]["placements"][0]["why"]
    assert why == "user_map (domain)"

    mark = p.log_mark()
    users_file.write_text(f"alice {HOSTS[0]}\n@pinned.example {HOSTS[0]}\n")
    wait_for(lambda: placed(p, "imap", "alice") == servers[0], 10, "alice moved by the edit")
    assert placed(p, "imap", "bob@pinned.example") == servers[0]
    p.wait_for_record(lambda r: r.get("message") == "user_map reloaded", after=mark)

    # A bad edit: every bad line named, the last good map kept.
    mark = p.log_mark()
    users_file.write_text(f"alice {HOSTS[2]}\nbroken-line\n@x.example not/a/host\n")
    rec = p.wait_for_record(lambda r: r.get("message") == "user_map not reloaded", after=mark)[0]
    assert f"{users_file}:2:" in rec["error"] and f"{users_file}:3:" in rec["error"], rec
    assert placed(p, "imap", "alice") == servers[0]


def test_check_config_rejects_a_bad_user_map(postern_factory, three, postern_bin):
    users_file = postern_factory.root / f"bad-users-{id(three)}"
    users_file.write_text("alice\n")
    cfg = route_user_config(postern_factory.config(), {"imap": ("imap", [three[0].server])}, user_map=users_file)
    path = cfg.write()
    r = subprocess.run([str(postern_bin), "check-config", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and f"{users_file}:1:" in r.stderr, r


def test_the_socket_serves_only_its_owner(postern_factory, three):
    p = postern_factory.start(route_user_config(postern_factory.config(), {"imap": ("imap", [three[0].server])}))
    sock = socket_of(p)
    mode = stat.S_IMODE(sock.stat().st_mode)
    assert mode == 0o600, oct(mode)
    nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    # The mode keeps others out...
    r = ctl(p, "servers", prefix=nobody)
    assert r.rc == 1 and "Permission denied" in r.err, r
    # ...and so does the peer check, even when the mode would let them in.
    mark = p.log_mark()
    state_mode = stat.S_IMODE(sock.parent.stat().st_mode)
    sock.parent.chmod(0o711)
    sock.chmod(0o666)
    try:
        r = ctl(p, "servers", prefix=nobody)
    finally:
        sock.chmod(0o600)
        sock.parent.chmod(state_mode)
    assert r.rc == 1 and "permission denied" in r.err and "BACKEND" not in r.out, r
    rec = p.wait_for_record(lambda r: "refused a client" in r.get("message", ""), after=mark)[0]
    assert int(rec["uid"]) == 65534
    assert ctl(p, "servers").rc == 0
