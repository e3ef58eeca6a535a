"""A stand-in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import socket
import time
from pathlib import Path


class NotifySocket:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET; keeps every datagram."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[tuple[float, dict[str, str], str]] = []  # (monotonic, fields, raw)

    def recv(self, timeout: float) -> tuple[float, dict[str, str], str]:
        """The next datagram; TimeoutError after `timeout`."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError(f"no datagram on {self.path} within {timeout}s (so far: {[r for _, _, r in self.received]})") from None
        at = time.monotonic()
        raw = data.decode("utf-8", errors="replace")
        fields = {}
        for line in raw.split("\n"):
            if "=" in line:
                k, _, v = line.partition("=")
                fields[k] = v
        item = (at, fields, raw)
        self.received.append(item)
        return item

    def wait_for(self, key: str, value: str, timeout: float) -> tuple[float, dict[str, str], str]:
        """Receive until a datagram with key=value arrives (earlier ones are kept)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {key}={value} on {self.path} within {timeout}s (got {[r for _, _, r in self.received]})")
            item = self.recv(remaining)
            if item[1].get(key) == value:
                return item

    def close(self) -> None:
        self.sock.close()
        try:
            self.path.unlink()
        except OSError:
            pass
