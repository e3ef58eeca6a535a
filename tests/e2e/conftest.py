"""Fixtures for postern's end-to-end tests. See tests/e2e/README.md for the full list.

Session-wide (started once): a test root (mode 0755), a self-signed certificate, an SMTP sink,
a Dovecot with users alice/bob/carol and a pool of spare users, and `gateway`, a postern
fronting that Dovecot with implicit-TLS listeners `imaps`, `pop3s`, `submissions`.

Per test: `postern_factory` (start postern with any config; stopped with SIGTERM afterwards
and required to exit 0), `dovecot_factory` (a private Dovecot, e.g. to stop it mid-test),
`mailbox` (a fresh user with two known messages), `greeters` (scripted fake backends).

Started on first use, shared by the test_starttls_*.py files: `starttls_env`.

Tests that stop or break a backend must use their own Dovecot from `dovecot_factory`, never
the shared one.
"""

from __future__ import annotations

import hashlib
import itertools
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    CertPair,
    Dovecot,
    Pebble,
    Postern,
    PosternConfig,
    ScriptedBackend,
    SmtpSink,
    binary_path,
    make_message,
    make_self_signed,
    make_test_root,
    remove_tree,
)
from harness.starttls import StartTlsEnv, starttls_env as make_starttls_env  # noqa: E402
from harness.util import tail  # noqa: E402

BIG_MESSAGE_SIZE = 20 * 1024 * 1024


@pytest.fixture(scope="session")
def test_root() -> Iterator[Path]:
    """The run's temp directory (0755: Dovecot's auth process must traverse it)."""
    root = make_test_root()
    yield root
    remove_tree(root)


@pytest.fixture(scope="session")
def postern_bin() -> Path:
    """The binary under test ($POSTERN_BIN, else target/debug/postern)."""
    path = binary_path()
    if not path.exists():
        pytest.fail(f"postern binary not found at {path}: run `cargo build -p postern` or set POSTERN_BIN", pytrace=False)
    return path


@pytest.fixture(scope="session")
def certs(test_root: Path) -> CertPair:
    """Self-signed certificate for mail.test, localhost and 127.0.0.1 (ECDSA P-256)."""
    return make_self_signed(test_root / "certs")


@pytest.fixture(scope="session")
def client_ctx(certs: CertPair) -> ssl.SSLContext:
    """A client SSL context that trusts `certs` and checks host names."""
    return certs.client_context()


@pytest.fixture(scope="session")
def smtp_sink() -> Iterator[SmtpSink]:
    """Where the shared Dovecot's submission service relays accepted mail."""
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
def dovecot_session(test_root: Path, smtp_sink: SmtpSink) -> Iterator[Dovecot]:
    dv = Dovecot(test_root / "dovecot", relay_port=smtp_sink.port)
    dv.deliver("alice", make_message("Welcome alice", "Hello alice, this is message one.\n"))
    dv.deliver("alice", make_message("Second message", "And this is message two.\n"))
    dv.deliver("bob", make_message("Welcome bob", "Hello bob.\n"))
    dv.start()
    yield dv
    dv.stop()


@pytest.fixture
def dovecot(dovecot_session: Dovecot) -> Dovecot:
    """The shared Dovecot (trusted networks 127.0.0.0/8). Restarted if an earlier test broke it."""
    if not dovecot_session.running():
        dovecot_session.start()
    return dovecot_session


@pytest.fixture
def dovecot_factory(test_root: Path, smtp_sink: SmtpSink) -> Iterator[Callable[..., Dovecot]]:
    """make(trusted=True, start=True) -> a private, started Dovecot; stopped after the test."""
    made: list[Dovecot] = []
    counter = itertools.count()

    def make(trusted: bool = True, start: bool = True, **kw: Any) -> Dovecot:
        n = next(counter)
        dv = Dovecot(
            test_root / f"dovecot-{_safe_id()}-{n}",
            name=f"dovetest-{_safe_id()[-20:]}-{n}",
            trusted=trusted,
            relay_port=kw.pop("relay_port", smtp_sink.port),
            spare_users=kw.pop("spare_users", 5),
            **kw,
        )
        made.append(dv)
        if start:
            dv.start()
        return dv

    yield make
    for dv in made:
        dv.stop()


@pytest.fixture(scope="session")
def pebble(test_root: Path) -> Iterator[Pebble]:
    """A pebble CA shared by the tests that need nothing special from it (default certificate
    lifetime, always up); started on first use. Tests that stop it or change its lifetime use
    `pebble_factory`."""
    pb = Pebble(test_root / "pebble-shared").start()
    yield pb
    pb.stop()


@pytest.fixture
def pebble_factory(test_root: Path) -> Iterator[Callable[..., Pebble]]:
    """make(validity=None, start=True) -> a private pebble CA (with pebble-challtestsrv) on
    loopback; `validity` is its certificate lifetime in seconds. Stopped after the test."""
    made: list[Pebble] = []
    counter = itertools.count()

    def make(validity: Optional[int] = None, start: bool = True) -> Pebble:
        pb = Pebble(test_root / f"pebble-{_safe_id()}-{next(counter)}", validity=validity)
        made.append(pb)
        if start:
            pb.start()
        return pb

    yield make
    for pb in made:
        pb.stop()


@dataclass
class Mailbox:
    """A fresh user and the exact bytes of the messages in their INBOX (in order)."""

    user: str
    password: str
    messages: list[bytes]


