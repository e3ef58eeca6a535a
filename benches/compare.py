#!/usr/bin/env python3
"""postern vs HAProxy vs stunnel, side by side in one run on one machine.

Measures, for each proxy process (never the clients or the backend):
  1. idle memory per proxied IMAP session (VmRSS and Pss growth / sessions),
  2. CPU time per connection with a full TLS 1.3 handshake (no resumption),
  3. CPU time per GiB relayed, backend->client and client->backend.

CPU is utime+stime from /proc/PID/stat (all threads, dead ones included), so the
figures hold on a shared, noisy machine where wall-clock rates do not. Python 3.11
standard library only. Network traffic stays on 127.0.0.1; every count is bounded.

Run by hand (not from tests/run):
    python3 benches/compare.py --postern /work/target-bench/release/postern
See benches/README.md for the options and benches/RESULTS.md for recorded runs.

Internal sub-commands (started by the harness itself): backend, hold, handshakes, stream.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
SNI = "mail.bench.test"
GIB = 1 << 30
# Mail-like text for the literal payloads: 76 characters and CRLF per line, about 1 MiB.
_LINE = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem.\r\n"
TEXT_CHUNK = _LINE * ((1 << 20) // len(_LINE))
HERE = Path(__file__).resolve()


# --------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """utime+stime of the whole process (exited threads included), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory(pid: int) -> dict[str, int]:
    """Bytes: VmRSS and RssAnon from status, Pss from smaps_rollup."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "Threads"):
            num = int(value.split()[0])
            out[key] = num if key == "Threads" else num * 1024
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "Pss":
            out["Pss"] = int(value.split()[0]) * 1024
    return out


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


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


def client_context() -> ssl.SSLContext:
    """TLS 1.3 only, no verification (client CPU is not measured), no session reuse."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    return ctx


# --------------------------------------------------------------------------- backend


async def _backend_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.transport.set_write_buffer_limits(high=4 << 20)
    chunk = memoryview(b"0123456789abcdef" * (1 << 16))  # 1 MiB, no CR/LF (raw mode)
    text = memoryview(TEXT_CHUNK)
    idle_tag = b"*"
    try:
        writer.write(b"* OK ready\r\n")
        await writer.drain()
        while True:
            line = await reader.readline()
            if not line:
                break
            parts = line.split()
            if len(parts) == 1 and parts[0].upper() == b"DONE":
                writer.write(idle_tag + b" OK IDLE done\r\n")
            elif len(parts) < 2:
                writer.write(b"* BAD no tag\r\n")
            else:
                tag, cmd = parts[0], parts[1].upper()
                if cmd == b"IDLE":
                    idle_tag = tag
                    writer.write(b"+ idling\r\n")
                elif cmd == b"DOWN":
                    left = int(parts[2])
                    while left > 0:
                        n = min(left, len(chunk))
                        writer.write(chunk[:n])
                        left -= n
                        await writer.drain()
                    writer.write(tag + b" OK\r\n")
                elif cmd == b"FETCHBIG":
                    # A message body as a real server sends it: an IMAP literal of text lines.
                    left = int(parts[2])
                    writer.write(b"* 1 FETCH (BODY[] {%d}\r\n" % left)
                    while left > 0:
                        n = min(left, len(text))
                        writer.write(text[:n])
                        left -= n
                        await writer.drain()
                    writer.write(b")\r\n" + tag + b" OK FETCH completed\r\n")
                elif cmd == b"APPEND" and parts[-1].startswith(b"{"):
                    left = int(parts[-1].strip(b"{}+"))
                    writer.write(b"+ Ready for literal data\r\n")
                    await writer.drain()
                    while left > 0:
                        data = await reader.read(min(left, 1 << 20))
                        if not data:
                            return
                        left -= len(data)
                    if (await reader.readline()).strip():
                        writer.write(tag + b" BAD junk after literal\r\n")
                    else:
                        writer.write(tag + b" OK APPEND completed\r\n")
                elif cmd == b"UP":
                    left = int(parts[2])
                    while left > 0:
                        data = await reader.read(min(left, 1 << 20))
                        if not data:
                            return
                        left -= len(data)
                    writer.write(tag + b" OK\r\n")
                elif cmd == b"LOGOUT":
                    writer.write(b"* BYE bye\r\n" + tag + b" OK\r\n")
                    await writer.drain()
                    break
                else:
                    writer.write(tag + b" OK done\r\n")
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _backend_main() -> None:
    server = await asyncio.start_server(_backend_session, "127.0.0.1", 0, backlog=4096, limit=1 << 20)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    async with server:
        await server.serve_forever()


