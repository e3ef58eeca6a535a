"""Session shapes many tests share: one short IMAP session, a session held open, N sessions
with their failures collected, a connect loop, and a watcher that reads an idle session to
its end in a thread.
"""

from __future__ import annotations

import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Generic, Optional, TypeVar

from .line_client import LineClient
from .sockets import DEFAULT_TIMEOUT, Source

T = TypeVar("T")


@dataclass
class SessionRun(Generic[T]):
    """What run_sessions saw: `results[i]` is what session i returned (None if it failed);
    `failures` has one "session i: <error>" text per failed session."""

    results: list[Optional[T]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> list[T]:
        """Results of the sessions that did not fail, in order."""
        return [r for r, failed in zip(self.results, self._failed) if not failed]

    _failed: list[bool] = field(default_factory=list, repr=False)

    def check(self, show: int = 10) -> "SessionRun[T]":
        """Fail (naming the first `show` failures) unless every session succeeded."""
        assert not self.failures, f"{len(self.failures)} of {len(self.results)} sessions failed: {self.failures[:show]}"
        return self


def run_sessions(n: int, one: Callable[[int], T], parallel: int = 1) -> SessionRun[T]:
    """Run `one(i)` for i in 0..n-1 (one after another, or on `parallel` threads) and collect
    every failure instead of stopping at the first: a test then asserts on the whole run
    ("no session failed", "every session used server B"). Any exception counts as that
    session's failure; `one` signals a wrong answer by raising AssertionError."""

    def attempt(i: int) -> tuple[Optional[T], Optional[str]]:
        try:
            return one(i), None
        except Exception as e:  # noqa: BLE001 (each failure is reported by the caller's check)
            return None, f"session {i}: {e!r}"

    if parallel > 1:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            outcomes = list(pool.map(attempt, range(n)))
    else:
        outcomes = [attempt(i) for i in range(n)]
    run: SessionRun[T] = SessionRun()
    for result, failure in outcomes:
        run.results.append(result)
        run._failed.append(failure is not None)
        if failure is not None:
            run.failures.append(failure)
    return run


def imap_hello(addr: tuple[str, int], ctx: ssl.SSLContext, source: Source = None) -> str:
    """One short IMAP session: greeting, LOGOUT, EOF. Returns the client's 'ip:port'.

    Raises AssertionError on anything but a `* OK` greeting and a tagged OK (the
    "client-visible failure" the pool tests count)."""
    with LineClient.tls(addr, ctx, server_hostname="mail.test", source=source) as c:
        greeting = c.line()
        assert greeting.startswith(b"* OK"), f"greeting {greeting!r}"
        c.cmd(b"z1 LOGOUT")
        lines = c.tagged(b"z1")
        assert lines[-1].startswith(b"z1 OK"), f"LOGOUT answered {lines!r}"
        return c.peer


class Held(LineClient):
    """An IMAP session kept open (greeting read) until close(), which says LOGOUT first."""

    def __init__(self, addr: tuple[str, int], ctx: ssl.SSLContext, source: Source = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        from .sockets import tls_connect

        super().__init__(tls_connect(addr, ctx, "mail.test", timeout, source, suppress_ragged_eofs=False), timeout)
        try:
            self.greeting = self.line()
            assert self.greeting.startswith(b"* OK"), self.greeting
        except BaseException:
            super().close()
            raise

    def close(self) -> None:
        if self.eof_kind is None:
            try:
                self.cmd(b"z9 LOGOUT")
                self.tagged(b"z9")
            except (OSError, EOFError, TimeoutError):
                pass
        super().close()


@dataclass
class Attempt:
    started: float
    ended: float
    result: str  # "ok", "refused", or another error's text


class ConnectLoop(threading.Thread):
    """Connects to addr over and over (TCP only, closed at once) and records each outcome."""

    def __init__(self, addr: tuple[str, int], pace: float = 0.005, timeout: float = 2.0, source: Source = None) -> None:
        super().__init__(daemon=True, name="connect-loop")
        self.addr = addr
        self.pace = pace
        self.timeout = timeout
        self.source = source
        self.attempts: list[Attempt] = []
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        from .sockets import connect

        while not self._halt.is_set():
            started = time.monotonic()
            try:
                connect(self.addr, self.timeout, self.source).close()
                result = "ok"
            except ConnectionRefusedError:
                result = "refused"
            except OSError as e:
                result = f"{type(e).__name__}: {e}"
            with self._lock:
                self.attempts.append(Attempt(started, time.monotonic(), result))
            # pacing, not waiting for an event: bounds the rate of attempts
            self._halt.wait(self.pace)

    def snapshot(self) -> list[Attempt]:
        with self._lock:
            return list(self.attempts)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


class IdleWatcher(threading.Thread):
    """Reads one idle session until the peer closes, keeping arrival times (for the goodbye)."""

    def __init__(self, conn: LineClient, timeout: float) -> None:
        super().__init__(daemon=True, name="idle-watcher")
        self.conn = conn
        self.timeout = timeout
        self.after_idle = len(conn.lines)
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            self.conn.lines_to_eof(self.timeout)
        except BaseException as e:  # reported by the test, not lost in the thread
            self.error = e

    def lines_since_idle(self) -> list[tuple[float, bytes]]:
        return self.conn.lines[self.after_idle:]

