"""STARTTLS helpers: openers that take a LineClient through the plaintext phase, `openssl
s_client` runs, SASL blobs, and `StartTlsEnv`, the postern + Dovecot the test_starttls_*.py
files share (fixture `starttls_env` in conftest.py).

The env's Dovecot has `ssl = yes`: it advertises STARTTLS / STLS itself, so the tests see
whether postern strips them from the backend's capability replies after the upgrade (with the
shared `ssl = no` Dovecot there would be nothing to strip). Its users have distinctive
passwords (`Pw-Secret-123-...`), and every secret a test sends is remembered in SECRETS, so
each file's last test can assert that no postern log line ever carried one.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from .certs import CertPair
from .dovecot import Dovecot, make_message
from .line_client import LineClient
from .postern import Postern, PosternConfig
from .sockets import Source
from .util import tail

# the go-ahead line each protocol's STARTTLS command gets from postern
GO_AHEAD = {
    "imap": b"OK Begin TLS negotiation now",
    "pop3": b"+OK Begin TLS negotiation",
    "smtp": b"220 2.0.0 Ready to start TLS",
}
GREETING_PREFIX = {"imap": b"* OK", "pop3": b"+OK", "smtp": b"220 "}
UPGRADE = {"imap": b"s0 STARTTLS", "pop3": b"STLS", "smtp": b"STARTTLS"}
PROTOS = ("imap", "pop3", "smtp")

PASSWORD_MARK = "Pw-Secret-123"

# user -> password; one user per login form so every log line is attributable at a glance
USER_NAMES = [
    "st-fetch", "st-smtp", "st-misc",
    "st-atom", "st-quoted", "stlit", "stlip", "st-sasl-ir", "st-sasl-cont",
    "st-pop-user", "st-pop-plain", "st-pop-plaincont",
    "st-smtp-plain", "st-smtp-plaincont", "st-smtp-login",
    "st-t12-imap", "st-t12-pop", "st-t12-smtp",
    "st-retry-imap", "st-retry-pop3", "st-retry-smtp",
    "st-second-imap", "st-second-pop3", "st-second-smtp", "st-limit-imap",
]
USERS = {u: f"{PASSWORD_MARK}-{i:02d}" for i, u in enumerate(USER_NAMES)}

# every secret the tests put on the wire (passwords and SASL blobs that carry them)
SECRETS: set[bytes] = set(p.encode() for p in USERS.values())

DISCARDED = "postern_starttls_discarded_bytes_total"


def plain_b64(user: str, password: str, authzid: str = "") -> bytes:
    """The SASL PLAIN initial response, base64."""
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode())


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def sasl_plain(user: str, password: str) -> bytes:
    """The SASL PLAIN response for user/password, remembered as a secret."""
    blob = plain_b64(user, password)
    SECRETS.add(blob)
    return blob


def open_starttls(
    proto: str,
    addr: tuple[str, int],
    ctx: ssl.SSLContext,
    pre: bytes = b"",
    source: Source = None,
    proxy: Optional[bytes] = None,
    timeout: float = 10.0,
) -> LineClient:
    """Connect to a STARTTLS listener, read postern's greeting, send `pre` (complete plaintext
    commands, their replies are read and dropped), upgrade, and return the TLS client."""
    c = LineClient.connect(addr, timeout, source, proxy)
    try:
        greeting = c.line()
        assert greeting.startswith(GREETING_PREFIX[proto]), greeting
        if proto == "smtp":
            c.cmd(b"EHLO client.test")
            c.smtp_reply()
        for line in pre.splitlines():
            c.cmd(line)
            if proto == "imap":
                c.tagged(line.split()[0])
            elif proto == "pop3":
                c.line()
            else:
                c.smtp_reply()
        c.cmd(UPGRADE[proto])
        reply = c.line()
        assert GO_AHEAD[proto] in reply, reply
        c.start_tls(ctx)
        return c
    except BaseException:
        c.close()
        raise


def open_implicit(
    addr: tuple[str, int],
    ctx: ssl.SSLContext,
    proto: str,
    source: Source = None,
    proxy: Optional[bytes] = None,
    timeout: float = 10.0,
) -> LineClient:
    """Connect to an implicit-TLS listener (the STARTTLS tests' `P-implicit` ones; SNI
    localhost) and read the backend's greeting (kept in `greeting_lines`)."""
    c = LineClient.connect(addr, timeout, source, proxy)
    try:
        c.start_tls(ctx)
        c.greeting_lines = c.smtp_reply() if proto == "smtp" else [c.line()]  # type: ignore[attr-defined]
        return c
    except BaseException:
        c.close()
        raise


def s_client(
    addr: tuple[str, int],
    cafile: Path,
    stdin: bytes,
    *,
    starttls: Optional[str] = None,
    alpn: Optional[str] = None,
    timeout: float = 20.0,
) -> subprocess.CompletedProcess:
    """`openssl s_client` with `stdin` piped in (LF turned into CRLF by -crlf); -ign_eof keeps it
    reading until the server closes, so `stdin` should end with the protocol's quit command."""
    cmd = [
        "openssl", "s_client", "-connect", f"{addr[0]}:{addr[1]}", "-CAfile", str(cafile),
        "-servername", "localhost", "-verify_return_error", "-crlf", "-ign_eof",
    ]
    if starttls:
        cmd += ["-starttls", starttls]
    if alpn:
        cmd += ["-alpn", alpn]
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)


