"""The suite's one line client: plain TCP or TLS, line by line, every read under a deadline.

`LineClient` keeps its own read buffer and records what a test may want to check afterwards:
every line read with its arrival time (`lines`), plaintext bytes sent and received
(`sent`/`received`, comparable with postern's byte counters), and how the peer closed
(`eof_kind` "clean", or "ragged: <error>" for a reset or a TLS close without close_notify;
`eof_at`). Protocol conveniences (IMAP tags, POP3 multi-line, SMTP replies) sit on top of
`line()`.

    c = LineClient.tls(gw.addr("imaps"), client_ctx, source="127.0.0.2", read_greeting=True)
    c.imap_login(user, password)
    c.cmd(b"z LOGOUT"); c.tagged(b"z"); c.read_to_eof()

Raw-socket helpers `read_line(sock)` / `read_until_eof(sock)` are kept for code that holds a
socket from elsewhere (an imaplib object's `.sock`); both run on LineClient.
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Callable, Optional, Union

from .sockets import DEFAULT_TIMEOUT, Source, connect, local_of, tls_connect

# how a peer's close can look from a client socket besides a clean EOF
RAGGED_EOFS = (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError)

Tag = Union[bytes, str]


class LineClient:
    """A line-oriented client on one connected socket (plain first and TLS after
    `start_tls()`, or TLS from the start with `LineClient.tls`)."""

    def __init__(self, sock: socket.socket, timeout: float = DEFAULT_TIMEOUT, recv_size: int = 65536) -> None:
        self.sock = sock
        self.timeout = timeout
        # recv_size=1 never reads past what the caller asks for, so the socket can be handed on
        self.recv_size = recv_size
        self.buf = bytearray()
        self.sent = 0
        self.received = 0
        self.lines: list[tuple[float, bytes]] = []  # (monotonic arrival, line) of every line read
        self.eof_at: Optional[float] = None
        self.eof_kind: Optional[str] = None
        self.tls = isinstance(sock, ssl.SSLSocket)
        # the `peer` field postern logs for this connection (kept: it outlives the socket)
        self.peer = local_of(sock)
        self.greeting: Optional[bytes] = None

    # ---- opening --------------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        addr: tuple[str, int],
        timeout: float = DEFAULT_TIMEOUT,
        source: Source = None,
        proxy: Optional[bytes] = None,
        read_greeting: bool = False,
    ) -> "LineClient":
        """A plain TCP client (STARTTLS listeners, or raw bytes at a TLS port)."""
        c = cls(connect(addr, timeout, source, proxy), timeout)
        return c._greet() if read_greeting else c

    @classmethod
    def tls(
        cls,
        addr: tuple[str, int],
        ctx: ssl.SSLContext,
        server_hostname: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        source: Source = None,
        proxy: Optional[bytes] = None,
        rcvbuf: Optional[int] = None,
        read_greeting: bool = False,
    ) -> "LineClient":
        """A TLS client, handshake done (server_hostname defaults to addr's host)."""
        sock = tls_connect(addr, ctx, server_hostname, timeout, source, proxy, rcvbuf, suppress_ragged_eofs=False)
        c = cls(sock, timeout)
        return c._greet() if read_greeting else c

    def _greet(self) -> "LineClient":
        try:
            self.greeting = self.line()
        except BaseException:
            self.close()
            raise
        return self

    def start_tls(self, ctx: ssl.SSLContext, server_hostname: str = "localhost") -> None:
        """Upgrade this connection (after a STARTTLS go-ahead). Refuses while the read buffer
        holds bytes: they would be plaintext the server sent after its go-ahead (rule T2 seen
        from the client side: a test must notice them, not silently drop them)."""
        if self.buf:
            raise AssertionError(f"plaintext bytes after the go-ahead, before the handshake: {bytes(self.buf)!r}")
        self.sock.settimeout(self.timeout)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname, suppress_ragged_eofs=False)
        self.tls = True

    # ---- writing --------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def cmd(self, data: bytes) -> None:
        """Send one command line (CRLF added unless it ends with LF already)."""
        self.send(data if data.endswith(b"\n") else data + b"\r\n")

    # ---- reading --------------------------------------------------------------------------

    def fill(self, deadline: float) -> bool:
        """Read more into `buf`; False at EOF (recorded). TimeoutError at the deadline."""
        while self.eof_kind is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"nothing more from the server within {self.timeout}s (buffer {bytes(self.buf[:300])!r})")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(self.recv_size)
            except socket.timeout:
                continue
            except ssl.SSLZeroReturnError:
                chunk = b""
            except RAGGED_EOFS as e:
                self._eof(f"ragged: {type(e).__name__}: {e}")
                return False
            if not chunk:
                self._eof("clean")
                return False
            self.received += len(chunk)
            self.buf += chunk
            return True
        return False

    def _eof(self, kind: str) -> None:
        self.eof_at = time.monotonic()
        self.eof_kind = kind

    def _deadline(self, timeout: Optional[float]) -> float:
        return time.monotonic() + (timeout or self.timeout)

    def _take_line(self) -> bytes:
        i = self.buf.index(b"\n") + 1
        out = bytes(self.buf[:i])
        del self.buf[:i]
        self.lines.append((time.monotonic(), out))
        return out

    def line(self, timeout: Optional[float] = None) -> bytes:
        """The next line (CRLF included); EOFError when the server closes first."""
        deadline = self._deadline(timeout)
        while b"\n" not in self.buf:
            if not self.fill(deadline):
                raise EOFError(f"closed ({self.eof_kind}) before a full line (buffer {bytes(self.buf[:300])!r})")
        return self._take_line()

    read_line = line

    def lines_until(self, pred: Callable[[bytes], bool]) -> list[bytes]:
        """Lines up to and including the first for which pred(line) holds."""
        got = []
        while True:
            ln = self.line()
            got.append(ln)
            if pred(ln):
                return got

    def tagged(self, tag: Tag) -> list[bytes]:
        """IMAP: lines up to the tagged reply for `tag`."""
        prefix = (tag.encode() if isinstance(tag, str) else tag) + b" "
        return self.lines_until(lambda ln: ln.startswith(prefix))

    def pop3_multi(self) -> list[bytes]:
        """POP3: a status line, and when it is +OK, the lines up to the lone `.`."""
        first = self.line()
        if not first.startswith(b"+OK"):
            return [first]
        return [first] + self.lines_until(lambda ln: ln == b".\r\n")

    def smtp_reply(self) -> list[bytes]:
        """SMTP: the lines of one (possibly multi-line) reply."""
        return self.lines_until(lambda ln: len(ln) < 4 or ln[3:4] != b"-")

    def smtp(self, text: str) -> list[bytes]:
        """Send an SMTP command; its reply lines."""
        self.cmd(text.encode())
        return self.smtp_reply()

    def imap(self, tag: str, text: str) -> list[bytes]:
        """Send an IMAP command; its lines through the tagged reply, which must be OK."""
        self.send(f"{tag} {text}\r\n".encode())
        lines = self.tagged(tag)
        if not lines[-1].startswith(f"{tag} OK".encode()):
            raise AssertionError(f"{text.split()[0]} failed: {lines[-1]!r}")
        return lines

    def imap_login(self, user: str, password: str) -> None:
        self.imap("l1", f'LOGIN "{user}" "{password}"')

    def imap_idle(self) -> None:
        """SELECT INBOX and enter IDLE (what a phone does all day)."""
        self.imap("s1", "SELECT INBOX")
        self.send(b"i1 IDLE\r\n")
        line = self.line()
        if not line.startswith(b"+"):
            raise AssertionError(f"IDLE not accepted: {line!r}")

    def read_exact(self, n: int, timeout: Optional[float] = None, chunk_cb: Optional[Callable[[int], None]] = None) -> bytes:
        """n bytes; chunk_cb(bytes_so_far) after every read lets a caller act mid-transfer."""
        deadline = self._deadline(timeout)
        out = bytearray()
        while len(out) < n:
            if not self.buf and not self.fill(deadline):
                raise EOFError(f"closed ({self.eof_kind}) after {len(out)} of {n} bytes")
            take = min(n - len(out), len(self.buf))
            out += self.buf[:take]
            del self.buf[:take]
            if chunk_cb is not None:
                chunk_cb(len(out))
        return bytes(out)

    def read_to_eof(self, timeout: Optional[float] = None) -> bytes:
        """Everything until the server closes (TimeoutError if it does not close in time)."""
        deadline = self._deadline(timeout)
        while self.fill(deadline):
            pass
        rest = bytes(self.buf)
        self.buf.clear()
        return rest

    def lines_to_eof(self, timeout: Optional[float] = None) -> list[bytes]:
        """Every line until the peer closes, each recorded in `lines` as it arrives; an
        unterminated tail is returned as a last item."""
        deadline = self._deadline(timeout)
        got = []
        while True:
            while b"\n" in self.buf:
                got.append(self._take_line())
            if not self.fill(deadline):
                if self.buf:
                    got.append(bytes(self.buf))
                    self.buf.clear()
                return got

    def read_paced_to_eof(self, rate: float, timeout: float) -> bytes:
        """Everything (buffered and new) until the peer closes, read at about `rate` bytes/s:
        a slow client on a thin line. Returns the raw bytes; lines are not split."""
        deadline = time.monotonic() + timeout
        out = bytearray(self.buf)
        self.buf.clear()
        started = time.monotonic()
        while self.fill(deadline):
            out += self.buf
            self.buf.clear()
            # pacing, not waiting for an event: the client drains no faster than `rate`
            ahead = len(out) / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(min(ahead, max(0.0, deadline - time.monotonic())))
        return bytes(out)

    def at_eof(self) -> bool:
        """Without blocking: has the server closed? (Whatever it sent is kept in `buf`.)"""
        if self.eof_kind is not None:
            return True
        self.sock.setblocking(False)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    self._eof("clean")
                    break
                self.received += len(chunk)
                self.buf += chunk
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            pass
        except ssl.SSLZeroReturnError:
            self._eof("clean")
        except RAGGED_EOFS as e:
            self._eof(f"ragged: {type(e).__name__}: {e}")
        finally:
            self.sock.settimeout(self.timeout)
        return self.eof_kind is not None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "LineClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_line(sock: socket.socket, timeout: float = DEFAULT_TIMEOUT, limit: int = 65536) -> bytes:
    """One line (through LF) from a raw socket, never reading past it; TimeoutError after
    `timeout`, EOFError on close."""
    c = LineClient(sock, timeout, recv_size=1)
    deadline = c._deadline(None)
    while not c.buf.endswith(b"\n"):
        if not c.fill(deadline):
            raise EOFError(f"connection closed after {bytes(c.buf)!r}")
        if len(c.buf) > limit:
            raise ValueError(f"line longer than {limit} bytes")
    return bytes(c.buf)


def read_until_eof(sock: socket.socket, timeout: float = DEFAULT_TIMEOUT, limit: int = 1 << 20) -> bytes:
    """Everything a raw socket sends until the peer closes. TimeoutError if it does not close
    in `timeout` (the "hang" case a test wants to catch). A TLS close without close_notify or
    a TCP reset also count as closed: both end the session from the client's view."""
    c = LineClient(sock, timeout)
    deadline = c._deadline(None)
    while c.fill(deadline):
        if len(c.buf) > limit:
            raise ValueError(f"more than {limit} bytes before close")
    return bytes(c.buf)