@pytest.fixture
def mailbox(dovecot: Dovecot) -> Mailbox:
    user, password = dovecot.new_user()
    msgs = [
        make_message(f"First for {user}", f"Hello {user}, one.\n"),
        make_message(f"Second for {user}", f"Hello {user}, two.\n"),
    ]
    for m in msgs:
        dovecot.deliver(user, m)
    return Mailbox(user, password, msgs)


@dataclass
class BigMessage:
    user: str
    password: str
    data: bytes
    sha256: str


@pytest.fixture(scope="session")
def big_message(dovecot_session: Dovecot) -> BigMessage:
    """A user whose INBOX holds one 20 MiB message (and nothing else)."""
    user, password = dovecot_session.new_user()
    data = make_message("big one", "A large message follows.\n", size=BIG_MESSAGE_SIZE)
    dovecot_session.deliver(user, data)
    return BigMessage(user, password, data, hashlib.sha256(data).hexdigest())


def _safe_id() -> str:
    import os
    import re

    test = os.environ.get("PYTEST_CURRENT_TEST", "t").split(" ")[0]
    return re.sub(r"[^A-Za-z0-9]+", "-", test.split("::")[-1])[-40:]


class PosternFactory:
    """Starts postern processes for one test and stops them afterwards.

    config(dovecot=None, **fronting_kw) -> PosternConfig: a fresh config in its own workdir; with
        a Dovecot, the standard imaps/pop3s/submissions listeners in front of it.
    start(config, wait_ready=True, env=None) -> Postern: write the config, run, wait for `ready`.
    """

    def __init__(self, root: Path, binary: Path, certs: CertPair) -> None:
        self.root = root
        self.binary = binary
        self.certs = certs
        self.started: list[Postern] = []
        self._n = itertools.count()

    def workdir(self) -> Path:
        d = self.root / f"postern-{_safe_id()}-{next(self._n)}"
        d.mkdir(parents=True)
        return d

    def config(self, dovecot: Optional[Dovecot] = None, **fronting_kw: Any) -> PosternConfig:
        wd = self.workdir()
        if dovecot is None:
            return PosternConfig(wd, self.certs)
        return PosternConfig.fronting(wd, self.certs, dovecot, **fronting_kw)

    def start(self, config: PosternConfig, wait_ready: bool = True, env: Optional[dict[str, str]] = None, timeout: float = 20.0) -> Postern:
        p = Postern(self.binary, config, config.workdir, env=env)
        self.started.append(p)
        p.start(timeout=timeout, wait_ready=wait_ready)
        return p

    def stop_all(self) -> list[str]:
        problems = []
        for p in self.started:
            if p.proc is None:
                continue
            if p.proc.poll() is not None and p.returncode is None:
                # it died during the test (or the test killed it): report only unexpected deaths
                p._join_reader()
                p.returncode = p.proc.returncode
                if p.returncode != 0 and not p.killed_by_test:
                    problems.append(f"postern (pid {p.pid}) exited by itself with rc {p.returncode}\n{tail(p.log_text(), 30)}")
                continue
            if p.killed_by_test:
                p.kill()
                continue
            try:
                rc = p.stop()
            except AssertionError as e:
                problems.append(str(e))
                continue
            if rc != 0:
                problems.append(f"postern (pid {p.pid}) exited with rc {rc} on SIGTERM (want 0)\n{tail(p.log_text(), 30)}")
        return problems


@pytest.fixture
def postern_factory(test_root: Path, postern_bin: Path, certs: CertPair) -> Iterator[PosternFactory]:
    factory = PosternFactory(test_root, postern_bin, certs)
    yield factory
    problems = factory.stop_all()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def gateway_session(test_root: Path, postern_bin: Path, certs: CertPair, dovecot_session: Dovecot) -> Iterator[Postern]:
    factory = PosternFactory(test_root, postern_bin, certs)
    cfg = PosternConfig.fronting(test_root / "gateway", certs, dovecot_session)
    p = factory.start(cfg)
    yield p
    problems = factory.stop_all()
    if problems:
        # session teardown: print rather than fail, the per-test assertions already ran
        print("\n".join(problems), file=sys.stderr)


@pytest.fixture
def gateway(gateway_session: Postern, dovecot: Dovecot) -> Postern:
    """The shared postern in front of the shared Dovecot: listeners imaps, pop3s, submissions
    (backends imap, pop3, submission). Read-only use: do not stop it or change its backend."""
    if not gateway_session.alive():
        pytest.fail(f"the shared postern died earlier in the run\n{tail(gateway_session.log_text(), 40)}", pytrace=False)
    return gateway_session


@pytest.fixture
def greeters() -> Iterator[Callable[..., list[ScriptedBackend]]]:
    """make(n, **kw) -> n started ScriptedBackends (IMAP-shaped, named g0, g1, ... in the
    order made; `kw` goes to each, e.g. respond=smtp_responder); all stopped after the test."""
    made: list[ScriptedBackend] = []

    def make(n: int, **kw: Any) -> list[ScriptedBackend]:
        gs = [ScriptedBackend(f"g{len(made) + i}", **kw).start() for i in range(n)]
        made.extend(gs)
        return gs

    yield make
    for g in made:
        g.stop()


@pytest.fixture(scope="session")
def starttls_env(test_root: Path, postern_bin: Path, certs: CertPair, smtp_sink: SmtpSink) -> Iterator[StartTlsEnv]:
    """One postern with STARTTLS and implicit listeners per protocol in front of a Dovecot with
    `ssl = yes` (see harness/starttls.py), shared by the test_starttls_*.py files."""
    with make_starttls_env(test_root / "starttls", postern_bin, certs, smtp_sink.port) as env:
        yield env
