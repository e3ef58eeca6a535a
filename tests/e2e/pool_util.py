"""Helpers for test_backend_pool.py: synthetic greeting servers, clients with a chosen source
address, one-line IMAP/POP3/SMTP sessions, the server each session used, and a /proc scan for
postern's children.

Linux routes all of 127.0.0.0/8 to `lo`, so a client socket bound to 127.0.0.2 reaches a
listener on 127.0.0.1 and postern sees 127.0.0.2 as the peer: the forwarded address then
differs from postern's own (127.0.0.1) and a backend log can tell the two apart.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Optional

from harness import Postern, read_line, wait_for
from harness.clients import DEFAULT_TIMEOUT


class Silent:
    """A listener that accepts (the kernel's backlog does) but never greets: a hung server."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.sock.close()


class Greeter:
    """A tiny IMAP-shaped server in a thread: greets `* OK ready <name>`, answers every
    `TAG CMD ...` line with `TAG OK CMD done` (LOGOUT: `* BYE` + tagged OK, then close).

    `path` makes it listen on a unix socket instead of 127.0.0.1:0; `greeting` replaces the
    greeting line (e.g. a refusing `* BYE`). `stop()` closes the
    listener and every open connection (the server "dies"); `start()` listens again on the
    same address. `sessions` counts connections that sent a command other than postern's
    health-probe LOGOUT.
    """

    def __init__(self, name: str, path: Optional[Path] = None, greeting: Optional[bytes] = None) -> None:
        self.name = name
        self.path = path
        self.greeting = greeting or f"* OK ready {name}\r\n".encode()
        self.port = 0
        self.sessions = 0
        # monotonic accept time of each counted session's connection (warm spares are older
        # than the client connection they end up serving)
        self.session_accepted: list[float] = []
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        # connection -> accept time, while it has received no byte (a warm spare, or a probe
        # that has not sent its LOGOUT yet)
        self._silent: dict[socket.socket, float] = {}
        self._lsock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def server(self) -> str:
        """The `servers = [...]` entry (and postern's `server` label) for this greeter."""
        return f"unix:{self.path}" if self.path else f"127.0.0.1:{self.port}"

    def start(self) -> "Greeter":
        if self.path:
            if self.path.exists():
                self.path.unlink()
            ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            ls.bind(str(self.path))
        else:
            ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind(("127.0.0.1", self.port))
            self.port = ls.getsockname()[1]
        ls.listen(256)
        self._lsock = ls
        self._thread = threading.Thread(target=self._accept, args=(ls,), name=f"greeter-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                conn, _ = ls.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
                self._silent[conn] = time.monotonic()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        accepted = time.monotonic()
        counted = False
        try:
            conn.settimeout(30)
            conn.sendall(self.greeting)
            buf = b""
            while True:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                buf += chunk
                with self._lock:
                    self._silent.pop(conn, None)
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    parts = line.strip().split(None, 2)
                    if len(parts) < 2:
                        conn.sendall(b"* BAD need a tag and a command\r\n")
                        continue
                    tag, cmd = parts[0], parts[1].upper()
                    if not counted and tag != b"postern-probe":
                        counted = True
                        with self._lock:
                            self.sessions += 1
                            self.session_accepted.append(accepted)
                    if cmd == b"LOGOUT":
                        conn.sendall(b"* BYE " + self.name.encode() + b" logging out\r\n" + tag + b" OK LOGOUT done\r\n")
                        return
                    conn.sendall(tag + b" OK " + cmd + b" done " + self.name.encode() + b"\r\n")
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
                self._silent.pop(conn, None)
            try:
                conn.close()
            except OSError:
                pass

    @property
    def open_conns(self) -> int:
        """Connections open right now (sessions, probes, warm spares)."""
        with self._lock:
            return len(self._conns)

    def idle_for(self, age: float) -> int:
        """Connections open at least `age` seconds that never sent a byte: warm spares (a
        health probe sends its LOGOUT right after the greeting)."""
        now = time.monotonic()
        with self._lock:
            return sum(1 for t in self._silent.values() if now - t >= age)

    def stop(self) -> None:
        if self._lsock is not None:
            try:
                self._lsock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._lsock.close()
            self._lsock = None
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.path and self.path.exists():
            self.path.unlink()


def tls_from(addr: tuple[str, int], ctx: ssl.SSLContext, source_ip: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT) -> ssl.SSLSocket:
    """A TLS socket to addr whose TCP source address is `source_ip` (any 127/8 address)."""
    raw = socket.create_connection(addr, timeout=timeout, source_address=(source_ip, 0))
    try:
        return ctx.wrap_socket(raw, server_hostname="mail.test")
    except BaseException:
        raw.close()
        raise


def local_of(sock: socket.socket) -> str:
    """'ip:port' of the client side, as postern logs it in `peer`."""
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def read_tagged(sock: socket.socket, tag: bytes, timeout: float = DEFAULT_TIMEOUT) -> list[bytes]:
    """Lines through the one that starts with `tag ` (IMAP)."""
    lines = []
    while True:
        line = read_line(sock, timeout)
        lines.append(line)
        if line.startswith(tag + b" "):
            return lines


def imap_hello(addr: tuple[str, int], ctx: ssl.SSLContext, source_ip: str = "127.0.0.1") -> str:
    """One short IMAP session: greeting, LOGOUT, EOF. Returns the client's 'ip:port'.

    Raises AssertionError on anything but a `* OK` greeting and a tagged OK (the
    "client-visible failure" the pool tests count)."""
    s = tls_from(addr, ctx, source_ip)
    try:
        local = local_of(s)
        greeting = read_line(s)
        assert greeting.startswith(b"* OK"), f"greeting {greeting!r}"
        s.sendall(b"z1 LOGOUT\r\n")
        lines = read_tagged(s, b"z1")
        assert lines[-1].startswith(b"z1 OK"), f"LOGOUT answered {lines!r}"
        return local
    finally:
        s.close()


class Held:
    """An IMAP session kept open (greeting read) until close()."""

    def __init__(self, addr: tuple[str, int], ctx: ssl.SSLContext, source_ip: str = "127.0.0.1") -> None:
        self.sock = tls_from(addr, ctx, source_ip)
        self.local = local_of(self.sock)
        self.greeting = read_line(self.sock)
        assert self.greeting.startswith(b"* OK"), self.greeting

    def at_eof(self) -> bool:
        """True once the server side has closed (whatever it sent before is discarded)."""
        if getattr(self, "_eof", False):
            return True
        self.sock.setblocking(False)
        try:
            while True:
                if not self.sock.recv(4096):
                    self._eof = True
                    break
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            pass
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError):
            self._eof = True
        finally:
            self.sock.settimeout(DEFAULT_TIMEOUT)
        return getattr(self, "_eof", False)

    def close(self) -> None:
        try:
            self.sock.sendall(b"z9 LOGOUT\r\n")
            read_tagged(self.sock, b"z9")
        except (OSError, EOFError, TimeoutError):
            pass
        self.sock.close()


def backend_of(gw: Postern, local: str, after: int = 0, timeout: float = 10.0) -> str:
    """The `backend` field of the `session ended` line for client `local`."""
    rec = gw.wait_session_end(timeout=timeout, after=after, peer=local)[0]
    return str(rec.get("backend", ""))


def up(gw: Postern, backend: str, server: str) -> Optional[float]:
    return gw.metrics().value("postern_backend_up", default=None, backend=backend, server=server)


def wait_up(gw: Postern, backend: str, server: str, want: float, timeout: float = 10.0) -> None:
    wait_for(lambda: up(gw, backend, server) == want, timeout,
             f"postern_backend_up{{backend={backend!r},server={server!r}}} == {want}",
             interval=0.02, on_timeout=lambda: _up_lines(gw))


def _up_lines(gw: Postern) -> str:
    try:
        return "\n".join(line for line in gw.metrics().text.splitlines() if line.startswith("postern_backend"))
    except Exception as e:  # noqa: BLE001 (only for a failure message)
        return f"(metrics unavailable: {e})"


# ---- processes ----------------------------------------------------------------------------------


def proc_stat(pid: int) -> Optional[tuple[str, int, str]]:
    """(state, ppid, comm) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm is in parentheses and may contain spaces or parentheses: split after the last ')'
    lpar, rpar = text.index("("), text.rindex(")")
    comm = text[lpar + 1:rpar]
    rest = text[rpar + 2:].split()
    return rest[0], int(rest[1]), comm


def children(ppid: int) -> list[tuple[int, str, str]]:
    """(pid, state, comm) of every process whose parent is `ppid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = proc_stat(int(entry))
        if st is not None and st[1] == ppid:
            found.append((int(entry), st[0], st[2]))
    return found


def zombies(ppid: int) -> list[tuple[int, str, str]]:
    return [c for c in children(ppid) if c[1] == "Z"]


def wait_no_children(ppid: int, timeout: float = 10.0) -> None:
    """Wait until `ppid` has no child at all (none running, none unreaped)."""
    wait_for(lambda: not children(ppid), timeout, f"process {ppid} to have no children",
             interval=0.02, on_timeout=lambda: f"still: {children(ppid)}")


def elapsed(start: float) -> float:
    return time.monotonic() - start