# --------------------------------------------------------------------------- clients


async def _expect(reader: asyncio.StreamReader, prefix: bytes) -> None:
    line = await reader.readline()
    if not line.startswith(prefix):
        raise RuntimeError(f"expected {prefix!r}, got {line!r}")


async def _hold_one(port: int, ctx: ssl.SSLContext, sem: asyncio.Semaphore, held: list) -> None:
    async with sem:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=SNI), 30
        )
        await asyncio.wait_for(_expect(reader, b"* OK"), 30)
        for cmd, reply in ((b"a LOGIN u p\r\n", b"a OK"), (b"b SELECT INBOX\r\n", b"b OK"), (b"c IDLE\r\n", b"+")):
            writer.write(cmd)
            await asyncio.wait_for(_expect(reader, reply), 30)
        held.append(writer)


async def _hold_main(port: int, n: int) -> None:
    """Opens n sessions into IDLE, prints READY, holds them until stdin closes."""
    ctx = client_context()
    sem = asyncio.Semaphore(32)
    held: list = []
    results = await asyncio.gather(*(_hold_one(port, ctx, sem, held) for _ in range(n)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    print(f"READY {len(held)} {len(errors)} {errors[0]!r}" if errors else f"READY {len(held)} 0", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for writer in held:
        writer.transport.abort()


def _handshakes_main(port: int, n: int) -> None:
    """n sequential connections: full handshake, read the relayed greeting, close."""
    ctx = client_context()
    reused = 0
    cipher = None
    for _ in range(n):
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        with ctx.wrap_socket(raw, server_hostname=SNI) as tls:
            reused += tls.session_reused
            cipher = tls.cipher()
            buf = b""
            while not buf.endswith(b"\r\n"):
                data = tls.recv(256)
                if not data:
                    raise RuntimeError("closed before the greeting")
                buf += data
            if not buf.startswith(b"* OK"):
                raise RuntimeError(f"bad greeting {buf!r}")
    print(json.dumps({"reused": reused, "cipher": cipher}), flush=True)


def _stream_main(port: int, direction: str, nbytes: int, payload: str = "literal") -> None:
    """One logged-in session moving nbytes down (backend->client) or up; prints JSON.

    payload "literal": an IMAP FETCH / APPEND literal of CRLF text lines (what mail is);
    "raw": bench commands DOWN/UP moving bytes without CR/LF or IMAP framing."""
    ctx = client_context()
    raw = socket.create_connection(("127.0.0.1", port), timeout=60)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tls = ctx.wrap_socket(raw, server_hostname=SNI)

    def line() -> bytes:
        out = b""
        while not out.endswith(b"\n"):
            b = tls.recv(1)
            if not b:
                raise RuntimeError("closed")
            out += b
        return out

    assert line().startswith(b"* OK")
    tls.sendall(b"a LOGIN u p\r\n")
    assert line().startswith(b"a OK")
    # Tell the harness we are logged in; it samples CPU, then says go.
    print("LOGGED_IN", flush=True)
    sys.stdin.readline()
    t0 = time.monotonic()
    if direction == "down":
        if payload == "raw":
            tls.sendall(b"d DOWN %d\r\n" % nbytes)
            trailer = b"d OK\r\n"
            want = nbytes + len(trailer)
        else:
            tls.sendall(b"d FETCHBIG %d\r\n" % nbytes)
            head = line()
            if head != b"* 1 FETCH (BODY[] {%d}\r\n" % nbytes:
                raise RuntimeError(f"bad FETCH head {head!r}")
            trailer = b")\r\nd OK FETCH completed\r\n"
            want = nbytes + len(trailer)
        buf = bytearray(1 << 18)
        got = 0
        tail = b""
        while got < want:
            n = tls.recv_into(buf)
            if n == 0:
                raise RuntimeError(f"closed after {got} of {want} bytes")
            got += n
            tail = (tail + bytes(buf[max(0, n - 64) : n]))[-64:]
        if got != want or not tail.endswith(trailer):
            raise RuntimeError(f"bad end of stream: {got} bytes, tail {tail!r}")
    else:
        if payload == "raw":
            tls.sendall(b"u UP %d\r\n" % nbytes)
            chunk = memoryview(b"fedcba9876543210" * (1 << 16))
        else:
            tls.sendall(b"u APPEND INBOX {%d}\r\n" % nbytes)
            if not line().startswith(b"+"):
                raise RuntimeError("no continuation for APPEND")
            chunk = memoryview(TEXT_CHUNK)
        left = nbytes
        while left > 0:
            n = min(left, len(chunk))
            tls.sendall(chunk[:n])
            left -= n
        if payload != "raw":
            tls.sendall(b"\r\n")
        reply = line()
        if not reply.startswith(b"u OK"):
            raise RuntimeError(f"upload not acknowledged: {reply!r}")
    elapsed = time.monotonic() - t0
    print(json.dumps({"seconds": elapsed, "cipher": tls.cipher(), "version": tls.version()}), flush=True)
    tls.close()


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
    def __init__(self, workdir: Path, backend_port: int, threads: int, binary: str, certs: Path):
        self.name = "postern" if threads == 1 else f"postern-w{threads}"
        super().__init__(workdir, backend_port, threads)
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


# --------------------------------------------------------------------------- measurements


def sub(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE), *args], text=True, **kw)


def measure_idle(proxy: Proxy, sessions: int, holders: int) -> dict:
    # Warm-up: lazy initialisation (TLS config, thread-locals, scratch buffers) is not per session.
    w = sub("handshakes", str(proxy.port), "20", stdout=subprocess.PIPE)
    w.communicate(timeout=120)
    time.sleep(0.5)
    before = memory(proxy.pid)
    procs = []
    share = [sessions // holders + (1 if i < sessions % holders else 0) for i in range(holders)]
    for n in share:
        procs.append(sub("hold", str(proxy.port), str(n), stdin=subprocess.PIPE, stdout=subprocess.PIPE))
    held = 0
    errors = []
    for p in procs:
        line = p.stdout.readline().split(maxsplit=3)
        if not line or line[0] != "READY":
            errors.append(f"holder failed: {line}")
            continue
        held += int(line[1])
        if int(line[2]):
            errors.append(" ".join(line[2:]))
    time.sleep(2.0)  # let the proxy settle: every session is in IDLE, nothing flows
    after = memory(proxy.pid)
    fds = open_fds(proxy.pid)
    for p in procs:
        p.stdin.close()
        p.wait(60)
    if held == 0:
        raise RuntimeError(f"{proxy.name}: no session held: {errors}")
    return {
        "sessions": held,
        "errors": errors,
        "proxy_fds": fds,
        "before": before,
        "after": after,
        "rss_per_session": (after["VmRSS"] - before["VmRSS"]) / held,
        "pss_per_session": (after["Pss"] - before["Pss"]) / held,
        "anon_per_session": (after["RssAnon"] - before["RssAnon"]) / held,
    }


def measure_handshakes(proxy: Proxy, count: int, clients: int) -> dict:
    share = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
    c0 = cpu_seconds(proxy.pid)
    t0 = time.monotonic()
    procs = [sub("handshakes", str(proxy.port), str(n), stdout=subprocess.PIPE) for n in share]
    infos = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"{proxy.name}: handshake client failed ({p.returncode})")
        infos.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.monotonic() - t0
    cpu = cpu_seconds(proxy.pid) - c0
    return {
        "handshakes": count,
        "cpu_s": cpu,
        "wall_s": wall,
        "cpu_us_per_handshake": cpu / count * 1e6,
        "resumed": sum(i["reused"] for i in infos),
        "cipher": infos[0]["cipher"],
    }


def measure_stream(proxy: Proxy, direction: str, nbytes: int, payload: str = "literal") -> dict:
    p = sub("stream", str(proxy.port), direction, str(nbytes), payload, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    if p.stdout.readline().strip() != "LOGGED_IN":
        raise RuntimeError(f"{proxy.name}: stream client did not log in")
    c0 = cpu_seconds(proxy.pid)
    p.stdin.write("go\n")
    p.stdin.flush()
    out, _ = p.communicate(timeout=900)
    cpu = cpu_seconds(proxy.pid) - c0
    if p.returncode != 0:
        raise RuntimeError(f"{proxy.name}: stream client failed ({p.returncode})")
    info = json.loads(out.strip().splitlines()[-1])
    return {
        "bytes": nbytes,
        "payload": payload,
        "cpu_s": cpu,
        "wall_s": info["seconds"],
        "cpu_s_per_gib": cpu / (nbytes / GIB),
        "mib_per_s_wall": nbytes / (1 << 20) / info["seconds"],
        "cipher": info["cipher"],
    }


def make_certs(d: Path) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-days", "30",
         "-subj", f"/CN={SNI}", "-addext", f"subjectAltName=DNS:{SNI},DNS:localhost"],
        check=True, capture_output=True,
    )
    os.chmod(d / "key.pem", 0o600)
    (d / "combined.pem").write_bytes((d / "cert.pem").read_bytes() + (d / "key.pem").read_bytes())
    os.chmod(d / "combined.pem", 0o600)


