"""Client-side helpers: stdlib mail clients over TLS, a memory-BIO TLS client, curl.

Every client here takes `source=` (a loopback address such as "127.0.0.2", to play a distinct
client) and `proxy=` (raw PROXY header bytes written before the first byte, see proxy.py);
all of them connect through sockets.connect. The line client is in line_client.py.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import socket
import ssl
import subprocess
import time
from typing import Optional

from .sockets import DEFAULT_TIMEOUT, Source, connect


class _IMAP4_SSL(imaplib.IMAP4_SSL):
    """IMAP4_SSL that connects through sockets.connect (source address, PROXY header)."""

    def __init__(self, host: str, port: int, source: Source = None, proxy: Optional[bytes] = None, **kw) -> None:
        self._source, self._proxy = source, proxy
        super().__init__(host, port, **kw)

    def _create_socket(self, timeout):
        sock = connect((self.host, self.port), timeout, self._source, self._proxy)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


class _POP3_SSL(poplib.POP3_SSL):
    def __init__(self, host: str, port: int, source: Source = None, proxy: Optional[bytes] = None, **kw) -> None:
        self._source, self._proxy = source, proxy
        super().__init__(host, port, **kw)

    def _create_socket(self, timeout):
        sock = connect((self.host, self.port), timeout, self._source, self._proxy)
        return self.context.wrap_socket(sock, server_hostname=self.host)


class _SMTP_SSL(smtplib.SMTP_SSL):
    def __init__(self, host: str, port: int, source: Source = None, proxy: Optional[bytes] = None, **kw) -> None:
        self._source, self._proxy = source, proxy
        super().__init__(host, port, **kw)

    def _get_socket(self, host, port, timeout):
        sock = connect((host, port), timeout, self._source, self._proxy)
        return self.context.wrap_socket(sock, server_hostname=self._host)


def imaps(addr: tuple[str, int], ctx: ssl.SSLContext, timeout: float = DEFAULT_TIMEOUT, source: Source = None, proxy: Optional[bytes] = None) -> imaplib.IMAP4_SSL:
    """An IMAP4_SSL client connected to addr (the certificate is checked against addr's host)."""
    return _IMAP4_SSL(addr[0], addr[1], source=source, proxy=proxy, ssl_context=ctx, timeout=timeout)


def pop3s(addr: tuple[str, int], ctx: ssl.SSLContext, timeout: float = DEFAULT_TIMEOUT, source: Source = None, proxy: Optional[bytes] = None) -> poplib.POP3_SSL:
    return _POP3_SSL(addr[0], addr[1], source=source, proxy=proxy, context=ctx, timeout=timeout)


def smtps(addr: tuple[str, int], ctx: ssl.SSLContext, timeout: float = DEFAULT_TIMEOUT, source: Source = None, proxy: Optional[bytes] = None) -> smtplib.SMTP_SSL:
    return _SMTP_SSL(addr[0], addr[1], source=source, proxy=proxy, context=ctx, timeout=timeout)


def curl(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run curl with `args` (text output; -sS added; --max-time bounds the transfer)."""
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(int(timeout)), *args],
        capture_output=True,
        text=True,
        timeout=timeout + 10,
        stdin=subprocess.DEVNULL,
    )


class MemoryTlsClient:
    """A TLS client on ssl.MemoryBIO, so it can send close_notify (and FIN its write side)
    and then keep reading: the half-close that SSLSocket cannot express."""

    def __init__(
        self,
        addr: tuple[str, int],
        ctx: ssl.SSLContext,
        server_hostname: str,
        timeout: float = DEFAULT_TIMEOUT,
        source: Source = None,
        proxy: Optional[bytes] = None,
    ) -> None:
        self.sock = connect(addr, timeout, source, proxy)
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
