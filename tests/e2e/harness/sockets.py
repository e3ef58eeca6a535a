"""The one place the suite opens a client TCP connection, so every client helper can start
from a chosen source address and can write a PROXY header before its first byte.

Linux routes all of 127.0.0.0/8 to `lo`: a socket bound to 127.0.0.2 reaches a listener on
127.0.0.1 and postern sees 127.0.0.2 as the peer. Tests play distinct clients with
127.0.0.2, 127.0.0.3, ... (`source="127.0.0.3"` or `source=("127.0.0.3", 0)`).
"""

from __future__ import annotations

import socket
import ssl
from typing import Optional, Union

DEFAULT_TIMEOUT = 15.0

# a source address: "127.0.0.2" (any port) or ("127.0.0.2", port); None = the kernel's choice
Source = Union[None, str, tuple[str, int]]


def source_address(source: Source) -> Optional[tuple[str, int]]:
    if source is None or isinstance(source, tuple):
        return source
    return (source, 0)


def connect(
    addr: tuple[str, int],
    timeout: float = DEFAULT_TIMEOUT,
    source: Source = None,
    proxy: Optional[bytes] = None,
    rcvbuf: Optional[int] = None,
) -> socket.socket:
    """A connected TCP socket to addr, bound to `source` first; `proxy` (raw bytes, e.g.
    `proxy_v2(...)`) is sent at once, before anything else. `rcvbuf` sets SO_RCVBUF before
    the connect (a small window keeps most of a big transfer upstream of the client)."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        src = source_address(source)
        if src is not None:
            sock.bind(src)
        sock.settimeout(timeout)
        sock.connect(addr)
        if proxy:
            sock.sendall(proxy)
        return sock
    except BaseException:
        sock.close()
        raise


def connect_nonblocking(addr: tuple[str, int], source: Source = None) -> socket.socket:
    """A non-blocking TCP socket bound to `source` whose connect to addr is under way (the
    flood generator waits for it with `selectors`)."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        src = source_address(source)
        if src is not None:
            sock.bind(src)
        sock.setblocking(False)
        sock.connect_ex(addr)
        return sock
    except BaseException:
        sock.close()
        raise


def tls_connect(
    addr: tuple[str, int],
    ctx: ssl.SSLContext,
    server_hostname: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT,
    source: Source = None,
    proxy: Optional[bytes] = None,
    rcvbuf: Optional[int] = None,
    suppress_ragged_eofs: bool = True,
) -> ssl.SSLSocket:
    """A TLS socket to addr, handshake done. server_hostname defaults to addr's host (sent as
    SNI when it is a name, not an IP). With suppress_ragged_eofs=False a close without
    close_notify raises SSLEOFError instead of reading as b"" (LineClient uses that)."""
    raw = connect(addr, timeout, source, proxy, rcvbuf)
    try:
        return ctx.wrap_socket(raw, server_hostname=server_hostname or addr[0], suppress_ragged_eofs=suppress_ragged_eofs)
    except BaseException:
        raw.close()
        raise


def local_of(sock: socket.socket) -> str:
    """'ip:port' of the client side, as postern logs it in `peer`."""
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"
