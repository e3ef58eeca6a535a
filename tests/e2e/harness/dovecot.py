"""A real Dovecot (IMAP, POP3, submission, ManageSieve) as a test backend, run as a child process.

Layout under the instance root (mode 0755, see util.make_test_root):

    dovecot.conf  passwd  dovecot.log  run/  state/  mail/<user>/Maildir/{cur,new,tmp}

Listeners, all on 127.0.0.1 with free high ports (see `Dovecot.ports`):

    imap, imap_haproxy, pop3, pop3_haproxy, submission, submission_haproxy, sieve

`sieve` is Pigeonhole's managesieve (Debian dovecot-managesieved); each user's scripts live in
`<home>/sieve`.

`login_trusted_networks = 127.0.0.0/8` by default, so the client address postern forwards with
IMAP ID x-originating-ip or XCLIENT is believed; start an instance with `trusted=False` for the
"untrusted" view (Dovecot then ignores those and logs rip=<postern's address>). The
`*_haproxy` listeners trust PROXY headers from 127.0.0.0/8 (`haproxy_trusted_networks`).

Dovecot must run as root here (mail uid `nobody`); the suite runs as root in CI.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from .util import LOOPBACK, free_port, tail, wait_for

MAIL_UID = 65534  # nobody
MAIL_GID = 65534  # nogroup

DEFAULT_USERS = {"alice": "secret1", "bob": "secret2", "carol": "secret3"}

LISTENERS = ("imap", "imap_haproxy", "pop3", "pop3_haproxy", "submission", "submission_haproxy", "sieve")


class DovecotError(RuntimeError):
    """Dovecot could not be configured, started or stopped."""


class Dovecot:
    """One Dovecot instance. Create, then `start()`; `stop()` at the end.

    Attributes:
        root: the instance directory.
        ports: listener name (see LISTENERS) -> port on 127.0.0.1.
        users: user name -> password.
        log_path: Dovecot's log file (login lines carry `rip=` / `lip=`).
    """

    def __init__(
        self,
        root: Path,
        *,
        name: str = "dovetest",
        trusted: bool = True,
        relay_port: Optional[int] = None,
        users: Optional[dict[str, str]] = None,
        spare_users: int = 60,
        host: str = LOOPBACK,
        auth_penalty: bool = False,
        ssl: Optional[Any] = None,
    ) -> None:
        self.root = root
        # a CertPair: `ssl = yes` with it, STARTTLS/STLS on the plain listeners and the
        # implicit-TLS listeners imaps and pop3s (their ports join `ports`)
        self.ssl = ssl
        # every listener binds this address: another loopback address (127.0.0.11...) is
        # another host for route = "user", which places users by host
        self.host = host
        self.name = name
        self.trusted = trusted
        self.relay_port = relay_port
        # Dovecot's per-address auth penalty (2, 4, 8 ... 15 s after failures): off unless a
        # test is about it (test_auth_penalty.py)
        self.auth_penalty = auth_penalty
        self.users: dict[str, str] = dict(users if users is not None else DEFAULT_USERS)
        # users handed out by new_user(): in the passwd-file from the start, so no reload wait
        self._spare_users = [f"pool{i:03d}" for i in range(spare_users)]
        for u in self._spare_users:
            self.users[u] = "pw-" + uuid.uuid4().hex[:16]
        self.ports: dict[str, int] = {n: free_port(host) for n in self._listeners()}
        self.conf_path = root / "dovecot.conf"
        self.log_path = root / "dovecot.log"
        self.passwd_path = root / "passwd"
        self.proc: Optional[subprocess.Popen] = None
        self._setup()

    def _listeners(self) -> tuple[str, ...]:
        return LISTENERS + (("imaps", "pop3s") if self.ssl else ())

    # ---- addresses -------------------------------------------------------------------------

    def addr(self, listener: str) -> tuple[str, int]:
        """(host, port) of one Dovecot listener, e.g. addr("imap")."""
        return (self.host, self.ports[listener])

    def server(self, listener: str) -> str:
        """"127.0.0.1:PORT" for a postern `servers = [...]` entry."""
        return f"{self.host}:{self.ports[listener]}"

    # ---- files -------------------------------------------------------------------------------

    def _setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        for d in ("run", "state", "mail"):
            (self.root / d).mkdir(exist_ok=True)
        os.chown(self.root / "mail", MAIL_UID, MAIL_GID)
        self._write_passwd()
        for user in self.users:
            self.maildir(user)
        self.conf_path.write_text(self._config())

    def _write_passwd(self) -> None:
        text = "".join(f"{u}:{{PLAIN}}{p}\n" for u, p in self.users.items())
        tmp = self.passwd_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        # rename so Dovecot's passwd-file reader (it re-reads on mtime change) never sees half a file
        tmp.replace(self.passwd_path)

    def _config(self) -> str:
        r = self.root
        p = self.ports
        trusted = "login_trusted_networks = 127.0.0.0/8" if self.trusted else "# login_trusted_networks unset: forwarded client addresses are ignored"
        relay = (
            f"submission_relay_host = {LOOPBACK}\nsubmission_relay_port = {self.relay_port}\n"
            if self.relay_port
            else f"submission_relay_host = {LOOPBACK}\nsubmission_relay_port = {free_port()}\n"
        )
        penalty = "# auth penalty on (Dovecot's default)\n" if self.auth_penalty else PENALTY_OFF
        ssl = f"ssl = yes\nssl_cert = <{self.ssl.cert}\nssl_key = <{self.ssl.key}" if self.ssl else "ssl = no"
        imaps, pop3s = (p["imaps"], p["pop3s"]) if self.ssl else (0, 0)
        return f"""# Generated by tests/e2e/harness/dovecot.py for one test run.
