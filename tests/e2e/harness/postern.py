"""Running the postern binary under test: config generation, start/stop, logs, admin endpoint.

The harness always starts postern with `[log] format = "json"` and learns everything from its
stderr: one `listening` line per bound address (port 0 resolved), `admin listening`, then
`ready`. Nothing is guessed from timing.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

from . import toml_writer
from .certs import CertPair
from .metrics import HttpResponse, Metrics, http_get, parse_exposition
from .util import LOOPBACK, tail, wait_for

ANY = "127.0.0.1:0"

# Dovecot listener that each postern protocol fronts by default.
DOVECOT_LISTENER = {"imap": "imap", "pop3": "pop3", "smtp": "submission"}


def message_is(message: str) -> Callable[[dict[str, Any]], bool]:
    """A record predicate for find_records / wait_for_record: the `message` field equals."""
    return lambda r: r.get("message") == message


class PosternStartError(AssertionError):
    """postern exited or did not log `ready` in time; the message carries its log."""


def binary_path() -> Path:
    """$POSTERN_BIN, else target/debug/postern in the repository."""
    env = os.environ.get("POSTERN_BIN")
    if env:
        return Path(env).resolve()
    repo = Path(__file__).resolve().parents[3]
    return repo / "target" / "debug" / "postern"


class PosternConfig:
    """A postern config as nested dicts, written out as TOML by `to_toml()`.

    `data` is the document; change it freely (it is plain dicts and lists), or use the helpers.
    Defaults for tests: workers = 2, admin on 127.0.0.1:0, JSON logs, state_dir in `workdir`,
    the given certificate as the only `[[tls.certificate]]`.
    """

    def __init__(self, workdir: Path, cert: Optional[CertPair]) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = {
            "server": {"workers": 2, "state_dir": str(workdir / "state")},
            "admin": {"listen": ANY},
            "log": {"format": "json", "level": "info"},
            "tls": {"certificate": [{"cert": str(cert.cert), "key": str(cert.key)}] if cert else []},
            "listener": [],
            "backend": [],
        }

    # ---- building ------------------------------------------------------------------------------

    def section(self, name: str) -> dict[str, Any]:
        """A top-level table (`server`, `admin`, `log`, `tls`), created when missing."""
        return self.data.setdefault(name, {})

    def listener(
        self,
        name: str,
        protocol: str,
        backend: str,
        *,
        tls: str = "implicit",
        listen: Iterable[str] = (ANY,),
        **extra: Any,
    ) -> dict[str, Any]:
        """Add a `[[listener]]` (extra keys such as idle_timeout pass through) and return it."""
        entry = {"name": name, "protocol": protocol, "tls": tls, "listen": list(listen), "backend": backend, **extra}
        self.data["listener"].append(entry)
        return entry

    def backend(
        self,
        name: str,
        servers: Iterable[str],
        *,
        health: Optional[dict[str, Any]] = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Add a `[[backend]]` with `servers`; `health` becomes `[backend.health]`."""
        entry: dict[str, Any] = {"name": name, "servers": list(servers), **extra}
        if health:
            entry["health"] = dict(health)
        self.data["backend"].append(entry)
        return entry

    def get_listener(self, name: str) -> dict[str, Any]:
        for entry in self.data["listener"]:
            if entry["name"] == name:
                return entry
        raise KeyError(f"no listener named {name!r} in this config")

    def get_backend(self, name: str) -> dict[str, Any]:
        for entry in self.data["backend"]:
            if entry["name"] == name:
                return entry
        raise KeyError(f"no backend named {name!r} in this config")

    def copy(self) -> "PosternConfig":
        other = PosternConfig.__new__(PosternConfig)
        other.workdir = self.workdir
        other.data = copy.deepcopy(self.data)
        return other

    def to_toml(self) -> str:
        return toml_writer.dumps(self.data)

    def write(self, path: Optional[Path] = None) -> Path:
        path = path or (self.workdir / "postern.toml")
        path.write_text(self.to_toml())
        return path

    @classmethod
    def fronting(
        cls,
        workdir: Path,
        cert: CertPair,
        dovecot: Any,
        *,
        protocols: Iterable[str] = ("imap", "pop3", "smtp"),
        forward_client: str = "none",
        dovecot_listeners: Optional[dict[str, str]] = None,
        health: Optional[dict[str, Any]] = None,
    ) -> "PosternConfig":
        """The standard gateway: implicit-TLS listeners `imaps`, `pop3s`, `submissions` in front of
        `dovecot`'s plain listeners, backends named `imap`, `pop3`, `submission`.

        dovecot_listeners overrides which Dovecot listener a protocol goes to (e.g.
        {"imap": "imap_haproxy"} together with forward_client="proxy-v2").
        """
        cfg = cls(workdir, cert)
        names = {"imap": ("imaps", "imap"), "pop3": ("pop3s", "pop3"), "smtp": ("submissions", "submission")}
        for proto in protocols:
            lname, bname = names[proto]
            dl = (dovecot_listeners or {}).get(proto, DOVECOT_LISTENER[proto])
            cfg.backend(bname, [dovecot.server(dl)], forward_client=forward_client, health=health)
            cfg.listener(lname, proto, bname)
        return cfg


