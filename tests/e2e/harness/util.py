"""Small building blocks: free ports, deadline polling, temp roots.

Every wait in the suite goes through `wait_for`: it polls a condition until a deadline and
fails with a message that says what was awaited, so a broken gateway shows up as a clear
failure in bounded time, never as a hang.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, TypeVar

T = TypeVar("T")

LOOPBACK = "127.0.0.1"


class WaitTimeout(AssertionError):
    """A polled condition did not become true before its deadline."""


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on `host` that is free now, chosen OUTSIDE the kernel's ephemeral range.

    A port from the ephemeral range (what binding :0 gives) can be taken as the local port of
    any outgoing connection on the machine, e.g. by a health probe while a test has Dovecot
    stopped, and the restart then fails with "Address already in use". Ports below (or above)
    the ephemeral range are only ever taken by explicit binds. Never returns a port twice in
    one test run. Nothing reserves the port: use it right away.
    """
    lo, hi = _ephemeral_range()
    if lo - 10000 >= 2000:
        choices = (10000, lo - 1)
    elif 65535 - hi >= 2000:
        choices = (hi + 1, 65535)
    else:
        choices = (1024, 65535)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(2000):
        port = random.randint(*choices)
        if port in _handed_out:
            continue
        with socket.socket(family) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port found on {host} in {choices} after 2000 tries")


def closed_port(host: str = LOOPBACK) -> int:
    """A port where nothing listens, for "backend unreachable" cases."""
    return free_port(host)


def wait_for(
    cond: Callable[[], Optional[T]],
    timeout: float,
    what: str,
    interval: float = 0.02,
    on_timeout: Optional[Callable[[], str]] = None,
) -> T:
    """Poll `cond` until it returns something truthy; return that value.

    Raises WaitTimeout naming `what` (plus `on_timeout()`'s text, e.g. a log tail) when the
    deadline passes. Exceptions from `cond` propagate: a condition that cannot be evaluated is
    a bug, not a "not yet".
    """
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = on_timeout() if on_timeout else ""
            raise WaitTimeout(f"timed out after {timeout:.1f}s waiting for {what}" + (f"\n{extra}" if extra else ""))
        time.sleep(interval)


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connect to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def make_test_root(prefix: str = "postern-e2e-") -> Path:
    """A fresh temp directory with mode 0755.

    Dovecot's auth process runs as user `dovecot` and must traverse the tree to read the
    passwd-file; a 0700 mkdtemp root makes every login fail with "Temporary authentication
    failure".
    """
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    return root


def remove_tree(path: Path) -> None:
    """Remove a test root unless POSTERN_E2E_KEEP is set (then say where it is)."""
    if os.environ.get("POSTERN_E2E_KEEP"):
        print(f"[e2e] keeping {path}")
        return
    shutil.rmtree(path, ignore_errors=True)


def tail(text: str, lines: int = 60) -> str:
    """The last `lines` lines of `text`."""
    return "\n".join(text.splitlines()[-lines:])
