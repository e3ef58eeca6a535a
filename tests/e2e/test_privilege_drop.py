"""Privilege drop (issue 7) to nobody:nogroup (the suite runs as root): ids and
capabilities of every thread from /proc, sessions work, a certificate rotation is picked up
by the dropped process (and one it cannot read is refused loudly); an unknown user or group,
or a drop asked of a non-root process, refuses to start (exit 2); `user = "root"` is not
reported as a drop; a port below 1024 without privilege is one clear error (exit 1).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import tempfile
from pathlib import Path

import pytest

from harness import (
    PANIC_MARKERS,
    CertPair,
    NotifySocket,
    Postern,
    PosternConfig,
    imaps,
    install_cert,
    make_self_signed,
    message_is,
    pem_to_der,
    proc_ids,
    run_expecting_failure,
    served_cert_der,
    wait_for,
)
from harness.util import tail

NOBODY = pwd.getpwnam("nobody").pw_uid
NOGROUP = grp.getgrnam("nogroup").gr_gid


# ---- privilege drop ----------------------------------------------------------------------------

def _tls_dir_with_cert(cfg: PosternConfig, pair: CertPair, key_owner: int, watch: bool) -> tuple[Path, Path]:
    """The documented layout in cfg's workdir: directory tls/ root:nogroup 0750, certificate
    0644, key `key_owner` 0600; the config's only certificate. Returns (cert, key) paths."""
    tls_dir = cfg.workdir / "tls"
    tls_dir.mkdir()
    os.chown(tls_dir, 0, NOGROUP)
    tls_dir.chmod(0o750)
    cert_path, key_path = tls_dir / "fullchain.pem", tls_dir / "privkey.pem"
    install_cert(pair, cert_path, key_path, key_owner, NOGROUP)
    cfg.section("tls").update(watch=watch, certificate=[{"cert": str(cert_path), "key": str(key_path)}])
    return cert_path, key_path


def test_privilege_drop_to_nobody_then_certificate_reload(postern_factory, dovecot, mailbox):
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    first = make_self_signed(cfg.workdir / "gen1", stem="first")
    cert_path, key_path = _tls_dir_with_cert(cfg, first, NOBODY, watch=True)
    cfg.section("server").update(user="nobody", group="nogroup")

    # NOTIFY_SOCKET like systemd's (writable by all): STOPPING=1 must still go out after the drop.
    nd = Path(tempfile.mkdtemp(prefix="pn-notify-"))
    nd.chmod(0o755)
    notify = NotifySocket(nd / "notify")
    os.chmod(notify.path, 0o666)
    try:
        p = postern_factory.start(cfg, env={"NOTIFY_SOCKET": str(notify.path)})
        dropped = p.one_record("dropped privileges")
        assert (int(dropped["uid"]), int(dropped["gid"])) == (NOBODY, NOGROUP), dropped

        ids = proc_ids(p.pid)
        assert len(ids) >= 3, f"expected the main thread and worker threads, saw {sorted(ids)}"
        for tid, f in ids.items():
            assert f["Uid"] == [NOBODY] * 4, f"thread {tid}: Uid {f['Uid']}"
            assert f["Gid"] == [NOGROUP] * 4, f"thread {tid}: Gid {f['Gid']}"
            assert set(f["Groups"]) <= {NOGROUP}, f"thread {tid}: supplementary groups {f['Groups']}"
            for cap in ("CapPrm", "CapEff", "CapAmb"):
                assert f[cap] == [0], f"thread {tid}: {cap} {f[cap][0]:#x} after dropping root"

        addr = p.addr("imaps")
        assert served_cert_der(addr) == pem_to_der(cert_path)
        m = imaps(addr, first.client_context())
        try:
            m.login(mailbox.user, mailbox.password)
            assert m.select("INBOX", readonly=True) == ("OK", [b"2"])
            typ, data = m.fetch("1", "(BODY.PEEK[])")
            assert typ == "OK" and data[0][1] == mailbox.messages[0]
        finally:
            m.logout()

        # Rotate: the process, now nobody, must read the new files and serve them.
        ok_before = p.metrics().value("postern_certificate_reloads_total", result="ok")
        second = make_self_signed(cfg.workdir / "gen2", stem="second")
        assert pem_to_der(second.cert) != pem_to_der(first.cert)
        install_cert(second, cert_path, key_path, NOBODY, NOGROUP)
        want = pem_to_der(second.cert)
        wait_for(lambda: served_cert_der(addr) == want, 10, "new handshakes to get the rotated certificate",
                 interval=0.05, on_timeout=lambda: tail(p.log_text(), 20))
        p.wait_metric("postern_certificate_reloads_total", lambda v: v >= ok_before + 1, 5, result="ok")
        m = imaps(addr, second.client_context())
        try:
            m.login(mailbox.user, mailbox.password)
            assert m.select("INBOX", readonly=True) == ("OK", [b"2"])
        finally:
            m.logout()

        notify.wait_for("READY", "1", 5)
        p.signal(signal.SIGTERM)
        notify.wait_for("STOPPING", "1", 5)
        assert p.wait_exit(10) == 0
    finally:
        notify.close()
        shutil.rmtree(nd, ignore_errors=True)