# tracing's text format: `<ts>  INFO target: message key=value key="quoted value"`
_TEXT_LINE = re.compile(r"^\S+\s+(TRACE|DEBUG|INFO|WARN|ERROR)\s+(?:[\w:]+(?:\{[^}]*\})*:\s+)*(.*)$")
_KV = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def parse_log_line(line: str) -> Optional[dict[str, Any]]:
    """A log line as a dict with at least `message`; None when it is not a log record.

    JSON lines are returned as parsed, except that a nested `fields` object (tracing's default
    JSON layout) is also merged in at top level so lookups work either way. Text lines are
    parsed best-effort into message + key=value fields.
    """
    line = line.strip()
    if not line:
        return None
    if line.startswith("{"):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            return None
        if not isinstance(rec, dict):
            return None
        fields = rec.get("fields")
        if isinstance(fields, dict):
            merged = dict(rec)
            for k, v in fields.items():
                merged.setdefault(k, v)
            return merged
        return rec
    m = _TEXT_LINE.match(line)
    if not m:
        return None
    rest = m.group(2)
    first_kv = _KV.search(rest)
    message = rest[: first_kv.start()].strip() if first_kv else rest.strip()
    rec: dict[str, Any] = {"level": m.group(1), "message": message}
    for k, v in _KV.findall(rest[first_kv.start():] if first_kv else ""):
        rec[k] = json.loads(v) if v.startswith('"') else v
    return rec