def versions(postern: str) -> dict:
    def first_line(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            text = (r.stdout + r.stderr).strip().splitlines()
            return next((l for l in text if l and "inetd" not in l), "?")
        except (OSError, subprocess.TimeoutExpired):
            return "not found"

    return {
        "postern": first_line([postern, "--version"]),
        "repo HEAD at run time": first_line(["git", "-C", str(HERE.parent), "log", "-1", "--format=%h %cI"]),
        "postern binary built": datetime.datetime.fromtimestamp(os.stat(postern).st_mtime, datetime.timezone.utc)
        .isoformat(timespec="seconds") if os.path.exists(postern) else "?",
        "haproxy": first_line(["haproxy", "-v"]),
        "stunnel": first_line(["stunnel", "-version"]),
        "openssl (python client)": ssl.OPENSSL_VERSION,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
        "cpu model": next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                           if l.startswith("model name")), "?"),
        "loadavg at start": Path("/proc/loadavg").read_text().strip(),
    }


def summarize(runs: dict[str, list[dict]], key_path: tuple[str, str]) -> dict[str, tuple[float, float, float]]:
    """name -> (median, min, max) of runs[name][*][section][field]."""
    section, field = key_path
    out = {}
    for name, reps in runs.items():
        vals = [r[section][field] for r in reps if section in r]
        if vals:
            out[name] = (statistics.median(vals), min(vals), max(vals))
    return out


