"""`exec` backends (issue 5): a program per session on stdin/stdout. Its environment
(TCPREMOTEIP & co, IPv4 and IPv6), stderr into postern's log (also far more than a pipe
holds), bulk data intact, the child killed when the client vanishes, `max_children`, a child
that never greets, a missing program, and a real Dovecot `imap` run pre-authenticated per
session (also with COMPRESS=DEFLATE); never a zombie left.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import ssl
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Optional

import pytest

from harness import Deflated, LineClient, Postern, PosternConfig, children, run_sessions, wait_for, wait_no_children


# ---- exec backends -----------------------------------------------------------------------------

EXEC_SCRIPT = r"""#!/bin/sh
# A stdin/stdout IMAP-ish server for postern's exec backend test.
printf '* OK exec ready\r\n'
while IFS= read -r line; do
  line=$(printf '%s' "$line" | tr -d '\r')
  tag=${line%% *}
  cmd=${line#* }
  case "$cmd" in
    ENV)
      echo "exec-test: env asked by $TCPREMOTEIP" >&2
      printf '* ENV TCPREMOTEIP=%s REMOTE_HOST=%s TCPREMOTEPORT=%s PROTO=%s\r\n' \
        "$TCPREMOTEIP" "$REMOTE_HOST" "$TCPREMOTEPORT" "$PROTO"
      printf '%s OK ENV done\r\n' "$tag" ;;
    SLEEP)
      printf '%s OK sleeping\r\n' "$tag"
      exec sleep 60 ;;
    LOGOUT)
      printf '* BYE bye\r\n%s OK LOGOUT done\r\n' "$tag"
      exit 0 ;;
    *)
      printf '%s BAD unknown\r\n' "$tag" ;;
  esac
