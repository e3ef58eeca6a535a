"""Client-side helpers: stdlib mail clients over TLS, raw TLS sockets, curl."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import socket
import ssl
import subprocess
import time
from typing import Optional

DEFAULT_TIMEOUT = 15.0


Source = Optional[tuple[str, int]]


class _IMAP4_SSL(imaplib.IMAP4_SSL):
    """IMAP4_SSL that can connect from a chosen local address (e.g. 127.0.0.2)."""

    def __init__(self, host: str, port: int, source: Source = None, **kw) -> None:
        self._source = source
        super().__init__(host, port, **kw)

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout, source_address=self._source)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


class _POP3_SSL(poplib.POP3_SSL):
    def __init__(self, host: str, port: int, source: Source = None, **kw) -> None:
        self._source = source
        super().__init__(host, port, **kw)

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout, source_address=self._source)
        return self.context.wrap_socket(sock, server_hostname=self.host)


def imaps(addr: tuple[str, int], ctx: ssl.SSLContext, timeout: float = DEFAULT_TIMEOUT, source: Source = None) -> imaplib.IMAP4_SSL:
    """An IMAP4_SSL client connected to addr (the certificate is checked against addr's host).
    `source=("127.0.0.2", 0)` picks the client's local address."""
    return _IMAP4_SSL(addr[0], addr[1], source=source, ssl_context=ctx, timeout=timeout)


def pop3s(addr: tuple[str, int], ctx: ssl.SSLContext, timeout: float = DEFAULT_TIMEOUT, source: Source = None) -> poplib.POP3_SSL:
    return _POP3_SSL(addr[0], addr[1], source=source, context=ctx, timeout=timeout)


def smtps(addr: tuple[str, int], ctx: ssl.SSLContext, timeout: float = DEFAULT_TIMEOUT, source: Source = None) -> smtplib.SMTP_SSL:
    return smtplib.SMTP_SSL(addr[0], addr[1], context=ctx, timeout=timeout, source_address=source)


def tls_connect(
    addr: tuple[str, int],
    ctx: ssl.SSLContext,
    server_hostname: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT,
    source: Source = None,
) -> ssl.SSLSocket:
    """A TLS socket to addr, handshake done. server_hostname defaults to addr's host (sent as
    SNI when it is a name, not an IP)."""
    raw = socket.create_connection(addr, timeout=timeout, source_address=source)
    try:
        return ctx.wrap_socket(raw, server_hostname=server_hostname or addr[0])
    except BaseException:
        raw.close()
        raise


def read_line(sock: socket.socket, timeout: float = DEFAULT_TIMEOUT, limit: int = 65536) -> bytes:
    """One line (through LF) from sock; raises TimeoutError after `timeout`, EOFError on close."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while not buf.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete line within {timeout}s (got {bytes(buf)!r})")
        sock.settimeout(remaining)
        ch = sock.recv(1)
        if not ch:
            raise EOFError(f"connection closed after {bytes(buf)!r}")
        buf += ch
        if len(buf) > limit:
            raise ValueError(f"line longer than {limit} bytes")
    return bytes(buf)


def read_until_eof(sock: socket.socket, timeout: float = DEFAULT_TIMEOUT, limit: int = 1 << 20) -> bytes:
    """Everything sock sends until the peer closes. Raises TimeoutError if it does not close in
    `timeout` (the "hang" case a test wants to catch). A TLS close without close_notify or a
    TCP reset also count as closed: both end the session from the client's view."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"peer did not close within {timeout}s (got {bytes(buf[:200])!r})")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except (ssl.SSLEOFError, ConnectionResetError, ssl.SSLZeroReturnError):
            return bytes(buf)
        except socket.timeout:
            continue
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise ValueError(f"more than {limit} bytes before close")


def curl(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run curl with `args` (text output; -sS added; --max-time bounds the transfer)."""
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(int(timeout)), *args],
        capture_output=True,
        text=True,
        timeout=timeout + 10,
        stdin=subprocess.DEVNULL,
    )


class CountingClient:
    """A line-oriented client over a connected (TLS) socket that counts every plaintext byte
    it sends and receives, so a test can compare with postern's byte counters exactly."""

    def __init__(self, sock: socket.socket, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.sock = sock
        self.timeout = timeout
        self.sent = 0
        self.received = 0
        self._buf = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"nothing more from the server within {self.timeout}s (buffer {bytes(self._buf[:200])!r})")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
            chunk = b""
        if not chunk:
            return False
        self.received += len(chunk)
        self._buf += chunk
        return True

    def read_line(self) -> bytes:
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._buf:
            if not self._fill(deadline):
                raise EOFError(f"closed before a full line (buffer {bytes(self._buf)!r})")
        i = self._buf.index(b"\n") + 1
        line = bytes(self._buf[:i])
        del self._buf[:i]
        return line

    def read_until_prefix(self, prefix: bytes) -> list[bytes]:
        """Lines up to and including the first one starting with `prefix` (e.g. a tag)."""
        lines = []
        while True:
            line = self.read_line()
            lines.append(line)
            if line.startswith(prefix):
                return lines

    def read_to_eof(self) -> bytes:
        deadline = time.monotonic() + self.timeout
        while self._fill(deadline):
            pass
        rest = bytes(self._buf)
        self._buf.clear()
        return rest

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class MemoryTlsClient:
    """A TLS client on ssl.MemoryBIO, so it can send close_notify (and FIN its write side)
    and then keep reading: the half-close that SSLSocket cannot express."""

    def __init__(self, addr: tuple[str, int], ctx: ssl.SSLContext, server_hostname: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.timeout = timeout
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self._in, self._out, server_hostname=server_hostname)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.obj.do_handshake()
                self._flush()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if not self._feed(deadline):
                    raise EOFError("closed during the TLS handshake")

    def _flush(self) -> None:
        data = self._out.read()
        if data:
            self.sock.sendall(data)

    def _feed(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"nothing from the server within {self.timeout}s")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self._in.write_eof()
            return False
        self._in.write(data)
        return True

    def send(self, data: bytes) -> None:
        self.obj.write(data)
        self._flush()

    def close_write(self) -> None:
        """Send close_notify, then shut down the TCP write side (FIN). Reading goes on."""
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        self._flush()
        self.sock.shutdown(socket.SHUT_WR)

    def read_to_end(self) -> tuple[bytes, str]:
        """Application data until the server ends the session; returns (data, how) with how =
        "close_notify" (clean TLS close), "eof" (TCP close without close_notify) or "reset"."""
        deadline = time.monotonic() + self.timeout
        buf = bytearray()
        while True:
            try:
                chunk = self.obj.read(65536)
                if not chunk:
                    return bytes(buf), "close_notify"
                buf += chunk
                continue
            except ssl.SSLZeroReturnError:
                return bytes(buf), "close_notify"
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLEOFError:
                return bytes(buf), "eof"
            try:
                if not self._feed(deadline):
                    continue  # let obj.read() report how the stream ended
            except ConnectionResetError:
                return bytes(buf), "reset"

    def read_line(self) -> bytes:
        deadline = time.monotonic() + self.timeout
        buf = bytearray()
        while not buf.endswith(b"\n"):
            try:
                buf += self.obj.read(1)
                continue
            except ssl.SSLWantReadError:
                pass
            if not self._feed(deadline):
                raise EOFError(f"closed after {bytes(buf)!r}")
        return bytes(buf)

    def close(self) -> None:
        self.sock.close()