def report(runs: dict[str, list[dict]]) -> str:
    rows = [
        ("idle RSS / session (bytes)", ("idle", "rss_per_session"), "{:.0f}"),
        ("idle Pss / session (bytes)", ("idle", "pss_per_session"), "{:.0f}"),
        ("idle RssAnon / session (bytes)", ("idle", "anon_per_session"), "{:.0f}"),
        ("CPU / handshake+connect (µs)", ("handshake", "cpu_us_per_handshake"), "{:.0f}"),
        ("CPU / GiB backend→client (s)", ("down", "cpu_s_per_gib"), "{:.2f}"),
        ("CPU / GiB client→backend (s)", ("up", "cpu_s_per_gib"), "{:.2f}"),
    ]
    names = list(runs)
    ours = next((n for n in names if n.startswith("postern")), "postern")
    theirs = [next((n for n in names if n.startswith(p)), p) for p in ("haproxy", "stunnel")]
    lines = ["| metric (median [min–max]) | " + " | ".join(names) + f" | {ours}/{theirs[0]} | {ours}/{theirs[1]} |",
             "|---" * (len(names) + 3) + "|"]
    for label, path, fmt in rows:
        s = summarize(runs, path)
        cells = []
        for n in names:
            if n in s:
                med, lo, hi = s[n]
                cells.append(f"{fmt.format(med)} [{fmt.format(lo)}–{fmt.format(hi)}]")
            else:
                cells.append("–")
        ratio = []
        ours = next((n for n in names if n.startswith("postern")), None)
        for prefix in ("haproxy", "stunnel"):
            other = next((n for n in names if n.startswith(prefix)), None)
            if ours in s and other in s and s[other][0]:
                ratio.append(f"{s[ours][0] / s[other][0]:.2f}")
            else:
                ratio.append("–")
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratio) + " |")
    return "\n".join(lines)


