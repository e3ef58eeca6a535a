"""Small building blocks: free ports, deadline polling, temp roots.

Every wait in the suite goes through `wait_for`: it polls a condition until a deadline and
fails with a message that says what was awaited, so a broken gateway shows up as a clear
failure in bounded time, never as a hang.
"""

from __future__ import annotations

import os
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


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on `host` that was free a moment ago (bind to :0, read it, close).

    Nothing keeps it reserved, so use it right away. The kernel may hand the same port out
    twice in a row, so a port is never returned twice within one test run.
    """
    for _ in range(1000):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no unused free port found in 1000 tries")


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
    failure" (test-tools.md §5.1 gotcha).
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
