"""Failed logins for fail2ban (issue 12; the `login failed` line and `postern_logins_total` of docs/metrics.md):
each failed IMAP LOGIN, IMAP AUTHENTICATE PLAIN, POP3 USER/PASS and SMTP AUTH PLAIN gives one
`login failed` line and one counter step, and `fail2ban-regex` with deploy/fail2ban's filter
matches exactly those lines of a log postern wrote during the test (JSON and text), with the
hostile client's address; successful logins and session lines never match.

The `login failed` line and the counter are the login guard's (issue 11).
"""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

import pytest

from harness import LineClient, wait_for

GOOD = "127.0.0.2"
BAD = "127.0.0.3"
REPO = Path(__file__).resolve().parents[2]
FILTER = REPO / "deploy" / "fail2ban" / "filter.d" / "postern.conf"

def _gateway(postern_factory, dovecot, fmt):
    cfg = postern_factory.config(dovecot)
    cfg.section("log")["format"] = fmt
    # the brake must not cut the test's own failures short
    cfg.section("limits").update({"exempt": [], "auth_failures": 0})
    return postern_factory.start(cfg)


def _plain(user, password):
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def _fail_each_way(gw, ctx, user):
    """One failed login of each kind from BAD; returns how many."""
    with LineClient.tls(gw.addr("imaps"), ctx, "mail.test", source=BAD, read_greeting=True) as c:
        c.cmd(f'a LOGIN "{user}" "wrong-1"'.encode())
        assert c.tagged(b"a")[-1].startswith(b"a NO")
        c.cmd(f"b AUTHENTICATE PLAIN {_plain(user, 'wrong-2')}".encode())
        assert c.tagged(b"b")[-1].startswith((b"b NO", b"b BAD"))
        c.cmd(b"z LOGOUT")
        c.tagged(b"z")
    with LineClient.tls(gw.addr("pop3s"), ctx, "mail.test", source=BAD, read_greeting=True) as c:
        c.cmd(f"USER {user}".encode())
        assert c.line().startswith(b"+OK")
        c.cmd(b"PASS wrong-3")
        assert c.line().startswith(b"-ERR")
        c.cmd(b"QUIT")
    with LineClient.tls(gw.addr("submissions"), ctx, "mail.test", source=BAD, read_greeting=True) as c:
        c.smtp("EHLO client.test")
        reply = c.smtp(f"AUTH PLAIN {_plain(user, 'wrong-4')}")
        assert reply[-1][:1] in (b"5", b"4"), reply
        c.smtp("QUIT")
    return 4


def _succeed(gw, ctx, user, password):
    with LineClient.tls(gw.addr("imaps"), ctx, "mail.test", source=GOOD, read_greeting=True) as c:
        c.imap_login(user, password)
        c.cmd(b"z LOGOUT")
        c.tagged(b"z")


def _fail2ban_regex(log: Path) -> tuple[int, list[str]]:
    """Lines matched and the addresses fail2ban found, from `fail2ban-regex -v`."""
    out = subprocess.run(["fail2ban-regex", "-v", str(log), str(FILTER)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    matched = int(re.search(r"Lines: \d+ lines, \d+ ignored, (\d+) matched", out.stdout).group(1))
    hosts = re.findall(r"^\|\s+(\d+\.\d+\.\d+\.\d+|[0-9a-f:]+:[0-9a-f:]*)\s+\w{3} \w{3} ", out.stdout, re.M)
    return matched, hosts


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_each_failed_login_is_one_line_one_count_and_one_fail2ban_match(postern_factory, dovecot, client_ctx, fmt):
    gw = _gateway(postern_factory, dovecot, fmt)
    user, password = dovecot.new_user()
    _succeed(gw, client_ctx, user, password)
    n = _fail_each_way(gw, client_ctx, user)
    _succeed(gw, client_ctx, user, password)
    wait_for(lambda: gw.metrics().value("postern_logins_total", result="failed") == n, 10, f"{n} failed logins counted")
    assert gw.metrics().value("postern_logins_total", result="ok") == 2
    lines = [ln for ln in gw.log_text().splitlines() if "login failed" in ln]
    assert len(lines) == n, lines
    assert all(BAD in ln and user in ln for ln in lines), lines
    assert not any("wrong-" in ln for ln in gw.log_text().splitlines()), "a password reached the log"
    matched, hosts = _fail2ban_regex(gw.workdir / "postern.log")
    assert matched == n, (matched, lines)
    assert hosts == [BAD] * n, hosts