def test_privilege_drop_rotation_unreadable_by_the_user_is_refused_loudly(postern_factory, dovecot):
    """The wrong ownership (key root 0600): postern starts (it reads the key as root), but a
    rotation cannot be read after the drop. It must say so, count it, and keep serving the
    previous certificate rather than fail handshakes."""
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    first = make_self_signed(cfg.workdir / "gen1", stem="first")
    cert_path, key_path = _tls_dir_with_cert(cfg, first, 0, watch=True)
    cfg.section("server").update(user="nobody", group="nogroup")
    p = postern_factory.start(cfg)
    addr = p.addr("imaps")
    errors_before = p.metrics().value("postern_certificate_reloads_total", result="error")
    mark = p.log_mark()

    install_cert(make_self_signed(cfg.workdir / "gen2", stem="second"), cert_path, key_path, 0, NOGROUP)
    p.wait_metric("postern_certificate_reloads_total", lambda v: v >= errors_before + 1, 10, result="error")
    rejected = p.wait_for_record(lambda r: r.get("level") in ("WARN", "ERROR") and "reload" in str(r.get("message", "")), 5, after=mark)
    text = " ".join(str(v) for v in rejected[0].values())
    assert str(key_path) in text and "permission" in text.lower(), f"the warning must name {key_path} and the permission problem: {rejected[0]}"
    assert served_cert_der(addr) == pem_to_der(first.cert), "a failed reload must keep the previous certificate"


@pytest.mark.parametrize(
    "server, key",
    [({"user": "no-such-user-xyz"}, "server.user"), ({"user": "nobody", "group": "no-such-group-xyz"}, "server.group")],
    ids=["unknown-user", "unknown-group"],
)
def test_privilege_drop_to_unknown_account_refuses_to_start(postern_factory, dovecot, postern_bin, server, key):
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    cfg.section("server").update(server)
    res = run_expecting_failure(postern_bin, cfg.write())
    out = res.stdout
    assert res.returncode == 2, f"exit {res.returncode}, want 2 (bad config)\n{out}"
    name = server.get("group", server["user"])
    assert key in out and name in out, f"the message must name {key} and {name!r}:\n{out}"
    assert not PANIC_MARKERS.search(out), out
    assert '"ready"' not in out and "dropped privileges" not in out, out


def test_setuid_refused_when_not_started_as_root(postern_factory, dovecot, postern_bin):
    """Started as an ordinary user with server.user set to another account, the drop cannot
    happen: postern refuses to start (exit 2) and says why."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    _tls_dir_with_cert(cfg, make_self_signed(cfg.workdir / "gen", stem="c"), NOBODY, watch=False)
    cfg.section("server").update(user="daemon")
    res = run_expecting_failure(postern_bin, cfg.write(), prefix=("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"))
    out = res.stdout
    assert res.returncode == 2, f"exit {res.returncode}, want 2\n{out}"
    assert "server.user" in out and "daemon" in out, out
    assert not PANIC_MARKERS.search(out), out


def test_user_root_is_not_reported_as_a_privilege_drop(postern_factory, dovecot, postern_bin):
    """`user = "root"` drops nothing. postern must not log `dropped privileges` with uid 0 and
    serve on as root as if all were well: it should refuse (exit 2 naming server.user) or at
    least warn that it keeps running as root."""
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    cfg.section("server").update(user="root")
    p = Postern(postern_bin, cfg, cfg.workdir)
    p.start(wait_ready=False)
    try:
        wait_for(lambda: (not p.alive()) or p.find_records(message_is("ready")), 20, "postern to start or exit")
        if not p.alive():
            rc = p.wait_exit(5)
            assert rc == 2 and "server.user" in p.log_text(), f"exit {rc}\n{p.log_text()}"
            return
        ids = proc_ids(p.pid)[str(p.pid)]
        claims = p.find_records(lambda r: r.get("message") == "dropped privileges" and int(r.get("uid", -1)) == 0)
        warned = p.find_records(lambda r: r.get("level") in ("WARN", "ERROR") and "root" in str(r))
        assert not claims, f"logged {claims[0]} while Uid is {ids['Uid']}"
        assert warned, "serving as root with server.user = root and no warning"
    finally:
        p.kill()


def _free_low_port() -> int:
    """A port below 1024 that nothing on 127.0.0.1 uses right now (checked by binding it as root)."""
    for port in range(700, 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    pytest.skip("no free port below 1024 on 127.0.0.1")


def test_bind_below_1024_without_privilege_is_one_clear_error(postern_factory, dovecot, postern_bin):
    """Started as an ordinary user (no CAP_NET_BIND_SERVICE), a listener on a port below 1024
    fails with one message that names the address, the listener and the fix."""
    if int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()) <= 700:
        pytest.skip("this host lets every user bind low ports (net.ipv4.ip_unprivileged_port_start)")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    _tls_dir_with_cert(cfg, make_self_signed(cfg.workdir / "gen", stem="c"), NOBODY, watch=False)
    low = f"127.0.0.1:{_free_low_port()}"
    cfg.get_listener("imaps")["listen"] = [low]
    res = run_expecting_failure(postern_bin, cfg.write(), prefix=("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"))
    out = res.stdout
    assert res.returncode == 1, f"exit {res.returncode}, want 1\n{out}"
    assert not PANIC_MARKERS.search(out), out
    mentions = [line for line in out.splitlines() if low in line]
    assert len(mentions) == 1, f"want one message naming {low}:\n{out}"
    assert "imaps" in mentions[0] and "permission denied" in mentions[0].lower(), mentions[0]
    assert "CAP_NET_BIND_SERVICE" in mentions[0], f"the message should name the capability that fixes it: {mentions[0]}"