def parse_addr(text: str) -> tuple[str, int]:
    """'127.0.0.1:993' or '[::1]:993' -> (host, port)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class Postern:
    """One postern process. `start()` waits for `ready`; `stop()` sends SIGTERM.

    After start:
        listeners: name -> [(host, port), ...] as logged (port 0 resolved)
        admin: (host, port) of the admin endpoint
        lines: every stderr/stdout line so far (str); records: the parsed ones (dicts)
    """

    def __init__(self, binary: Path, config: Union[PosternConfig, Path], workdir: Path, env: Optional[dict[str, str]] = None) -> None:
        self.binary = binary
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        if isinstance(config, PosternConfig):
            self.config: Optional[PosternConfig] = config
            self.config_path = config.write(workdir / "postern.toml")
        else:
            self.config = None
            self.config_path = Path(config)
        self.env = env
        self.proc: Optional[subprocess.Popen] = None
        self.lines: list[str] = []
        self.records: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._reader: Optional[threading.Thread] = None
        self.listeners: dict[str, list[tuple[str, int]]] = {}
        self.admin: Optional[tuple[str, int]] = None
        self.returncode: Optional[int] = None
        # set by kill() (or by a test that ends the process on purpose): a non-zero exit is expected
        self.killed_by_test = False

    # ---- process -------------------------------------------------------------------------------

    def start(self, timeout: float = 20.0, wait_ready: bool = True) -> "Postern":
        if not self.binary.exists():
            raise PosternStartError(
                f"postern binary not found at {self.binary}: build it with `cargo build -p postern` "
                "or set POSTERN_BIN"
            )
        env = dict(os.environ)
        env.pop("RUST_LOG", None)  # the config's [log] level decides, unless a test says otherwise
        env["RUST_BACKTRACE"] = "1"
        if self.env:
            env.update(self.env)
        self.proc = subprocess.Popen(
            [str(self.binary), "run", "-c", str(self.config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.workdir,
        )
        self._reader = threading.Thread(target=self._read, name=f"postern-log-{self.proc.pid}", daemon=True)
        self._reader.start()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.workdir / "postern.log", "a", encoding="utf-8") as copy_file:
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                copy_file.write(line + "\n")
                copy_file.flush()
                rec = parse_log_line(line)
                with self._cond:
                    self.lines.append(line)
                    if rec is not None:
                        self.records.append(rec)
                        self._note(rec)
                    self._cond.notify_all()

    def _note(self, rec: dict[str, Any]) -> None:
        msg = rec.get("message")
        if msg == "listening" and "listener" in rec and "addr" in rec:
            addr = parse_addr(str(rec["addr"]))
            lst = self.listeners.setdefault(str(rec["listener"]), [])
            if addr not in lst:
                lst.append(addr)
        elif msg == "admin listening" and "addr" in rec:
            self.admin = parse_addr(str(rec["addr"]))

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait for the `ready` log line; on exit or timeout raise with the captured log."""

        def ready() -> bool:
            with self._cond:
                if any(r.get("message") == "ready" for r in self.records):
                    return True
            if self.proc is not None and self.proc.poll() is not None:
                self._join_reader()
                raise PosternStartError(
                    f"postern exited with rc {self.proc.returncode} before `ready`\nconfig {self.config_path}:\n"
                    f"{self.config_path.read_text() if self.config_path.exists() else '?'}\nlog:\n{self.log_text()}"
                )
            return False

        try:
            wait_for(ready, timeout, "postern to log `ready`", interval=0.01)
        except AssertionError as e:
            if isinstance(e, PosternStartError):
                raise
            self.kill()
            raise PosternStartError(f"{e}\nlog:\n{self.log_text()}") from None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 45.0) -> int:
        """SIGTERM and wait for exit; returns the exit code (SIGKILL after `timeout`, then raises)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                self._join_reader()
                raise AssertionError(f"postern did not exit within {timeout}s of SIGTERM\n{tail(self.log_text())}")
        self._join_reader()
        self.returncode = self.proc.returncode
        return self.returncode

    def wait_exit(self, timeout: float) -> int:
        """Wait for postern to exit by itself (after a signal the test sent); the exit code."""
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"postern did not exit within {timeout}s\n{tail(self.log_text(), 40)}") from None
        self._join_reader()
        self.returncode = rc
        return rc

    def kill(self) -> None:
        self.killed_by_test = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._join_reader()

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)

    # ---- addresses -------------------------------------------------------------------------------

    def addr(self, listener: str) -> tuple[str, int]:
        """The first bound address of `listener`."""
        try:
            return self.listeners[listener][0]
        except KeyError:
            raise KeyError(f"postern logged no `listening` line for listener {listener!r}; seen: {sorted(self.listeners)}") from None

    def admin_addr(self) -> tuple[str, int]:
        if self.admin is None:
            raise KeyError("postern logged no `admin listening` line")
        return self.admin

    # ---- logs -------------------------------------------------------------------------------

    def log_text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def log_mark(self) -> int:
        """An index into `records`; pass it as `after=` to look only at later records."""
        with self._cond:
            return len(self.records)

    def find_records(self, pred: Callable[[dict[str, Any]], bool], after: int = 0) -> list[dict[str, Any]]:
        with self._cond:
            return [r for r in self.records[after:] if pred(r)]

    def one_record(self, message: str, after: int = 0) -> dict[str, Any]:
        """The record with this `message` (after `after`); fails unless there is exactly one."""
        got = self.find_records(message_is(message), after)
        assert len(got) == 1, f"want exactly one `{message}` log line, got {len(got)}\n{tail(self.log_text(), 40)}"
        return got[0]

    def wait_for_record(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0, what: str = "a log record", after: int = 0, count: int = 1) -> list[dict[str, Any]]:
        """Wait until at least `count` records after `after` satisfy `pred`; return them."""

        def found():
            got = self.find_records(pred, after)
            return got if len(got) >= count else None

        return wait_for(found, timeout, what, interval=0.01, on_timeout=lambda: tail(self.log_text(), 40))

    def wait_session_end(self, timeout: float = 10.0, after: int = 0, count: int = 1, **fields: Any) -> list[dict[str, Any]]:
        """Wait for `count` "session ended" records (after `after`) whose fields equal `fields`."""

        def pred(r):
            return r.get("message") == "session ended" and all(r.get(k) == v for k, v in fields.items())

        return self.wait_for_record(pred, timeout, f"{count} `session ended` record(s) with {fields}", after, count)

    # ---- admin endpoint -------------------------------------------------------------------------

    def get(self, path: str, timeout: float = 5.0) -> HttpResponse:
        return http_get(self.admin_addr(), path, timeout)

    def metrics(self) -> Metrics:
        resp = self.get("/metrics")
        if resp.status != 200:
            raise AssertionError(f"/metrics answered {resp.status}: {resp.text[:500]}")
        return parse_exposition(resp.text)

    def wait_metric(self, metric: str, pred: Callable[[float], bool], /, timeout: float = 10.0, what: str = "", **labels: str) -> float:
        """Poll /metrics until `pred(value)` holds for `metric` (summed over `labels`)."""
        last: list[Optional[float]] = [None]

        def check():
            v = self.metrics().value(metric, **labels)
            last[0] = v
            return (True, v) if pred(v) else None

        try:
            return wait_for(check, timeout, what or f"{metric}{labels}", interval=0.02)[1]
        except AssertionError as e:
            raise AssertionError(f"{e} (last value {last[0]})") from None


def check_config(binary: Path, path: Path, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """`postern check-config -c PATH` with captured text output."""
    env = dict(os.environ)
    env.pop("RUST_LOG", None)
    return subprocess.run([str(binary), "check-config", "-c", str(path)], capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


# what a crash looks like in postern's output; a refusal to start must show none of it
PANIC_MARKERS = re.compile(r"panicked at|stack backtrace|RUST_BACKTRACE|Traceback", re.IGNORECASE)


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