done
"""


def _script(tmp_path: Path, name: str, text: str) -> Path:
    """An executable shell script in tmp_path."""
    script = tmp_path / name
    script.write_text(text)
    script.chmod(0o755)
    return script


def _exec_config(postern_factory, argv: list, name: str = "uw", listener: str = "imaps", listener_kw: Optional[dict] = None, **backend_kw) -> PosternConfig:
    """A config whose IMAP `listener` runs `argv` per session (exec backend `name`)."""
    cfg = postern_factory.config()
    cfg.data["backend"].append({"name": name, "exec": [str(a) for a in argv], **backend_kw})
    cfg.listener(listener, "imap", name, **(listener_kw or {}))
    return cfg


def _exec_pool(postern_factory, tmp_path, max_children: int = 200, **listener_kw) -> Postern:
    script = _script(tmp_path, "exec-imapd.sh", EXEC_SCRIPT)
    return postern_factory.start(_exec_config(postern_factory, [script], max_children=max_children, listener_kw=listener_kw))


def _exec_env_session(addr, ctx, source_ip: str) -> tuple[str, dict[str, str]]:
    with LineClient.tls(addr, ctx, "mail.test", source=source_ip) as s:
        local = s.peer
        greeting = s.line()
        assert greeting == b"* OK exec ready\r\n", greeting
        s.send(b"e1 ENV\r\n")
        lines = s.tagged(b"e1")
        assert lines[-1].startswith(b"e1 OK"), lines
        env = dict(kv.split("=", 1) for kv in lines[0].decode().split()[2:])
        s.send(b"e2 LOGOUT\r\n")
        assert s.tagged(b"e2")[-1].startswith(b"e2 OK")
        assert s.read_to_eof() == b""
        return local, env


def test_exec_backend_environment_and_no_zombies(postern_factory, tmp_path, client_ctx):
    gw = _exec_pool(postern_factory, tmp_path)
    addr = gw.addr("imaps")
    mark = gw.log_mark()

    def one(i: int):
        ip = f"127.0.0.{2 + i % 50}"
        local, env = _exec_env_session(addr, client_ctx, ip)
        return ip, local, env

    results = run_sessions(100, one, parallel=8).check().ok
    for ip, local, env in results:
        port = local.rsplit(":", 1)[1]
        assert env == {"TCPREMOTEIP": ip, "REMOTE_HOST": ip, "TCPREMOTEPORT": port, "PROTO": "TCP"}, (local, env)
    ended = gw.wait_session_end(after=mark, count=100, listener="imaps")
    assert all(r.get("outcome") == "closed" for r in ended), Counter(r.get("outcome") for r in ended)
    assert all(str(r.get("backend", "")).startswith("exec:") for r in ended), Counter(r.get("backend") for r in ended)
    wait_no_children(gw.pid)
    # the children's stderr went to postern's log
    gw.wait_for_record(lambda r: r.get("message") == "exec backend stderr" and "exec-test: env asked by 127.0.0." in str(r.get("stderr", "")),
                       count=100, what="100 stderr lines of the exec children")


def test_exec_environment_ipv6_client(postern_factory, tmp_path, client_ctx):
    script = _script(tmp_path, "exec-imapd.sh", EXEC_SCRIPT)
    gw = postern_factory.start(_exec_config(postern_factory, [script], listener="imaps6", listener_kw={"listen": ["[::1]:0"]}))
    local, env = _exec_env_session(gw.addr("imaps6"), client_ctx, "::1")
    assert env == {"TCPREMOTEIP": "::1", "REMOTE_HOST": "::1", "TCPREMOTEPORT": local.rsplit(":", 1)[1], "PROTO": "TCP"}, env


def test_exec_child_killed_when_client_vanishes(postern_factory, tmp_path, client_ctx):
    # after the client's EOF the relay lingers for min(idle_timeout, 30 s) waiting for the
    # backend's side to end; a child that ignores EOF must be killed when that runs out
    gw = _exec_pool(postern_factory, tmp_path, idle_timeout="1s")
    mark = gw.log_mark()
    s = LineClient.tls(gw.addr("imaps"), client_ctx, "mail.test")
    local = s.peer
    s.line()
    s.send(b"e1 SLEEP\r\n")
    assert s.tagged(b"e1")[-1].startswith(b"e1 OK")
    # the script answers, then execs sleep: wait until the child is the sleeper
    kids = wait_for(lambda: [k for k in children(gw.pid) if k[2] == "sleep"], 5, "postern's exec child to sleep",
                    on_timeout=lambda: str(children(gw.pid)))
    assert len(kids) == 1 and len(children(gw.pid)) == 1, children(gw.pid)
    s.close()  # the client goes away while the child would sleep for a minute
    gw.wait_session_end(after=mark, peer=local, timeout=10)
    wait_no_children(gw.pid, timeout=5)


def test_exec_max_children(postern_factory, tmp_path, client_ctx):
    gw = _exec_pool(postern_factory, tmp_path, max_children=2)
    addr = gw.addr("imaps")
    mark = gw.log_mark()
    held = [LineClient.tls(addr, client_ctx, "mail.test") for _ in range(2)]
    try:
        for h in held:
            assert h.line() == b"* OK exec ready\r\n"
        with LineClient.tls(addr, client_ctx, "mail.test") as s:
            data = s.read_to_eof(timeout=10)
        assert data.startswith(b"* BYE [UNAVAILABLE]"), data
    finally:
        for h in held:
            h.close()
    gw.wait_session_end(after=mark, count=3, listener="imaps")
    wait_no_children(gw.pid)
    # a place is free again
    local, env = _exec_env_session(addr, client_ctx, "127.0.0.1")
    assert env["TCPREMOTEIP"] == "127.0.0.1"


def _pump(s, payload: bytes, deadline: float) -> bytes:
    """Send `payload` and read as many bytes back, both at once, on one thread (an OpenSSL
    connection must not be used from two threads at the same time)."""
    s.setblocking(False)
    got = bytearray()
    sent = 0
    while len(got) < len(payload):
        assert time.monotonic() < deadline, f"sent {sent}, got back only {len(got)} of {len(payload)} bytes"
        want_write = sent < len(payload)
        r, w, _ = select.select([s], [s] if want_write else [], [], 0.5)
        if w:
            try:
                sent += s.send(payload[sent:sent + 65536])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                pass
        if r or s.pending():
            try:
                chunk = s.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                continue
            assert chunk, f"EOF after {len(got)} of {len(payload)} bytes"
            got += chunk
    return bytes(got)


# LITERAL+ in the greeting: the login guard passes a non-synchronizing literal only to a
# backend that advertised it (else the client gets `BAD` and the literal is dropped).
ECHO_GREETINGS = {
    # before login: the guard frames every command and reads every backend line
    "prelogin": b"* OK [CAPABILITY IMAP4rev1 LITERAL+] echo ready\r\n",
    # PREAUTH: the after-login filter (literal-skipping, client->backend only)
    "postlogin": b"* PREAUTH [CAPABILITY IMAP4rev1 LITERAL+] echo ready\r\n",
}


def _echo_script(greeting: bytes) -> str:
    return "#!/bin/sh\nprintf '%s\\r\\n'\nexec cat\n" % greeting.decode().removesuffix("\r\n")


@pytest.mark.parametrize("stage", sorted(ECHO_GREETINGS))
def test_exec_relays_bulk_data_intact(postern_factory, tmp_path, client_ctx, stage):
    greeting = ECHO_GREETINGS[stage]
    gw = postern_factory.start(_exec_config(postern_factory, [_script(tmp_path, "echo.sh", _echo_script(greeting))], name="echo"))
    # binary data as an IMAP literal: the guard holds at most a partial command line until
    # its line end (by design); literal bytes pass at once
    data = os.urandom(3 * 1024 * 1024 + 17)
    payload = b"a1 APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\n"
    with LineClient.tls(gw.addr("imaps"), client_ctx, "mail.test") as s:
        assert s.line() == greeting
        assert not s.buf
        got = _pump(s.sock, payload, deadline=time.monotonic() + 30)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()
    wait_no_children(gw.pid)


def test_exec_child_with_loud_stderr(postern_factory, tmp_path, client_ctx):
    """A child writing far more than a pipe holds (64 KiB) to stderr before its greeting
    must not block: postern drains stderr into its log."""
    script = _script(tmp_path, "loud.sh", "#!/bin/sh\n"
                     "i=0; while [ $i -lt 3000 ]; do echo \"loud-stderr line $i padding padding padding padding padding\" >&2; i=$((i+1)); done\n"
                     "printf '* OK loud ready\\r\\n'\nexec cat\n")
    gw = postern_factory.start(_exec_config(postern_factory, [script], name="loud"))
    with LineClient.tls(gw.addr("imaps"), client_ctx, "mail.test") as s:
        assert s.line() == b"* OK loud ready\r\n"
    gw.wait_for_record(lambda r: "loud-stderr line 2999 " in str(r.get("stderr", "")), what="the child's last stderr line in the log")
    wait_no_children(gw.pid)


def test_exec_child_that_never_greets(postern_factory, tmp_path, client_ctx):
    script = _script(tmp_path, "mute.sh", "#!/bin/sh\nexec sleep 60\n")
    gw = postern_factory.start(_exec_config(postern_factory, [script], name="mute", connect_timeout="500ms"))
    with LineClient.tls(gw.addr("imaps"), client_ctx, "mail.test") as s:
        data = s.read_to_eof(timeout=10)
    assert data.startswith(b"* BYE [UNAVAILABLE]") and data.count(b"\r\n") == 1, data
    wait_no_children(gw.pid, timeout=5)


def test_exec_program_missing(postern_factory, postern_bin, tmp_path, client_ctx):
    """A missing program is a config error (check-config and run exit 2 naming it); one that
    disappears after start gets each session the goodbye, and the log names it."""
    missing = tmp_path / "no-such-imapd"
    cfg = _exec_config(postern_factory, [missing], name="gone")
    res = subprocess.run([str(postern_bin), "check-config", "-c", str(cfg.write())], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and str(missing) in res.stderr and "does not exist" in res.stderr, res

    missing.write_text("#!/bin/sh\necho '* OK ready'\n")
    missing.chmod(0o755)
    gw = postern_factory.start(cfg)
    missing.unlink()
    with LineClient.tls(gw.addr("imaps"), client_ctx, "mail.test") as s:
        data = s.read_to_eof(timeout=10)
    assert data.startswith(b"* BYE [UNAVAILABLE]") and data.count(b"\r\n") == 1, data
    gw.wait_for_record(lambda r: str(missing) in json.dumps(r), what=f"a log line naming {missing}")
    assert gw.alive()


def _dovecot_exec_gateway(postern_factory, dovecot, user: str, test_root, extra_conf: str = "") -> Postern:
    """postern whose `imaps` runs Dovecot's `imap` binary per session, pre-authenticated as
    `user` (uid nobody, the shared Dovecot's maildirs)."""
    conf_dir = test_root / f"exec-imap-{user}"
    conf_dir.mkdir(mode=0o755)
    conf = conf_dir / "imap.conf"
    conf.write_text(f"mail_location = maildir:{dovecot.root}/mail/%u/Maildir\nlog_path = /dev/stderr\n"
                    f"base_dir = {conf_dir}/run\n{extra_conf}")
    conf.chmod(0o644)
    argv = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
            "/usr/bin/env", f"USER={user}", f"HOME={dovecot.root}/mail/{user}",
            "/usr/lib/dovecot/imap", "-c", str(conf)]
    return postern_factory.start(_exec_config(postern_factory, argv, name="dvexec"))


