"""Fake backends for cases Dovecot cannot produce on demand (exact bytes, half-close, a hung
server, a pool of many small servers), each on 127.0.0.1:0 in a thread:

- `ScriptedBackend`: greets, answers every line with `respond(line, conn)` (IMAP-shaped by
  default; `smtp_responder` for SMTP) and records every line it receives per connection,
  so a test can check exactly what postern sent (e.g. that a client's XCLIENT never arrived).
  With `proxy=True` it first reads a PROXY v1/v2 header (what `forward_client = "proxy-v*"`
  sends) into `conn.proxy`.
- `ReadAllBackend`: greets, reads until the client's EOF (FIN), then answers with a summary
  line and a payload, then closes: proves a client's close is passed on as a half-close.
- `Silent`: accepts (the kernel's backlog does) and never greets: a hung server.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .proxy import ProxyHeader, ProxyParseError, parse_proxy
from .util import LOOPBACK, wait_for


@dataclass
class Conversation:
    """What one connection carried: bytes received before EOF, whether EOF came as FIN."""

    received: bytes = b""
    fin: bool = False
    reset: bool = False


class ReadAllBackend:
    def __init__(self, greeting: bytes = b"* OK fake backend ready\r\n", payload: bytes = b"") -> None:
        self.greeting = greeting
        self.payload = payload
        self._srv = socket.create_server((LOOPBACK, 0))
        self.port = self._srv.getsockname()[1]
        self.conversations: list[Conversation] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def server(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def reply_for(self, data: bytes) -> bytes:
        return f"* OK got {len(data)} bytes sha256={hashlib.sha256(data).hexdigest()}\r\n".encode() + self.payload

    def start(self) -> "ReadAllBackend":
        self._srv.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name=f"fake-backend-{self.port}")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._srv.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conv = Conversation()
        conn.settimeout(30)
        try:
            conn.sendall(self.greeting)
            chunks = []
            while True:
                data = conn.recv(65536)
                if not data:
                    conv.fin = True
                    break
                chunks.append(data)
            conv.received = b"".join(chunks)
            conn.sendall(self.reply_for(conv.received))
        except ConnectionResetError:
            conv.reset = True
        except OSError:
            pass
        finally:
            conn.close()
            with self._lock:
                self.conversations.append(conv)

    def with_data(self) -> list[Conversation]:
        """Conversations that carried bytes (postern's health probes may send some too)."""
        with self._lock:
            return [c for c in self.conversations if c.received]


class Silent:
    """A listener that accepts (the kernel's backlog does) but never greets: a hung server."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]

    @property
    def server(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def close(self) -> None:
        self.sock.close()


# tag of postern's health probe (a LOGOUT after the greeting): not counted as a session
PROBE_TAG = b"postern-probe"


@dataclass
class Connection:
    """One connection to a ScriptedBackend: when it was accepted, the PROXY header it began
    with (proxy=True), and every line it sent, CRLF included, in order."""

    accepted: float
    proxy: Optional[ProxyHeader] = None
    lines: list[bytes] = field(default_factory=list)
    # it sent a command other than the health probe's LOGOUT
    counted: bool = False
    closed: bool = False


# respond(line, conn, backend) -> the reply to send (b"" for none); CloseAfter(reply) sends it
# and closes; None closes at once
Responder = Callable[[bytes, Connection, "ScriptedBackend"], Optional[bytes]]


class CloseAfter(bytes):
    """A reply after which the backend closes the connection."""


def imap_responder(line: bytes, conn: Connection, backend: "ScriptedBackend") -> Optional[bytes]:
    """`TAG CMD ...` -> `TAG OK CMD done <name>`; LOGOUT -> `* BYE` + tagged OK, then close."""
    parts = line.strip().split(None, 2)
    if len(parts) < 2:
        return b"* BAD need a tag and a command\r\n"
    tag, cmd = parts[0], parts[1].upper()
    name = backend.name.encode()
    if cmd == b"LOGOUT":
        return CloseAfter(b"* BYE " + name + b" logging out\r\n" + tag + b" OK LOGOUT done\r\n")
    return tag + b" OK " + cmd + b" done " + name + b"\r\n"


def smtp_responder(line: bytes, conn: Connection, backend: "ScriptedBackend") -> Optional[bytes]:
    """A lenient SMTP server: EHLO (with AUTH PLAIN LOGIN and CHUNKING), 235 for AUTH, 354 for
    DATA and 250 for its body once the lone `.` arrives, 221 + close for QUIT, 250 otherwise."""
    if getattr(conn, "in_data", False):
        if line in (b".\r\n", b".\n"):
            conn.in_data = False  # type: ignore[attr-defined]
            return b"250 2.0.0 queued\r\n"
        return b""
    verb = line.strip().split(b" ", 1)[0].upper()
    if verb in (b"EHLO", b"HELO"):
        return b"250-" + backend.name.encode() + b"\r\n250-AUTH PLAIN LOGIN\r\n250-CHUNKING\r\n250 8BITMIME\r\n"
    if verb == b"AUTH":
        return b"235 2.7.0 Logged in.\r\n"
    if verb == b"DATA":
        conn.in_data = True  # type: ignore[attr-defined]
        return b"354 go ahead\r\n"
    if verb == b"QUIT":
        return CloseAfter(b"221 2.0.0 bye\r\n")
    return b"250 2.0.0 OK\r\n"


class ScriptedBackend:
    """A line server in a thread: sends `greeting`, then for every line received (recorded in
    `connections[i].lines`) sends what `respond` returns (`CloseAfter(reply)`: then closes).

    IMAP-shaped by default: greets `* OK ready <name>`; pass `greeting=` and `respond=` (e.g.
    `smtp_responder`, greeting `220 ...`) for other shapes. `path` listens on a unix socket
    instead of 127.0.0.1:0. `stop()` closes the listener and every open connection (the
    server "dies"); `start()` listens again on the same address. `sessions` counts connections
    that sent a command other than postern's health-probe LOGOUT (tag `postern-probe`).
    """

    def __init__(
        self,
        name: str = "fake",
        path: Optional[Path] = None,
        greeting: Optional[bytes] = None,
        respond: Responder = imap_responder,
        proxy: bool = False,
        host: str = LOOPBACK,
    ) -> None:
        self.name = name
        # another loopback address (127.0.0.11...) makes another host for route = "user"
        self.host = host
        self.path = path
        self.greeting = greeting if greeting is not None else f"* OK ready {name}\r\n".encode()
        self.respond = respond
        self.proxy = proxy
        self.port = 0
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, Connection] = {}
        self._lsock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def server(self) -> str:
        """The `servers = [...]` entry (and postern's `server` label) for this backend."""
        return f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"

    def start(self) -> "ScriptedBackend":
        if self.path:
            if self.path.exists():
                self.path.unlink()
            ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            ls.bind(str(self.path))
        else:
            ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind((self.host, self.port))
            self.port = ls.getsockname()[1]
        ls.listen(256)
        self._lsock = ls
        self._thread = threading.Thread(target=self._accept, args=(ls,), name=f"scripted-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                sock, _ = ls.accept()
            except OSError:
                return
            conn = Connection(accepted=time.monotonic())
            with self._lock:
                self._conns[sock] = conn
                self.connections.append(conn)
            threading.Thread(target=self._serve, args=(sock, conn), daemon=True).start()

    def _serve(self, sock: socket.socket, conn: Connection) -> None:
        try:
            sock.settimeout(30)
            buf = b""
            if self.proxy:
                buf = self._read_proxy(sock, conn)
            sock.sendall(self.greeting)
            while True:
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    line += b"\n"
                    with self._lock:
                        conn.lines.append(line)
                        if not conn.counted and line.strip() and not line.startswith(PROBE_TAG + b" "):
                            conn.counted = True
                    reply = self.respond(line, conn, self)
                    if reply is None:
                        return
                    if reply:
                        sock.sendall(reply)
                    if isinstance(reply, CloseAfter):
                        return
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buf += chunk
        except (OSError, ProxyParseError):
            return
        finally:
            with self._lock:
                self._conns.pop(sock, None)
                conn.closed = True
            try:
                sock.close()
            except OSError:
                pass

    def _read_proxy(self, sock: socket.socket, conn: Connection) -> bytes:
        buf = b""
        while True:
            got = parse_proxy(buf)
            if got is not None:
                conn.proxy, used = got
                return buf[used:]
            chunk = sock.recv(4096)
            if not chunk:
                raise ProxyParseError(f"closed inside the PROXY header after {buf!r}")
            buf += chunk

    # ---- what it saw ----------------------------------------------------------------------

    @property
    def sessions(self) -> int:
        with self._lock:
            return sum(1 for c in self.connections if c.counted)

    @property
    def session_accepted(self) -> list[float]:
        """Accept time of each counted session's connection, in accept order (warm spares are
        older than the client connection they end up serving)."""
        with self._lock:
            return [c.accepted for c in self.connections if c.counted]

    def received(self, probes: bool = False) -> list[bytes]:
        """Every line received on every connection, in accept order (without the health
        probes' lines unless `probes`)."""
        with self._lock:
            return [ln for c in self.connections for ln in c.lines if probes or not ln.startswith(PROBE_TAG + b" ")]

    def wait_line(self, pred: Callable[[bytes], bool], timeout: float = 10.0, what: str = "a line") -> bytes:
        """The first received line for which pred holds (polled with a deadline)."""
        return wait_for(lambda: next((ln for ln in self.received(probes=True) if pred(ln)), None), timeout,
                        f"{what} at fake backend {self.name}", on_timeout=lambda: repr(self.received(probes=True)[-20:]))

    def wait_connection(self, pred: Callable[[Connection], bool], timeout: float = 10.0, what: str = "a connection") -> Connection:
        """The first connection for which pred holds, e.g. one whose lines include an AUTH
        (polled with a deadline; health probes are connections too)."""

        def find() -> Optional[Connection]:
            with self._lock:
                conns = list(self.connections)
            return next((c for c in conns if pred(c)), None)

        return wait_for(find, timeout, f"{what} at fake backend {self.name}",
                        on_timeout=lambda: repr([c.lines[-5:] for c in self.connections][-10:]))

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
            return sum(1 for c in self._conns.values() if not c.lines and now - c.accepted >= age)

    def stop(self) -> None:
        if self._lsock is not None:
            try:
                self._lsock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._lsock.close()
            self._lsock = None
        with self._lock:
            socks = list(self._conns)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.path and self.path.exists():
            self.path.unlink()
