"""Helpers for tests/e2e/test_starttls.py: a raw line client that can switch to TLS on the same
socket, STARTTLS openers for the three protocols, and `openssl s_client` runs.

Everything here talks to 127.0.0.1 only and every read has a deadline.
"""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

DEFAULT_TIMEOUT = 10.0

# the go-ahead line each protocol's STARTTLS command gets from postern
GO_AHEAD = {
    "imap": b"OK Begin TLS negotiation now",
    "pop3": b"+OK Begin TLS negotiation",
    "smtp": b"220 2.0.0 Ready to start TLS",
}


class LineClient:
    """A line-oriented client on one socket, plain first and TLS after `start_tls()`.

    It keeps its own read buffer; `start_tls()` refuses to switch while that buffer holds
    bytes, because those bytes would be plaintext the server sent after its go-ahead (rule T2
    seen from the client side: a test must notice them, not silently drop them).
    """

    # set by a test module to `lambda: len(postern.records)`: each client then remembers how
    # many log records existed before it connected, so its `session ended` line is found
    # among later records only (client ports are reused within a run)
    log_mark_source: Optional[Callable[[], int]] = None

    def __init__(self, addr: tuple[str, int], timeout: float = DEFAULT_TIMEOUT) -> None:
        self.log_mark = LineClient.log_mark_source() if LineClient.log_mark_source else 0
        self.addr = addr
        self.timeout = timeout
        self.sock: socket.socket = socket.create_connection(addr, timeout=timeout)
        self.buf = bytearray()
        self.tls = False
        host, port = self.sock.getsockname()[:2]
        # the `peer` field postern logs for this connection (kept: it outlives the socket)
        self.peer_field = f"{host}:{port}"

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"nothing more from {self.addr} within {self.timeout}s (buffer {bytes(self.buf[:300])!r})")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
            chunk = b""
        except socket.timeout:
            return self._fill(deadline)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def line(self) -> bytes:
        """The next line (CRLF included); EOFError when the server closes first."""
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self.buf:
            if not self._fill(deadline):
                raise EOFError(f"closed before a full line (buffer {bytes(self.buf)!r})")
        i = self.buf.index(b"\n") + 1
        out = bytes(self.buf[:i])
        del self.buf[:i]
        return out

    def lines_until(self, pred) -> list[bytes]:
        """Lines up to and including the first for which pred(line) holds."""
        got = []
        while True:
            ln = self.line()
            got.append(ln)
            if pred(ln):
                return got

    def tagged(self, tag: bytes) -> list[bytes]:
        """IMAP: lines up to the tagged reply for `tag`."""
        return self.lines_until(lambda ln: ln.startswith(tag + b" "))

    def pop3_multi(self) -> list[bytes]:
        """POP3: a status line, and when it is +OK, the lines up to the lone `.`."""
        first = self.line()
        if not first.startswith(b"+OK"):
            return [first]
        return [first] + self.lines_until(lambda ln: ln == b".\r\n")

    def smtp_reply(self) -> list[bytes]:
        """SMTP: the lines of one (possibly multi-line) reply."""
        return self.lines_until(lambda ln: len(ln) < 4 or ln[3:4] != b"-")

    def cmd(self, data: bytes) -> None:
        self.send(data if data.endswith(b"\n") else data + b"\r\n")

    def read_to_eof(self, timeout: Optional[float] = None) -> bytes:
        """Everything until the server closes (TimeoutError if it does not close in time)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while self._fill(deadline):
            pass
        rest = bytes(self.buf)
        self.buf.clear()
        return rest

    def start_tls(self, ctx: ssl.SSLContext, server_hostname: str = "localhost") -> None:
        if self.buf:
            raise AssertionError(f"plaintext bytes after the go-ahead, before the handshake: {bytes(self.buf)!r}")
        self.sock.settimeout(self.timeout)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        self.tls = True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "LineClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_starttls(proto: str, addr: tuple[str, int], ctx: ssl.SSLContext, pre: bytes = b"") -> LineClient:
    """Connect to a STARTTLS listener, read postern's greeting, send `pre` (complete plaintext
    commands, their replies are read and dropped), upgrade, and return the TLS client."""
    c = LineClient(addr)
    try:
        greeting = c.line()
        assert greeting.startswith({"imap": b"* OK", "pop3": b"+OK", "smtp": b"220 "}[proto]), greeting
        if proto == "smtp":
            c.cmd(b"EHLO client.test")
            c.smtp_reply()
        for line in pre.splitlines():
            c.cmd(line)
            if proto == "imap":
                c.tagged(line.split()[0])
            elif proto == "pop3":
                c.line()
            else:
                c.smtp_reply()
        c.cmd({"imap": b"s0 STARTTLS", "pop3": b"STLS", "smtp": b"STARTTLS"}[proto])
        reply = c.line()
        assert GO_AHEAD[proto] in reply, reply
        c.start_tls(ctx)
        return c
    except BaseException:
        c.close()
        raise


def open_implicit(addr: tuple[str, int], ctx: ssl.SSLContext, proto: str) -> LineClient:
    """Connect to an implicit-TLS listener and read the backend's greeting (returned in `greeting`)."""
    c = LineClient(addr)
    try:
        c.start_tls(ctx)
        c.greeting = c.smtp_reply() if proto == "smtp" else [c.line()]  # type: ignore[attr-defined]
        return c
    except BaseException:
        c.close()
        raise


def plain_b64(user: str, password: str, authzid: str = "") -> bytes:
    """The SASL PLAIN initial response, base64."""
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode())


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def s_client(
    addr: tuple[str, int],
    cafile: Path,
    stdin: bytes,
    *,
    starttls: Optional[str] = None,
    alpn: Optional[str] = None,
    timeout: float = 20.0,
) -> subprocess.CompletedProcess:
    """`openssl s_client` with `stdin` piped in (LF turned into CRLF by -crlf); -ign_eof keeps it
    reading until the server closes, so `stdin` should end with the protocol's quit command."""
    cmd = [
        "openssl", "s_client", "-connect", f"{addr[0]}:{addr[1]}", "-CAfile", str(cafile),
        "-servername", "localhost", "-verify_return_error", "-crlf", "-ign_eof",
    ]
    if starttls:
        cmd += ["-starttls", starttls]
    if alpn:
        cmd += ["-alpn", alpn]
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