def test_exec_real_dovecot_imap_preauth(postern_factory, dovecot, mailbox, test_root, client_ctx):
    """A real stdin/stdout IMAP server per session: Dovecot's `imap` binary, started
    pre-authenticated as the mailbox's user (as rsh/ssh-style IMAP does): `* PREAUTH`
    greeting, the mailbox's messages byte for byte, LOGOUT, the child gone."""
    gw = _dovecot_exec_gateway(postern_factory, dovecot, mailbox.user, test_root)
    for _ in range(3):
        with LineClient.tls(gw.addr("imaps"), client_ctx, "mail.test") as s:
            greeting = s.line()
            assert greeting.startswith(b"* PREAUTH") and f"Logged in as {mailbox.user}".encode() in greeting, greeting
            s.send(b"b1 SELECT INBOX\r\n")
            lines = s.tagged(b"b1")
            assert b"* 2 EXISTS\r\n" in lines and lines[-1].startswith(b"b1 OK"), lines
            s.send(b"b2 FETCH 1 BODY.PEEK[]\r\n")
            head = s.line()
            size = int(re.search(rb"\{(\d+)\}\r\n$", head).group(1))
            body = s.read_exact(size)
            assert body == mailbox.messages[0]
            assert s.tagged(b"b2")[-1].startswith(b"b2 OK")
            s.send(b"b3 LOGOUT\r\n")
            assert s.tagged(b"b3")[-1].startswith(b"b3 OK")
            assert s.read_to_eof() == b""
    wait_no_children(gw.pid)


