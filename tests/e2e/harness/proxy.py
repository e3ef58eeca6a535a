"""HAProxy PROXY protocol headers (v1 text, v2 binary): built for clients that play a load
balancer in front of postern, parsed by the fake backend that checks what postern forwards.

Every client helper takes `proxy=proxy_v1(...)` / `proxy=proxy_v2(...)` and writes those bytes
right after the TCP connect, before its first byte of TLS or protocol (harness/sockets.py).
The header is raw bytes on purpose: tests of malformed headers pass their own.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Optional

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

Endpoint = tuple[str, int]


def proxy_v1(src: Endpoint, dst: Endpoint) -> bytes:
    """`PROXY TCP4|TCP6 <src ip> <dst ip> <src port> <dst port>\\r\\n`."""
    fam = "TCP6" if ipaddress.ip_address(src[0]).version == 6 else "TCP4"
    return f"PROXY {fam} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()


def proxy_v1_unknown() -> bytes:
    return b"PROXY UNKNOWN\r\n"


def proxy_v2(src: Optional[Endpoint], dst: Optional[Endpoint] = None, tlvs: bytes = b"") -> bytes:
    """A v2 header: command PROXY over TCP with src/dst, or LOCAL when src is None (what a
    health checker sends). `tlvs` is appended raw to the address block."""
    if src is None:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", len(tlvs)) + tlvs
    assert dst is not None, "a PROXY command needs both endpoints"
    a, b = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    assert a.version == b.version, f"mixed address families: {src} {dst}"
    fam = 0x11 if a.version == 4 else 0x21
    body = a.packed + b.packed + struct.pack("!HH", src[1], dst[1]) + tlvs
    return V2_SIGNATURE + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header: version 1 or 2; command "PROXY", "LOCAL" or "UNKNOWN"; the endpoints
    when it carried addresses; `raw` is the exact bytes."""

    version: int
    command: str
    src: Optional[Endpoint]
    dst: Optional[Endpoint]
    raw: bytes


class ProxyParseError(ValueError):
    pass


def parse_proxy(data: bytes) -> Optional[tuple[ProxyHeader, int]]:
    """(header, bytes consumed) when `data` starts with a complete header; None when more
    bytes are needed. ProxyParseError when it cannot be one."""
    if data.startswith(V2_SIGNATURE[: len(data)]) and len(data) < 16:
        return None
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if b"PROXY "[: len(data)] == data[:6] and b"\n" not in data:
        if len(data) > 107:
            raise ProxyParseError(f"v1 header longer than 107 bytes: {data[:120]!r}")
        return None
    if data.startswith(b"PROXY "):
        return _parse_v1(data)
    raise ProxyParseError(f"not a PROXY header: {data[:40]!r}")


def _parse_v1(data: bytes) -> tuple[ProxyHeader, int]:
    end = data.index(b"\n") + 1
    line = data[:end]
    if not line.endswith(b"\r\n"):
        raise ProxyParseError(f"v1 header without CRLF: {line!r}")
    parts = line[:-2].decode("ascii", "replace").split(" ")
    if parts[1:2] == ["UNKNOWN"]:
        return ProxyHeader(1, "UNKNOWN", None, None, line), end
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyParseError(f"bad v1 header: {line!r}")
    return ProxyHeader(1, "PROXY", (parts[2], int(parts[4])), (parts[3], int(parts[5])), line), end


def _parse_v2(data: bytes) -> Optional[tuple[ProxyHeader, int]]:
    ver_cmd, fam = data[12], data[13]
    (length,) = struct.unpack("!H", data[14:16])
    end = 16 + length
    if len(data) < end:
        return None
    if ver_cmd >> 4 != 2:
        raise ProxyParseError(f"v2 header with version {ver_cmd >> 4}")
    raw = data[:end]
    if ver_cmd & 0x0F == 0:
        return ProxyHeader(2, "LOCAL", None, None, raw), end
    body = data[16:end]
    if fam == 0x11 and length >= 12:
        ips, ports = (socket.inet_ntop(socket.AF_INET, body[0:4]), socket.inet_ntop(socket.AF_INET, body[4:8])), body[8:12]
    elif fam == 0x21 and length >= 36:
        ips, ports = (socket.inet_ntop(socket.AF_INET6, body[0:16]), socket.inet_ntop(socket.AF_INET6, body[16:32])), body[32:36]
    else:
        return ProxyHeader(2, "PROXY", None, None, raw), end
    sport, dport = struct.unpack("!HH", ports)
    return ProxyHeader(2, "PROXY", (ips[0], sport), (ips[1], dport), raw), end
