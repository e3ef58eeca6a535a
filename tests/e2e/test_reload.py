"""Configuration reload without a restart (README, docs/configuration.md; issue 13): SIGHUP moves new sessions to
another backend while a logged-in session keeps working on the old one; a file that does not
validate changes nothing and every problem is logged as check-config prints it; a Kubernetes
ConfigMap style `..data` symlink swap is picked up without a signal; keys that need a restart
are named and keep their value.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from harness import LineClient, Postern, check_config, wait_for

CLIENT = "127.0.0.2"


def _config(postern_factory, dovecot, listener: str = "imap", forward: str = "none"):
    cfg = postern_factory.config()
    cfg.backend("imap", [dovecot.server(listener)], forward_client=forward)
    cfg.listener("imaps", "imap", "imap")
    return cfg


def _point_at(cfg, dovecot, listener: str, forward: str) -> None:
    b = cfg.get_backend("imap")
    b["servers"] = [dovecot.server(listener)]
    b["forward_client"] = forward


def _reloads(gw: Postern, result: str) -> float:
    return gw.metrics().value("postern_config_reloads_total", result=result)


def _session_backend(gw: Postern, ctx, user: str, password: str) -> str:
    """One login/logout session; the `backend` of its session line."""
    mark = gw.log_mark()
    with LineClient.tls(gw.addr("imaps"), ctx, "mail.test", source=CLIENT, read_greeting=True) as c:
        c.imap_login(user, password)
        c.imap("z9", "LOGOUT")
        peer = c.peer
    return gw.wait_session_end(after=mark, peer=peer)[0]["backend"]


def test_sighup_moves_new_sessions_and_the_open_one_keeps_working(postern_factory, dovecot, client_ctx):
    cfg = _config(postern_factory, dovecot)
    gw = postern_factory.start(cfg)
    old_user, old_pw = dovecot.new_user()
    held = LineClient.tls(gw.addr("imaps"), client_ctx, "mail.test", source=CLIENT, read_greeting=True)
    try:
        held.imap_login(old_user, old_pw)
        held.imap("h1", "SELECT INBOX")

        # the other backend: Dovecot's haproxy listener, told the client by a PROXY v2 header
        _point_at(cfg, dovecot, "imap_haproxy", "proxy-v2")
        cfg.write()
        mark = gw.log_mark()
        gw.signal(signal.SIGHUP)
        gw.wait_for_record(lambda r: r.get("message") == "configuration reloaded" and r.get("trigger") == "SIGHUP",
                           after=mark, what="the SIGHUP reload")
        assert _reloads(gw, "ok") >= 1 and _reloads(gw, "error") == 0

        user, pw = dovecot.new_user()
        assert _session_backend(gw, client_ctx, user, pw) == dovecot.server("imap_haproxy")
        assert f"rip={CLIENT}," in dovecot.login_line(user, "imap")

        # the session opened before the reload is untouched and still on the first backend
        held.imap("h2", "NOOP")
        held.imap("h3", "STATUS INBOX (MESSAGES)")
        mark = gw.log_mark()
        held.imap("h4", "LOGOUT")
        peer = held.peer
    finally:
        held.close()
    end = gw.wait_session_end(after=mark, peer=peer)[0]
    assert end["backend"] == dovecot.server("imap") and end["outcome"] == "closed", end


def test_invalid_file_changes_nothing_and_every_error_is_logged(postern_factory, dovecot, client_ctx, postern_bin):
    cfg = _config(postern_factory, dovecot)
    gw = postern_factory.start(cfg)
    # two problems at once: an unknown key and a listener naming a backend that does not exist
    _point_at(cfg, dovecot, "imap_haproxy", "proxy-v2")
    cfg.get_listener("imaps")["idle_timeout_typo"] = "5m"
    cfg.get_listener("imaps")["backend"] = "nope"
    path = cfg.write()
    expected = check_config(postern_bin, path)
    assert expected.returncode == 2
    problems = [line for line in expected.stderr.splitlines() if line.startswith(str(path))]
    assert len(problems) >= 2, expected.stderr

    mark = gw.log_mark()
    gw.signal(signal.SIGHUP)
    gw.wait_for_record(lambda r: r.get("message") == "configuration reload failed; the running configuration stays in force",
                       after=mark, what="the failed reload")
    logged = [r["message"] for r in gw.find_records(lambda r: r.get("level") == "ERROR", mark)]
    for problem in problems:
        assert problem in logged, (problem, logged)
    wait_for(lambda: _reloads(gw, "error") >= 1, 5, "the error count")
    assert _reloads(gw, "ok") == 0

    user, pw = dovecot.new_user()
    assert _session_backend(gw, client_ctx, user, pw) == dovecot.server("imap")


def test_configmap_symlink_swap_is_picked_up_without_a_signal(postern_factory, dovecot, client_ctx):
    cfg = _config(postern_factory, dovecot)
    # the layout a Kubernetes ConfigMap volume has: postern.toml -> ..data/postern.toml,
    # ..data -> ..<timestamp>/, swapped by renaming a new ..data symlink over the old one
    mount = cfg.workdir / "configmap"
    first = mount / "..2026_12_01_first"
    first.mkdir(parents=True)
    cfg.write(first / "postern.toml")
    os.symlink(first.name, mount / "..data")
    os.symlink("..data/postern.toml", mount / "postern.toml")
    gw = Postern(postern_factory.binary, mount / "postern.toml", cfg.workdir)
    postern_factory.started.append(gw)
    gw.start()

    user, pw = dovecot.new_user()
    assert _session_backend(gw, client_ctx, user, pw) == dovecot.server("imap")

    _point_at(cfg, dovecot, "imap_haproxy", "proxy-v2")
    cfg.section("server")["workers"] = 3  # needs a restart: logged, not applied
    second = mount / "..2026_12_01_second"
    second.mkdir()
    cfg.write(second / "postern.toml")
    mark = gw.log_mark()
    os.symlink(second.name, mount / "..data_tmp")
    os.rename(mount / "..data_tmp", mount / "..data")
    gw.wait_for_record(lambda r: r.get("message") == "configuration reloaded" and r.get("trigger") == "file change",
                       after=mark, what="the reload after the symlink swap")
    restart = gw.find_records(lambda r: r.get("message", "").startswith("configuration change needs a restart"), mark)
    assert [r["key"] for r in restart] == ["server.workers"], restart

    user, pw = dovecot.new_user()
    assert _session_backend(gw, client_ctx, user, pw) == dovecot.server("imap_haproxy")
    # kubelet then removes the old timestamp directory; nothing happens
    for f in first.iterdir():
        f.unlink()
    first.rmdir()
    assert gw.alive()
