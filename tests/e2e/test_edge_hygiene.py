"""Resource and log hygiene from issue 12's review: no client can write postern's log through a
library (rustls warns once per handshake with an IP address as SNI), `exec` children get a
defined environment and no capability, and admin clients that never read their responses
cannot starve `/readyz`.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from harness import LineClient, wait_for
from harness.postern import Postern
from harness.sockets import connect

IP_SNI_WARNING = "Illegal SNI extension"


def _ip_sni_handshakes(addr, n: int) -> None:
    """n full handshakes that send 127.0.0.1 as the TLS server name, as several real clients do
    (Python's ssl never sends an IP as SNI; openssl s_client does when told to)."""
    for _ in range(n):
        r = subprocess.run(
            ["openssl", "s_client", "-connect", f"{addr[0]}:{addr[1]}", "-servername", "127.0.0.1", "-brief"],
            input=b"", capture_output=True, timeout=15,
        )
        assert b"CONNECTION ESTABLISHED" in r.stderr or b"Protocol version" in r.stderr, r.stderr[-500:]


def test_an_ip_address_as_sni_writes_no_log_line(postern_factory, dovecot):
    gw = postern_factory.start(postern_factory.config(dovecot, protocols=("imap",)))
    mark = gw.log_mark()
    _ip_sni_handshakes(gw.addr("imaps"), 5)
    wait_for(lambda: len(gw.find_records(lambda r: r.get("message") == "session ended", mark)) == 5, 10, "5 sessions ended")
    noisy = [ln for ln in gw.lines[mark:] if IP_SNI_WARNING in ln]
    assert noisy == [], noisy


def test_rust_log_naming_rustls_still_shows_its_lines(postern_factory, dovecot):
    # The same handshakes with RUST_LOG asking for rustls' warnings: the line exists, so the
    # test above is not passing because rustls stopped logging.
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    gw = postern_factory.start(cfg, env={"RUST_LOG": "info,rustls=warn"})
    mark = gw.log_mark()
    _ip_sni_handshakes(gw.addr("imaps"), 1)
    wait_for(lambda: any(IP_SNI_WARNING in ln for ln in gw.lines[mark:]), 10, "rustls' IP-SNI warning")


EXEC_SCRIPT = r"""#!/bin/sh
# Reports its environment and capabilities, then greets like an IMAP server and leaves.
{ env; grep -E '^Cap(Inh|Prm|Eff|Amb):' /proc/self/status; } > "$0.report.$$"
mv "$0.report.$$" "$0.report"
printf '* OK exec ready\r\n'
read -r line
printf '* BYE bye\r\n'
"""


def _with_ambient_caps(tmp_path: Path, binary: Path) -> Path:
    """A wrapper that starts postern the way systemd's AmbientCapabilities= does: with
    CAP_NET_BIND_SERVICE in its ambient set (so execve would pass it on)."""
    wrapper = tmp_path / "postern-ambient"
    wrapper.write_text(
        "#!/bin/sh\nexec setpriv --inh-caps=+net_bind_service --ambient-caps=+net_bind_service "
        f"{binary} \"$@\"\n"
    )
    wrapper.chmod(0o755)
    return wrapper


def test_exec_children_get_a_defined_environment_and_no_ambient_capability(postern_factory, tmp_path, client_ctx):
    script = tmp_path / "report.sh"
    script.write_text(EXEC_SCRIPT)
    script.chmod(0o755)
    cfg = postern_factory.config()
    cfg.data["backend"].append({"name": "ex", "exec": [str(script)]})
    cfg.listener("imaps", "imap", "ex")
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "MAIL_DB_PASSWORD": "hunter2", "HOME": "/root"}
    p = Postern(_with_ambient_caps(tmp_path, postern_factory.binary), cfg, cfg.workdir, env=env)
    postern_factory.started.append(p)
    p.start()
    with open(f"/proc/{p.pid}/status") as f:
        amb = [ln for ln in f if ln.startswith("CapAmb:")]
    with LineClient.tls(p.addr("imaps"), client_ctx, "mail.test", source="127.0.0.2", read_greeting=True) as c:
        assert c.greeting == b"* OK exec ready\r\n"
        c.cmd(b"a LOGOUT")
        c.read_to_eof()
    report = (tmp_path / "report.sh.report").read_text()
    names = {ln.split("=", 1)[0] for ln in report.splitlines() if "=" in ln and not ln.startswith("Cap")}
    # the shell adds PWD (and may add SHLVL, _); nothing of postern's environment is there
    assert names <= {"PATH", "PROTO", "TCPREMOTEIP", "TCPREMOTEPORT", "TCPLOCALIP", "TCPLOCALPORT",
                     "REMOTE_HOST", "REMOTE_PORT", "PWD", "SHLVL", "_"}, names
    assert "hunter2" not in report and "NOTIFY_SOCKET" not in report
    assert "TCPREMOTEIP=127.0.0.2" in report
    caps = dict(ln.split(":\t") for ln in report.splitlines() if ln.startswith("Cap"))
    assert int(caps["CapAmb"], 16) == 0, caps
    assert int(caps["CapInh"], 16) == 0, caps
    assert amb and int(amb[0].split()[1], 16) == 0, "postern cleared its own ambient set after binding"
    # and the wrapper does give a program an ambient capability (so the above means something)
    probe = subprocess.run(["sh", "-c", f"{_with_ambient_caps(tmp_path, Path('/bin/grep'))} CapAmb /proc/self/status"],
                           capture_output=True, text=True, timeout=10)
    assert int(probe.stdout.split()[1], 16) != 0, probe


def test_admin_clients_that_never_read_do_not_starve_readyz(postern_factory, dovecot):
    gw = postern_factory.start(postern_factory.config(dovecot, protocols=("imap",)))
    admin = gw.admin_addr()
    request = f"GET /metrics HTTP/1.1\r\nHost: {admin[0]}\r\n\r\n".encode()
    stuck = []
    try:
        # more than the admin endpoint's 64 places, each with its responses piling up unread
        for _ in range(70):
            s = connect(admin, timeout=5, rcvbuf=4096)
            s.setblocking(False)
            for _ in range(200):
                try:
                    s.send(request)
                except (BlockingIOError, OSError):
                    break
            stuck.append(s)
        started = time.monotonic()

        def ready():
            try:
                return gw.get("/readyz", timeout=2).status == 200
            except OSError:
                return False

        # the write timeout (10 s) frees the places of clients that stopped reading
        wait_for(ready, 25, "/readyz answered while scrapers never read")
        assert time.monotonic() - started < 25
    finally:
        for s in stuck:
            s.close()