def raw_table(runs: dict[str, list[dict]]) -> str:
    """One row per proxy and repetition: the raw samples behind the medians."""
    lines = ["| proxy | rep | sessions | RssAnon before→after (KiB) | VmRSS before→after (KiB) | handshakes: CPU s / wall s "
             "| down: CPU s / MiB/s wall | up: CPU s / MiB/s wall |", "|---" * 8 + "|"]
    for name, reps in runs.items():
        for r in sorted(reps, key=lambda r: r["rep"]):
            i, h, d, u = (r.get(k) for k in ("idle", "handshake", "down", "up"))
            cells = [
                f"{i['sessions']}" if i else "–",
                f"{i['before']['RssAnon'] >> 10}→{i['after']['RssAnon'] >> 10}" if i else "–",
                f"{i['before']['VmRSS'] >> 10}→{i['after']['VmRSS'] >> 10}" if i else "–",
                f"{h['cpu_s']:.2f} / {h['wall_s']:.1f} ({h['handshakes']})" if h else "–",
                f"{d['cpu_s']:.2f} / {d['mib_per_s_wall']:.0f} ({d['bytes'] / GIB:g} GiB)" if d else "–",
                f"{u['cpu_s']:.2f} / {u['mib_per_s_wall']:.0f} ({u['bytes'] / GIB:g} GiB)" if u else "–",
            ]
            lines.append(f"| {name} | {r['rep']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--postern", default="/work/target-bench/release/postern", help="postern binary (release build)")
    ap.add_argument("--proxies", default="postern,haproxy,stunnel",
                    help="comma list of postern, postern-w2, haproxy, haproxy-t2, stunnel")
    ap.add_argument("--sessions", type=int, default=3000, help="idle sessions held per proxy")
    ap.add_argument("--holders", type=int, default=2, help="client processes holding the idle sessions")
    ap.add_argument("--handshakes", type=int, default=2000, help="full handshakes per proxy per repetition")
    ap.add_argument("--clients", type=int, default=2, help="handshake client processes")
    ap.add_argument("--gib", type=float, default=2.0, help="GiB relayed per direction per repetition")
    ap.add_argument("--payload", choices=("literal", "raw"), default="literal",
                    help="relayed bytes: IMAP FETCH/APPEND literals of CRLF text lines, or raw bytes without CR/LF")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma list of idle, handshake, down, up to skip")
    ap.add_argument("--json", help="write raw results here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    ap.add_argument("--report", metavar="FILE", help="only print the tables of an earlier --json FILE")
    args = ap.parse_args()
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        print(report(saved["runs"]))
        print()
        print(raw_table(saved["runs"]))
        return 0

    for tool in ("haproxy", "stunnel", "openssl"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install haproxy stunnel4 openssl", file=sys.stderr)
            return 2
    if not os.access(args.postern, os.X_OK):
        print(f"postern binary {args.postern} not found: build it with "
              f"`CARGO_TARGET_DIR=/work/target-bench cargo build --release -p postern` or pass --postern",
              file=sys.stderr)
        return 2
    skip = set(filter(None, args.skip.split(",")))
    work = Path(tempfile.mkdtemp(prefix="postern-bench-"))
    certs = work / "certs"
    certs.mkdir()
    make_certs(certs)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "argv": sys.argv, "versions": versions(args.postern)}
    print(json.dumps(meta, indent=1), flush=True)

    backend = sub("backend", stdout=subprocess.PIPE)
    backend_port = int(backend.stdout.readline())
    proxies: list[Proxy] = []
    for name in args.proxies.split(","):
        if name.startswith("postern"):
            threads = int(name[len("postern-w"):]) if name.startswith("postern-w") else 1
            proxies.append(Postern(work, backend_port, threads, args.postern, certs))
        elif name.startswith("haproxy"):
            threads = int(name[len("haproxy-t"):]) if name.startswith("haproxy-t") else 1
            proxies.append(Haproxy(work, backend_port, threads, certs))
        elif name == "stunnel":
            proxies.append(Stunnel(work, backend_port, 1, certs))
        else:
            print(f"unknown proxy {name!r} in --proxies", file=sys.stderr)
            return 2
    runs: dict[str, list[dict]] = {p.name: [] for p in proxies}
    nbytes = int(args.gib * GIB)
    t_start = time.monotonic()
    try:
        for rep in range(args.reps):
            # Rotate the order so no proxy always runs first (or last) on a drifting machine.
            order = proxies[rep % len(proxies):] + proxies[: rep % len(proxies)]
            for proxy in order:
                result: dict = {"rep": rep}
                proxy.start()
                try:
                    result["threads_at_start"] = memory(proxy.pid)["Threads"]
                    if "idle" not in skip:
                        result["idle"] = measure_idle(proxy, args.sessions, args.holders)
                    if "handshake" not in skip:
                        result["handshake"] = measure_handshakes(proxy, args.handshakes, args.clients)
                    if "down" not in skip:
                        result["down"] = measure_stream(proxy, "down", nbytes, args.payload)
                    if "up" not in skip:
                        result["up"] = measure_stream(proxy, "up", nbytes, args.payload)
                finally:
                    proxy.stop()
                runs[proxy.name].append(result)
                brief = {k: (round(v["rss_per_session"]) if k == "idle" else
                             round(v["cpu_us_per_handshake"]) if k == "handshake" else
                             round(v["cpu_s_per_gib"], 2)) for k, v in result.items() if isinstance(v, dict)}
                print(f"rep {rep} {proxy.name}: {brief}  (t={time.monotonic() - t_start:.0f}s)", flush=True)
    finally:
        backend.terminate()
        backend.wait(10)
        for p in proxies:
            p.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")
    meta["elapsed_s"] = round(time.monotonic() - t_start)
    meta["runs"] = runs
    if args.json:
        Path(args.json).write_text(json.dumps(meta, indent=1))
    print()
    print(report(runs))
    print()
    print(raw_table(runs))
    print(f"\nelapsed {meta['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("backend", "hold", "handshakes", "stream"):
        cmd, rest = sys.argv[1], sys.argv[2:]
        if cmd == "backend":
            asyncio.run(_backend_main())
        elif cmd == "hold":
            asyncio.run(_hold_main(int(rest[0]), int(rest[1])))
        elif cmd == "handshakes":
            _handshakes_main(int(rest[0]), int(rest[1]))
        else:
            _stream_main(int(rest[0]), rest[1], int(rest[2]), rest[3] if len(rest) > 3 else "raw")
        sys.exit(0)
    sys.exit(main())
