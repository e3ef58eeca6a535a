"""The proxies under test (postern, HAProxy, stunnel, hitch) and the /proc readings of them.

Each proxy writes its config into its own directory, runs in the foreground, and is measured
as its whole process tree (hitch forks worker processes; the others are one process), never
the clients or the backend. Used by compare.py and perf_profile.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- /proc


def tree(pid: int) -> list[int]:
    """pid and all its descendants (hitch's workers are children of its manager)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _cpu_one(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """utime+stime of the process tree (exited threads included), in seconds."""
    return sum(_cpu_one(p) for p in tree(pid))


def memory(pid: int) -> dict[str, int]:
    """Bytes summed over the process tree: VmRSS and RssAnon from status, Pss from
    smaps_rollup; Threads of the top process."""
    out: dict[str, int] = {"VmRSS": 0, "RssAnon": 0, "Pss": 0}
    for p in tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text().splitlines()
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                out[key] += int(value.split()[0]) * 1024
            elif key == "Threads" and p == pid:
                out["Threads"] = int(value.split()[0])
        for line in rollup:
            key, _, value = line.partition(":")
            if key == "Pss":
                out["Pss"] += int(value.split()[0]) * 1024
    return out


def open_fds(pid: int) -> int:
    return sum(len(os.listdir(f"/proc/{p}/fd")) for p in tree(pid) if os.path.isdir(f"/proc/{p}/fd"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, deadline_s: float = 20.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {deadline_s}s")

# --------------------------------------------------------------------------- proxies


class Proxy:
    """One proxy under test: writes its config, starts it in the foreground, exposes its PID."""

    name = "?"

    def __init__(self, workdir: Path, backend_port: int, threads: int):
        self.dir = workdir / f"{self.name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.backend_port = backend_port
        self.threads = threads
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = open(self.dir / "stderr.log", "ab")

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv(), stdout=self.log, stderr=self.log, cwd=self.dir)
        wait_port(self.port, self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class Postern(Proxy):
    def __init__(self, workdir: Path, backend_port: int, threads: int, binary: str, certs: Path,
                 limits: bool = False):
        self.name = ("postern" if threads == 1 else f"postern-w{threads}") + ("-limits" if limits else "")
        super().__init__(workdir, backend_port, threads)
        # `-limits`: every connection goes through the process-wide address table (the
        # default `exempt` covers loopback, so the plain variant never touches it); limits
        # high enough that nothing is refused, so only the table's cost differs.
        limits_cfg = """
[limits]
exempt = []
per_ip_connections = 1000000
per_ip_rate = 100000
""" if limits else ""
        self.binary = binary
        cfg = f"""
[server]
workers = {threads}
max_connections = 100000
state_dir = "{self.dir / 'state'}"
[admin]
listen = "127.0.0.1:0"
[log]
level = "warn"
{limits_cfg}
[tls]
min_version = "1.3"
watch = false
[[tls.certificate]]
cert = "{certs / 'cert.pem'}"
key = "{certs / 'key.pem'}"
[[listener]]
name = "imaps"
protocol = "imap"
listen = ["127.0.0.1:{self.port}"]
backend = "imap"
[[backend]]
name = "imap"
servers = ["127.0.0.1:{backend_port}"]
"""
        (self.dir / "postern.toml").write_text(cfg)

    def argv(self) -> list[str]:
        return [self.binary, "run", "-c", str(self.dir / "postern.toml")]


class Haproxy(Proxy):
    def __init__(self, workdir: Path, backend_port: int, threads: int, certs: Path):
        self.name = "haproxy" if threads == 1 else f"haproxy-t{threads}"
        super().__init__(workdir, backend_port, threads)
        cfg = f"""
global
    nbthread {threads}
    maxconn 9000
    log stderr format raw local0 warning
defaults
    mode tcp
    timeout connect 3s
    timeout client 30m
    timeout server 30m
frontend imaps
    bind 127.0.0.1:{self.port} ssl crt {certs / 'combined.pem'} ssl-min-ver TLSv1.3
    default_backend imap
backend imap
    server s1 127.0.0.1:{backend_port}
"""
        (self.dir / "haproxy.cfg").write_text(cfg)

    def argv(self) -> list[str]:
        # -db: foreground, no master-worker: the one process is the one doing the work.
        return ["haproxy", "-db", "-f", str(self.dir / "haproxy.cfg")]


class Stunnel(Proxy):
    def __init__(self, workdir: Path, backend_port: int, threads: int, certs: Path):
        self.name = "stunnel"
        super().__init__(workdir, backend_port, threads)
        cfg = f"""
foreground = yes
pid =
debug = warning
[imaps]
accept = 127.0.0.1:{self.port}
connect = 127.0.0.1:{backend_port}
cert = {certs / 'cert.pem'}
key = {certs / 'key.pem'}
sslVersionMin = TLSv1.3
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
"""
        (self.dir / "stunnel.conf").write_text(cfg)

    def argv(self) -> list[str]:
        return ["stunnel", str(self.dir / "stunnel.conf")]


class Hitch(Proxy):
    """hitch 1.7 (Varnish's TLS proxy, OpenSSL): a manager process and `workers` children."""

    def __init__(self, workdir: Path, backend_port: int, threads: int, certs: Path):
        self.name = "hitch" if threads == 1 else f"hitch-w{threads}"
        super().__init__(workdir, backend_port, threads)
        (self.dir / "ocsp").mkdir(exist_ok=True)
        cfg = f"""
frontend = "[127.0.0.1]:{self.port}"
backend = "[127.0.0.1]:{backend_port}"
pem-file = "{certs / 'combined.pem'}"
tls-protos = TLSv1.3
workers = {threads}
daemon = off
user = "nobody"          # hitch refuses to run its workers as root
group = "nogroup"
backlog = 4096
log-level = 0
ocsp-dir = "{self.dir / 'ocsp'}"
"""
        (self.dir / "hitch.conf").write_text(cfg)

    def argv(self) -> list[str]:
        return ["hitch", "--config", str(self.dir / "hitch.conf")]
