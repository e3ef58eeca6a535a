"""A resolver the tests control: lines for one test name in /etc/hosts (glibc reads the file
on every lookup), restored exactly as found when the context ends. Needs root (CI runs the
suite as root). The name is under `.test` (RFC 2606), so nothing real is shadowed."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

HOSTS = Path("/etc/hosts")
MARK = "# postern e2e"


class HostsName:
    """`set(ips)` maps the name to exactly those addresses; `set([])` removes it."""

    def __init__(self, name: str, original: str) -> None:
        self.name = name
        self._original = original

    def set(self, ips: list[str]) -> None:
        lines = "".join(f"{ip} {self.name} {MARK}\n" for ip in ips)
        base = self._original if self._original.endswith("\n") or not self._original else self._original + "\n"
        # written in place: in a container /etc/hosts is often a bind mount (no rename)
        HOSTS.write_text(base + lines)


@contextmanager
def hosts_name(name: str) -> Iterator[HostsName]:
    original = HOSTS.read_text()
    try:
        yield HostsName(name, original)
    finally:
        HOSTS.write_text(original)