def test_exec_preauth_compress_deflate(postern_factory, dovecot, test_root, client_ctx):
    """RFC 4978 after a PREAUTH greeting (no LOGIN ever passes postern): once COMPRESS is
    accepted the client's bytes are deflate, not lines, and must still reach the server.
    (Hung until 2f05c02: the client watch never ended without a login and held the deflate
    bytes waiting for a line end.)"""
    user, _ = dovecot.new_user()
    gw = _dovecot_exec_gateway(postern_factory, dovecot, user, test_root,
                               "mail_plugins = zlib\nprotocol imap {\n  mail_plugins = zlib imap_zlib\n}\n")
    with LineClient.tls(gw.addr("imaps"), client_ctx, "mail.test") as s:
        greeting = s.line()
        assert greeting.startswith(b"* PREAUTH") and b"COMPRESS=DEFLATE" in greeting, greeting
        s.send(b"z1 COMPRESS DEFLATE\r\n")
        assert s.tagged(b"z1")[-1].startswith(b"z1 OK"), "COMPRESS refused"
        z = Deflated(s)
        z.send(b"z2 NOOP\r\n")
        # TimeoutError: no reply to the compressed NOOP within 3 s
        got = z.read_until(b"z2 ", 3)
        assert b"z2 OK" in got, got
