"""Helpers for test_operations.py (drain, privilege drop, sd_notify, bind errors).

A raw IMAP client that records when each line arrived and how the connection ended, a loop
that keeps connecting to a port and records every outcome, a NOTIFY_SOCKET listener, the
ids of a process from /proc, and a one-shot `postern run` for configs that must fail.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from harness import Dovecot, Postern
from harness.util import tail

# Python's ssl module raises this when the peer closes TCP without a TLS close_notify.
RAGGED_EOFS = (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError)


class LineConn:
    """One mail session (plain TCP or TLS) read line by line, with arrival times.

    TLS sockets are wrapped with `suppress_ragged_eofs=False` so that a close without
    close_notify is told apart from a clean TLS close (`eof_kind` is "clean" or
    "ragged: ..." once the peer has closed). The server's greeting is read on creation.
    """

    def __init__(self, sock: socket.socket, timeout: float = 15.0) -> None:
        self.sock = sock
        self.timeout = timeout
        self.buf = bytearray()
        self.lines: list[tuple[float, bytes]] = []  # (monotonic arrival, line) of every line read
        self.eof_at: Optional[float] = None
        self.eof_kind: Optional[str] = None
        self.greeting = self.read_line()

    @classmethod
    def tls(cls, addr: tuple[str, int], ctx: ssl.SSLContext, timeout: float = 15.0, rcvbuf: Optional[int] = None):
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # set before connect: a small window keeps most of a big transfer upstream
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(timeout)
        try:
            raw.connect(addr)
            sock = ctx.wrap_socket(raw, server_hostname=addr[0], suppress_ragged_eofs=False)
        except BaseException:
            raw.close()
            raise
        return cls(sock, timeout)

    @classmethod
    def plain(cls, addr: tuple[str, int], timeout: float = 15.0):
        return cls(socket.create_connection(addr, timeout=timeout), timeout)

    # ---- reading --------------------------------------------------------------------------

    def _fill(self, deadline: float) -> bool:
        """Read more into the buffer; False at EOF (recorded). TimeoutError at the deadline."""
        if self.eof_kind is not None:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"nothing more from the server in time (buffer {bytes(self.buf[:200])!r})")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError(f"nothing more from the server in time (buffer {bytes(self.buf[:200])!r})") from None
        except RAGGED_EOFS as e:
            self._eof(f"ragged: {type(e).__name__}: {e}")
            return False
        if not chunk:
            self._eof("clean")
            return False
        self.buf += chunk
        return True

    def _eof(self, kind: str) -> None:
        self.eof_at = time.monotonic()
        self.eof_kind = kind

    def read_line(self, timeout: Optional[float] = None) -> bytes:
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\n" not in self.buf:
            if not self._fill(deadline):
                raise EOFError(f"closed ({self.eof_kind}) before a full line (buffer {bytes(self.buf[:200])!r})")
        i = self.buf.index(b"\n") + 1
        line = bytes(self.buf[:i])
        del self.buf[:i]
        self.lines.append((time.monotonic(), line))
        return line

    def read_exact(self, n: int, timeout: Optional[float] = None, chunk_cb: Optional[Callable[[int], None]] = None) -> bytes:
        """n bytes; chunk_cb(bytes_so_far) after every read lets a caller act mid-transfer."""
        deadline = time.monotonic() + (timeout or self.timeout)
        out = bytearray()
        while len(out) < n:
            if not self.buf and not self._fill(deadline):
                raise EOFError(f"closed ({self.eof_kind}) after {len(out)} of {n} bytes")
            take = min(n - len(out), len(self.buf))
            out += self.buf[:take]
            del self.buf[:take]
            if chunk_cb is not None:
                chunk_cb(len(out))
        return bytes(out)

    def read_until_tagged(self, tag: str) -> list[bytes]:
        lines = []
        while True:
            line = self.read_line()
            lines.append(line)
            if line.startswith(tag.encode() + b" "):
                return lines

    def read_to_eof(self, timeout: Optional[float] = None) -> list[bytes]:
        """Every line until the peer closes; any unterminated tail is returned as a last item."""
        deadline = time.monotonic() + (timeout or self.timeout)
        got = []
        while True:
            while b"\n" in self.buf:
                i = self.buf.index(b"\n") + 1
                line = bytes(self.buf[:i])
                del self.buf[:i]
                self.lines.append((time.monotonic(), line))
                got.append(line)
            if not self._fill(deadline):
                if self.buf:
                    got.append(bytes(self.buf))
                    self.buf.clear()
                return got

    def read_paced_to_eof(self, rate: float, timeout: float) -> bytes:
        """Everything (buffered and new) until the peer closes, read at about `rate` bytes/s:
        a slow client on a thin line. Returns the raw bytes; lines are not split."""
        deadline = time.monotonic() + timeout
        out = bytearray(self.buf)
        self.buf.clear()
        started = time.monotonic()
        while self._fill(deadline):
            out += self.buf
            self.buf.clear()
            # pacing, not waiting for an event: the client drains no faster than `rate`
            ahead = len(out) / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(min(ahead, max(0.0, deadline - time.monotonic())))
        return bytes(out)

    # ---- writing --------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def smtp(self, text: str) -> list[bytes]:
        """Send an SMTP command; the reply lines (through the one with a space after the code)."""
        self.send(text.encode() + b"\r\n")
        lines = []
        while True:
            line = self.read_line()
            lines.append(line)
            if line[3:4] != b"-":
                return lines

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class ImapConn(LineConn):
    """An IMAP session with the few commands the tests need."""

    def command(self, tag: str, text: str) -> list[bytes]:
        self.send(f"{tag} {text}\r\n".encode())
        lines = self.read_until_tagged(tag)
        if not lines[-1].startswith(f"{tag} OK".encode()):
            raise AssertionError(f"{text.split()[0]} failed: {lines[-1]!r}")
        return lines

    def login(self, user: str, password: str) -> None:
        self.command("l1", f'LOGIN "{user}" "{password}"')

    def idle(self) -> None:
        """SELECT INBOX and enter IDLE (what a phone does all day)."""
        self.command("s1", "SELECT INBOX")
        self.send(b"i1 IDLE\r\n")
        line = self.read_line()
        if not line.startswith(b"+"):
            raise AssertionError(f"IDLE not accepted: {line!r}")


class IdleWatcher(threading.Thread):
    """Reads one idle session until the peer closes, keeping arrival times (for the goodbye)."""

    def __init__(self, conn: LineConn, timeout: float) -> None:
        super().__init__(daemon=True, name="idle-watcher")
        self.conn = conn
        self.timeout = timeout
        self.after_idle = len(conn.lines)
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            self.conn.read_to_eof(self.timeout)
        except BaseException as e:  # reported by the test, not lost in the thread
            self.error = e

    def lines_since_idle(self) -> list[tuple[float, bytes]]:
        return self.conn.lines[self.after_idle:]


@dataclass
class Attempt:
    started: float
    ended: float
    result: str  # "ok", "refused", or another error's text


class ConnectLoop(threading.Thread):
    """Connects to addr over and over (TCP only, closed at once) and records each outcome."""

    def __init__(self, addr: tuple[str, int], pace: float = 0.005, timeout: float = 2.0) -> None:
        super().__init__(daemon=True, name="connect-loop")
        self.addr = addr
        self.pace = pace
        self.timeout = timeout
        self.attempts: list[Attempt] = []
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self._halt.is_set():
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            started = time.monotonic()
            try:
                s.connect(self.addr)
                result = "ok"
            except ConnectionRefusedError:
                result = "refused"
            except OSError as e:
                result = f"{type(e).__name__}: {e}"
            finally:
                s.close()
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


def proc_ids(pid: int) -> dict[str, dict[str, list[int]]]:
    """{"<pid>" and each thread id: {"Uid": [...4], "Gid": [...4], "Groups": [...], "CapEff": [x], ...}}."""
    out: dict[str, dict[str, list[int]]] = {}
    for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
        try:
            text = (task / "status").read_text()
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        fields: dict[str, list[int]] = {}
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups"):
                fields[key] = [int(x) for x in value.split()]
            elif key in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
                fields[key] = [int(value.strip(), 16)]
        out[task.name] = fields
    return out


def wait_exit(p: Postern, timeout: float) -> int:
    """Wait for postern to exit by itself (after a signal the test sent); returns the code."""
    assert p.proc is not None
    try:
        rc = p.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"postern did not exit within {timeout}s\n{tail(p.log_text(), 40)}") from None
    p._join_reader()
    p.returncode = rc
    return rc


def run_expecting_failure(binary: Path, config_path: Path, timeout: float = 30.0, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`postern run -c PATH` for a config that must not start; stdout+stderr as text.
    `prefix` runs it through another command (e.g. setpriv to start as another user).

    Not through postern_factory: its teardown treats a non-zero exit as a failure.
    """
    env = dict(os.environ)
    env.pop("RUST_LOG", None)
    env.pop("NOTIFY_SOCKET", None)
    env["RUST_BACKTRACE"] = "1"  # a panic would then show its backtrace, which the tests reject
    try:
        return subprocess.run(
            [*prefix, str(binary), "run", "-c", str(config_path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, timeout=timeout, env=env,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"postern kept running for {timeout}s with a config that must fail; output:\n{e.output}") from None


PANIC_MARKERS = re.compile(r"panicked at|stack backtrace|RUST_BACKTRACE|Traceback", re.IGNORECASE)



class ZlibDovecot(Dovecot):
    """A Dovecot that offers IMAP COMPRESS=DEFLATE (RFC 4978), as many production ones do."""

    def _config(self) -> str:
        return super()._config() + (
            "\nmail_plugins = $mail_plugins zlib\n"
            "protocol imap {\n  mail_plugins = $mail_plugins imap_zlib\n}\n"
        )


class Deflated:
    """The client side of an IMAP session after COMPRESS DEFLATE: raw deflate both ways."""

    def __init__(self, conn: LineConn) -> None:
        self.conn = conn
        self.out = zlib.compressobj(wbits=-15)
        self.inflate = zlib.decompressobj(wbits=-15)
        self.text = bytearray()
        self.raw = bytearray(conn.buf)  # anything already read past the OK belongs to the stream
        conn.buf.clear()
        self.text += self.inflate.decompress(bytes(self.raw))

    def send(self, line: bytes) -> None:
        self.conn.send(self.out.compress(line) + self.out.flush(zlib.Z_SYNC_FLUSH))

    def read_until(self, marker: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.text:
            if not self.conn._fill(deadline):
                raise EOFError(f"closed before {marker!r}; got {bytes(self.text[-200:])!r}")
            chunk = bytes(self.conn.buf)
            self.conn.buf.clear()
            self.raw += chunk
            self.text += self.inflate.decompress(chunk)
        return bytes(self.text)

    def read_to_eof(self, timeout: float) -> None:
        """Everything until the close; zlib.error if the bytes are not one deflate stream."""
        deadline = time.monotonic() + timeout
        while self.conn._fill(deadline):
            chunk = bytes(self.conn.buf)
            self.conn.buf.clear()
            self.raw += chunk
            self.text += self.inflate.decompress(chunk)
