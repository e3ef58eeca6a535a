"""A bounded connection flood from many loopback source addresses, for test_flood.py. Runs as a
process of its own (`python -m harness.flood CONFIG_JSON`, started by `Flood`) so that its
work never holds the GIL of the test that measures a legitimate client meanwhile.

Three kinds of hostile connection, each from its own set of source addresses:
- `half_open`: TLS that never finishes: a ClientHello record header and the first bytes of
  its body, then nothing (postern waits up to `handshake_timeout`);
- `slow`: plaintext on a STARTTLS listener, one byte of a command line that never ends every
  `byte_every` seconds (postern waits up to `plaintext_timeout`);
- `bursts`: connect and close at once, `per_second` connections spread over the sources.
Held connections that postern closes (a timeout, a refusal) are opened again, each slot at
most once per `reopen_after` seconds, so a refusing gateway never makes the flood spin.

Bounded: `per_source` connections per address for the held kinds, `per_second` for bursts,
and `duration` seconds in all (then it stops by itself); it also stops when its stdin
closes. It prints `ready` once the held connections are up, and a JSON line of counts when
it stops (with the CPU seconds it used and how long it ran).
"""

from __future__ import annotations

import errno
import json
import resource
import select
import selectors
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .sockets import connect_nonblocking

# A TLS handshake record announcing a 512-byte ClientHello, and its first 6 bytes.
PARTIAL_CLIENT_HELLO = b"\x16\x03\x01\x02\x00" + b"\x01\x00\x01\xfc\x03\x03"


@dataclass
class Slot:
    kind: str
    addr: tuple[str, int]
    source: str
    sock: Optional[socket.socket] = None
    connected: bool = False
    next_open: float = 0.0
    next_byte: float = 0.0


@dataclass
class Counts:
    opened: dict = field(default_factory=lambda: {"half_open": 0, "slow": 0, "bursts": 0})
    closed_by_server: dict = field(default_factory=lambda: {"half_open": 0, "slow": 0})
    errors: int = 0
    peak_held: int = 0


class Generator:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.sel = selectors.DefaultSelector()
        self.counts = Counts()
        self.slots: list[Slot] = []
        for kind in ("half_open", "slow"):
            spec = cfg.get(kind)
            if spec:
                for src in spec["sources"]:
                    for _ in range(spec["per_source"]):
                        self.slots.append(Slot(kind, tuple(spec["addr"]), src))
        self.bursting: set[socket.socket] = set()
        self.burst_i = 0

    def open(self, slot: Slot, now: float) -> None:
        try:
            slot.sock = connect_nonblocking(slot.addr, slot.source)
        except OSError:
            self.counts.errors += 1
            slot.next_open = now + self.cfg["reopen_after"]
            return
        slot.connected = False
        self.counts.opened[slot.kind] += 1
        self.sel.register(slot.sock, selectors.EVENT_WRITE, slot)

    def drop(self, slot: Slot, now: float, by_server: bool) -> None:
        if slot.sock is not None:
            self.sel.unregister(slot.sock)
            slot.sock.close()
            slot.sock = None
        slot.connected = False
        if by_server:
            self.counts.closed_by_server[slot.kind] += 1
        slot.next_open = now + self.cfg["reopen_after"]

    def on_event(self, key, mask, now: float) -> None:
        data = key.data
        if isinstance(data, str):  # a burst connection: connected (or failed), close it
            self.sel.unregister(key.fileobj)
            self.bursting.discard(key.fileobj)
            key.fileobj.close()
            return
        slot: Slot = data
        sock = slot.sock
        if not slot.connected:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.counts.errors += 1
                self.drop(slot, now, by_server=False)
                return
            slot.connected = True
            if slot.kind == "half_open":
                try:
                    sock.send(PARTIAL_CLIENT_HELLO)
                except OSError:
                    self.drop(slot, now, by_server=True)
                    return
            slot.next_byte = now
            self.sel.modify(sock, selectors.EVENT_READ, slot)
            return
        try:
            data = sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # postern closed it: a timeout or a refusal
            self.drop(slot, now, by_server=True)
        # else: a greeting or a refusal line; read and ignored

    def tick(self, now: float) -> None:
        for slot in self.slots:
            if slot.sock is None and now >= slot.next_open:
                self.open(slot, now)
            elif slot.kind == "slow" and slot.connected and now >= slot.next_byte:
                slot.next_byte = now + self.cfg["slow"]["byte_every"]
                try:
                    slot.sock.send(b"x")
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    self.drop(slot, now, by_server=True)
        held = sum(1 for s in self.slots if s.connected and s.sock is not None)
        self.counts.peak_held = max(self.counts.peak_held, held)

    def burst(self, due: int) -> None:
        spec = self.cfg["bursts"]
        for _ in range(due):
            src = spec["sources"][self.burst_i % len(spec["sources"])]
            addr = tuple(spec["addrs"][self.burst_i % len(spec["addrs"])])
            self.burst_i += 1
            try:
                s = connect_nonblocking(addr, src)
            except OSError as e:
                if e.errno not in (errno.EADDRNOTAVAIL, errno.EMFILE):
                    raise
                self.counts.errors += 1
                continue
            self.counts.opened["bursts"] += 1
            self.bursting.add(s)
            self.sel.register(s, selectors.EVENT_WRITE, "burst")

    def held_up(self) -> bool:
        return all(s.connected for s in self.slots)

    def run(self) -> None:
        stdin = sys.stdin.buffer
        self.sel.register(stdin, selectors.EVENT_READ, "stdin")
        started = time.monotonic()
        end = started + self.cfg["duration"]
        bursts = self.cfg.get("bursts")
        burst_start: Optional[float] = None
        ready = False
        while True:
            now = time.monotonic()
            if now >= end:
                break
            self.tick(now)
            if not ready and (self.held_up() or now - started > self.cfg["ready_within"]):
                ready = True
                burst_start = now
                print("ready", flush=True)
            if bursts and burst_start is not None:
                due = int((now - burst_start) * bursts["per_second"]) - self.counts.opened["bursts"]
                if due > 0:
                    self.burst(due)
            stop = False
            for key, mask in self.sel.select(timeout=0.02):
                if key.data == "stdin":
                    if not stdin.read1(1024):
                        stop = True
                    continue
                self.on_event(key, mask, time.monotonic())
            if stop:
                break
        for slot in self.slots:
            if slot.sock is not None:
                slot.sock.close()
        for s in self.bursting:
            s.close()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out = {**self.counts.__dict__, "cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": time.monotonic() - started}
        print(json.dumps(out), flush=True)


class Flood:
    """The flood as a child process: `start()` returns once it printed `ready`; `stop()`
    ends it and returns its counts."""

    def __init__(self, cfg: dict):
        self.cfg = {"reopen_after": 0.5, "duration": 60, "ready_within": 10, **cfg}
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Flood":
        here = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness.flood", json.dumps(self.cfg)],
            cwd=here,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        # the child prints `ready` within `ready_within` (or dies): wait a little longer
        readable, _, _ = select.select([self.proc.stdout], [], [], self.cfg["ready_within"] + 10)
        line = self.proc.stdout.readline() if readable else ""
        if line.strip() != "ready":
            self.proc.kill()
            raise AssertionError(f"flood did not start: {line!r}")
        return self

    def stop(self) -> dict:
        assert self.proc is not None
        try:  # communicate closes the child's stdin: its signal to stop
            out, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        assert self.proc.returncode == 0, self.proc.returncode
        return json.loads(out.strip().splitlines()[-1])

    def __enter__(self) -> "Flood":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def main(argv: list[str]) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    Generator(json.loads(argv[1])).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