protocols = imap pop3 submission sieve
listen = {self.host}
base_dir = {r}/run
state_dir = {r}/state
instance_name = {self.name}
log_path = {r}/dovecot.log
hostname = mail.test
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
# tests: no 2 s delay after a failed login
auth_failure_delay = 0
{trusted}
haproxy_trusted_networks = 127.0.0.0/8
mail_location = maildir:{r}/mail/%u/Maildir
mail_fsync = never
verbose_proctitle = yes
# 200 concurrent sessions of one user from one address must all be let in
mail_max_userip_connections = 2000
default_process_limit = 600
default_client_limit = 4000
{relay}submission_relay_trusted = no
submission_client_workarounds =

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd_path}
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={r}/mail/%u
}}

{penalty}
service imap-login {{
  # one process serves many logins: 200 parallel logins must not fork 200 login processes
  service_count = 0
  client_limit = 2000
  process_min_avail = 1
  inet_listener imap {{
    port = {p["imap"]}
  }}
  inet_listener imap_haproxy {{
    port = {p["imap_haproxy"]}
    haproxy = yes
  }}
  inet_listener imaps {{
    port = {imaps}
  }}
}}
service pop3-login {{
  service_count = 0
  client_limit = 2000
  process_min_avail = 1
  inet_listener pop3 {{
    port = {p["pop3"]}
  }}
  inet_listener pop3_haproxy {{
    port = {p["pop3_haproxy"]}
    haproxy = yes
  }}
  inet_listener pop3s {{
    port = {pop3s}
  }}
}}
plugin {{
  sieve = file:~/sieve;active=~/.dovecot.sieve
}}
service managesieve-login {{
  inet_listener sieve {{
    port = {p["sieve"]}
  }}
}}
service submission-login {{
  service_count = 0
  client_limit = 2000
  process_min_avail = 1
  inet_listener submission {{
    port = {p["submission"]}
  }}
  inet_listener submission_haproxy {{
    port = {p["submission_haproxy"]}
    haproxy = yes
  }}
}}
"""

    def maildir(self, user: str, folder: Optional[str] = None) -> Path:
        """The user's Maildir (or a subfolder's, Maildir++ `.Name`), created with mail ownership."""
        base = self.root / "mail" / user
        md = base / "Maildir"
        if folder and folder.upper() != "INBOX":
            md = md / f".{folder}"
        for d in (base, md, md / "cur", md / "new", md / "tmp"):
            if not d.exists():
                d.mkdir(parents=True, exist_ok=True)
                os.chown(d, MAIL_UID, MAIL_GID)
        return md

    def add_user(self, user: str, password: str, timeout: float = 5.0) -> None:
        """Add (or change) a user and wait until Dovecot accepts the login.

        Dovecot re-reads the passwd-file at most once a second, so a running instance may
        refuse a brand-new user for up to a second; this polls a direct login with a deadline.
        """
        self.users[user] = password
        self.maildir(user)
        self._write_passwd()
        if self.running():
            wait_for(lambda: _imap_login_ok(self.addr("imap"), user, password), timeout,
                     f"dovecot to accept the new user {user}", interval=0.1)

    def new_user(self) -> tuple[str, str]:
        """A fresh user with an empty mailbox: (name, password). Isolates tests from each other.

        Served from a pool created before start (instant); past the pool, add_user (<= 1 s).
        """
        if self._spare_users:
            name = self._spare_users.pop()
            return name, self.users[name]
        name = f"u{uuid.uuid4().hex[:10]}"
        password = "pw-" + uuid.uuid4().hex[:16]
        self.add_user(name, password)
        return name, password

    def deliver(self, user: str, message: bytes, folder: Optional[str] = None) -> Path:
        """Drop a message into the user's Maildir `new/` (the same as a local delivery agent).

        Write it with CRLF line ends: Dovecot then serves it byte for byte, so a test can
        compare what a client fetched with `message`.
        """
        md = self.maildir(user, folder)
        name = f"{time.time_ns()}.{uuid.uuid4().hex}.mail.test,S={len(message)}"
        tmp = md / "tmp" / name
        tmp.write_bytes(message)
        os.chown(tmp, MAIL_UID, MAIL_GID)
        final = md / "new" / name
        tmp.rename(final)
        return final

    def logins(self, user: Optional[str] = None) -> list[dict[str, str]]:
        """Successful logins Dovecot logged, oldest first, as dicts with `service` (imap-login,
        pop3-login, submission-login), `user`, `method`, `rip`, `lip` (and any other k=v
        fields). E.g. check that a forwarded client address arrived: logins("alice")[-1]["rip"]."""
        found = []
        for line in self.log_text().splitlines():
            m = _LOGIN_LINE.search(line)
            if not m:
                continue
            rec = {"service": m.group(1)}
            for k, v in _LOGIN_FIELD.findall(m.group(2)):
                rec[k] = v[1:-1] if v.startswith("<") else v
            if user is None or rec.get("user") == user:
                found.append(rec)
        return found

    def wait_login(self, user: str, timeout: float = 10.0, count: int = 1) -> dict[str, str]:
        """The `count`-th logged login of `user` (polled; Dovecot's log writer is asynchronous)."""
        got = wait_for(lambda: (lambda l: l if len(l) >= count else None)(self.logins(user)), timeout,
                       f"dovecot to log login #{count} of {user}", on_timeout=lambda: tail(self.log_text(), 20))
        return got[count - 1]

    def login_line(self, user: str, service: Optional[str] = None, timeout: float = 10.0) -> str:
        """The latest raw `Login:` line Dovecot logged for `user` (from `<service>-login` when
        given: imap, pop3, submission), polled until it appears."""
        pat = re.compile(rf"{service + '-login' if service else ''}.*Login: user=<{re.escape(user)}>.*")

        def find() -> Optional[str]:
            m = pat.findall(self.log_text())
            return m[-1] if m else None

        return wait_for(find, timeout, f"Dovecot's {service or 'any'}-login Login line for {user}",
                        on_timeout=lambda: tail(self.log_text(), 20))

    def log_text(self) -> str:
        """Everything Dovecot logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ---- process -------------------------------------------------------------------------------

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        """Start `dovecot -F` and wait until IMAP, POP3 and submission answer their greetings.

        The ports were free when picked, but another process on the machine may take one before
        Dovecot binds it: then new ports are picked and the start is retried (3 tries). Ports
        are only re-picked on the first start, so a restart keeps the addresses postern uses.
        """
        if self.running():
            return
        for attempt in range(3):
            try:
                self._start_once(timeout)
                self._started_once = True
                return
            except DovecotError as e:
                if "Address already in use" not in str(e) or getattr(self, "_started_once", False) or attempt == 2:
                    raise
                self.ports = {n: free_port(self.host) for n in self._listeners()}
                self.conf_path.write_text(self._config())

    def _start_once(self, timeout: float) -> None:
        out = open(self.root / "dovecot.stdout", "ab")
        try:
            self.proc = subprocess.Popen(
                ["dovecot", "-F", "-c", str(self.conf_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except FileNotFoundError as e:
            raise DovecotError("dovecot is not installed (tests/run installs dovecot-imapd, dovecot-pop3d, dovecot-submissiond, dovecot-managesieved)") from e
        finally:
            out.close()

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise DovecotError(
                    f"dovecot exited with rc {self.proc.returncode} during start\n"
                    + tail((self.root / "dovecot.stdout").read_text(errors="replace"))
                    + "\n" + tail(self.log_text())
                )
            return all(
                _greets(self.addr(n), prefix)
                for n, prefix in (
                    ("imap", b"* OK"),
                    ("pop3", b"+OK"),
                    ("submission", b"220"),
                    ("sieve", b'"IMPLEMENTATION"'),
                )
            )

        wait_for(ready, timeout, "dovecot greetings", interval=0.02, on_timeout=lambda: tail(self.log_text()))

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the master (it takes its children down, closing every session) and wait."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        # Dovecot 2.3's master leaves running mail sessions (and log/stats) behind when it
        # exits; a stopped backend must take its sessions down, so end the rest of the group
        # (SIGTERM: imap says "* BYE Server shutting down." and exits; SIGKILL after 3 s)
        self._signal_children(signal.SIGTERM)
        try:
            wait_for(lambda: not self._children(), 3, "dovecot child processes to exit", interval=0.02)
        except AssertionError:
            self._signal_children(signal.SIGKILL)
            wait_for(lambda: not self._children(), 5, "dovecot child processes to die", interval=0.02)
        self.proc = None

    def _signal_children(self, sig: int) -> None:
        for pid in self._children():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def restart(self) -> None:
        self.stop()
        self.start()

    def _children(self) -> list[int]:
        """PIDs in the master's process group (start_new_session made it a group leader)."""
        if self.proc is None:
            return []
        pgid = self.proc.pid
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.getpgid(int(entry)) == pgid and int(entry) != pgid:
                    found.append(int(entry))
            except (ProcessLookupError, PermissionError):
                continue
        return found

    def session_pids(self, service: str = "imap") -> list[int]:
        """PIDs of the per-session mail processes (`imap`, `pop3`, `submission`)."""
        pids = []
        for pid in self._children():
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if comm == service:
                pids.append(pid)
        return pids

    def kill_sessions(self, service: str = "imap") -> int:
        """SIGKILL every `service` session process (the backend dies under its sessions).

        Returns how many were killed. Dovecot itself keeps running and accepts new sessions.
        """
        n = 0
        for pid in self.session_pids(service):
            try:
                os.kill(pid, signal.SIGKILL)
                n += 1
            except ProcessLookupError:
                pass
        return n


_LOGIN_LINE = re.compile(r"(\w+-login): Info: Login: (.*)$")
_LOGIN_FIELD = re.compile(r"(\w+)=(<[^>]*>|[^,\s]+)")


class ZlibDovecot(Dovecot):
    """A Dovecot that offers IMAP COMPRESS=DEFLATE (RFC 4978), as many production ones do."""

    def _config(self) -> str:
        return super()._config() + (
            "\nmail_plugins = $mail_plugins zlib\n"
            "protocol imap {\n  mail_plugins = $mail_plugins imap_zlib\n}\n"
        )


def _greets(addr: tuple[str, int], prefix: bytes, timeout: float = 1.0) -> bool:
    """True when a fresh connection to addr receives a line starting with prefix."""
    try:
        with socket.create_connection(addr, timeout=timeout) as s:
            data = b""
            deadline = time.monotonic() + timeout
            while b"\n" not in data and time.monotonic() < deadline:
                chunk = s.recv(512)
                if not chunk:
                    break
                data += chunk
            return data.startswith(prefix)
    except OSError:
        return False


def _imap_login_ok(addr: tuple[str, int], user: str, password: str) -> bool:
    import imaplib

    try:
        with imaplib.IMAP4(addr[0], addr[1], timeout=3) as m:
            m.login(user, password)
            m.logout()
            return True
    except (OSError, imaplib.IMAP4.error):
        return False


PENALTY_OFF = """# no auth penalty: a test's deliberate wrong password must not slow every later login from
# 127.0.0.1 by 2-15 s (auth connects to this socket; mode 0 makes it fail and turns penalties off)
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
"""


def make_message(subject: str, body: str = "", *, sender: str = "sender@mail.test", to: str = "rcpt@mail.test", size: int = 0) -> bytes:
    """An RFC 5322 message with CRLF line ends; `size` > 0 pads the body with deterministic
    76-character lines until the message is at least that many bytes."""
    head = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@mail.test>\r\n"
        "Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    text = body.replace("\r\n", "\n").replace("\n", "\r\n").encode()
    if text and not text.endswith(b"\r\n"):
        text += b"\r\n"
    msg = head + text
    if size > len(msg):
        # deterministic filler; line numbers make any reordering or loss visible in a diff
        lines = []
        total = len(msg)
        i = 0
        while total < size:
            line = f"{i:010d} " + ("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: 76 - 11 - 2 - 0]) + "\r\n"
            lines.append(line)
            total += len(line)
            i += 1
        msg += "".join(lines).encode()
    return msg