def served(s_client_stdout: bytes) -> bytes:
    """What the server sent inside TLS, from s_client's output: the server's lines end in CRLF,
    s_client's own report lines (certificate, session tickets) in a bare LF."""
    lines = s_client_stdout.splitlines(keepends=True)
    return b"".join(ln for ln in lines if ln.endswith(b"\r\n"))


@dataclass
class StartTlsEnv:
    """One postern with, per protocol P (imap, pop3, smtp): listeners `P-st` (STARTTLS),
    `P-st-1s` (plaintext_timeout 1s), `P-dead-st` (a backend that refuses connects) and
    `P-implicit`; `tls.handshake_timeout` 2s; debug logging. In front of `dovecot` (users
    USERS; st-fetch holds `messages`)."""

    postern: Postern
    dovecot: Dovecot
    certs: CertPair
    messages: list[bytes] = field(default_factory=list)
    # peer 'ip:port' -> log mark when that client connected (client ports are reused in a
    # run, so a client's `session ended` line is looked for among later records only)
    _marks: dict[str, int] = field(default_factory=dict)

    def addr(self, listener: str) -> tuple[str, int]:
        return self.postern.addr(listener)

    def mark(self) -> int:
        return len(self.postern.records)

    def _track(self, c: LineClient, mark: int) -> LineClient:
        self._marks[c.peer] = mark
        return c

    def client(self, listener: str) -> LineClient:
        """A plain client of `listener` (nothing read yet)."""
        mark = self.mark()
        return self._track(LineClient.connect(self.addr(listener), timeout=10.0), mark)

    def starttls(self, proto: str, listener: str, ctx: ssl.SSLContext, pre: bytes = b"") -> LineClient:
        mark = self.mark()
        return self._track(open_starttls(proto, self.addr(listener), ctx, pre), mark)

    def implicit(self, listener: str, ctx: ssl.SSLContext, proto: str) -> LineClient:
        mark = self.mark()
        return self._track(open_implicit(self.addr(listener), ctx, proto), mark)

    def ended(self, client: LineClient, timeout: float = 10.0) -> dict:
        """The `session ended` record of `client`'s connection (made by this env)."""
        return self.ended_peer(client.peer, self._marks.get(client.peer, 0), timeout)

    def ended_peer(self, peer: str, after: int, timeout: float = 10.0) -> dict:
        return self.postern.wait_session_end(timeout=timeout, after=after, peer=peer)[0]

    def discarded(self, listener: str) -> float:
        return self.postern.metrics().value(DISCARDED, listener=listener)

    def wait_discarded(self, listener: str, before: float, n: int) -> None:
        self.postern.wait_metric(DISCARDED, lambda v: v >= before + n, listener=listener, what=f"{DISCARDED}{{listener={listener}}} += {n}")
        assert self.discarded(listener) == before + n

    def assert_no_secret_logged(self) -> None:
        """No postern log line so far carried a password or a SASL blob a test sent."""
        text = "\n".join(self.postern.lines)
        assert "session ended" in text
        found = [s for s in SECRETS if s.decode() in text]
        assert not found, f"postern logged secrets {found}:\n" + "\n".join(ln for ln in self.postern.lines if any(s.decode() in ln for s in found))[:3000]
        assert PASSWORD_MARK not in text


@contextmanager
def starttls_env(root: Path, postern_bin: Path, certs: CertPair, relay_port: int) -> Iterator[StartTlsEnv]:
    """Start the env under `root`; on exit stop both and require postern's exit code 0."""
    dv = Dovecot(root / "dovecot", name=f"dovetest-starttls-{os.getpid()}", users=dict(USERS), spare_users=0, relay_port=relay_port)
    # ssl = yes: this Dovecot advertises STARTTLS/STLS on its plain ports, which postern must strip
    conf = dv.conf_path.read_text()
    assert "ssl = no\n" in conf
    dv.conf_path.write_text(conf.replace("ssl = no\n", f"ssl = yes\nssl_cert = <{certs.cert}\nssl_key = <{certs.key}\n"))
    msgs = [make_message("starttls one", "First message via STARTTLS.\n"), make_message("starttls two", "Second one.\n")]
    for m in msgs:
        dv.deliver("st-fetch", m)
    dv.start()

    # a bound but never listening socket: connects are refused, and while it is held no
    # other process (other suites run at the same time) can take the port
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_server = "127.0.0.1:%d" % dead.getsockname()[1]
    cfg = PosternConfig(root / "postern", certs)
    for proto, bname, dl in (("imap", "imap", "imap"), ("pop3", "pop3", "pop3"), ("smtp", "submission", "submission")):
        cfg.backend(bname, [dv.server(dl)])
        cfg.backend(f"{bname}-dead", [dead_server], connect_timeout="1s")
        cfg.listener(f"{proto}-st", proto, bname, tls="starttls")
        cfg.listener(f"{proto}-st-1s", proto, bname, tls="starttls", plaintext_timeout="1s")
        cfg.listener(f"{proto}-dead-st", proto, f"{bname}-dead", tls="starttls")
        cfg.listener(f"{proto}-implicit", proto, bname)
    # short, so the handshake-timeout test after STARTTLS is quick; ample for loopback
    cfg.section("tls")["handshake_timeout"] = "2s"
    # debug: more log lines that could leak a secret, and the reasons behind each outcome
    cfg.section("log")["level"] = "debug"
    p = Postern(postern_bin, cfg, cfg.workdir)
    try:
        p.start()
        yield StartTlsEnv(p, dv, certs, msgs)
    finally:
        rc = p.stop() if p.proc is not None else 0
        dv.stop()
        dead.close()
    assert rc == 0, f"postern exited with {rc} on SIGTERM\n{tail(p.log_text(), 30)}"
