"""The backend pool seen through postern's own outputs: which server a session used (the
`backend` field of its `session ended` line) and `postern_backend_up`; a postern in front of
a list of servers, and sessions that report the server they got."""

from __future__ import annotations

import ssl
from typing import Optional

from .postern import Postern
from .sessions import imap_hello
from .sockets import Source
from .util import wait_for


def backend_of(gw: Postern, local: str, after: int = 0, timeout: float = 10.0) -> str:
    """The `backend` field of the `session ended` line for client `local` ('ip:port')."""
    rec = gw.wait_session_end(timeout=timeout, after=after, peer=local)[0]
    return str(rec.get("backend", ""))


def up(gw: Postern, backend: str, server: str) -> Optional[float]:
    """postern_backend_up{backend, server}, None when the series is absent."""
    return gw.metrics().value("postern_backend_up", default=None, backend=backend, server=server)


def wait_up(gw: Postern, backend: str, server: str, want: float, timeout: float = 10.0) -> None:
    wait_for(lambda: up(gw, backend, server) == want, timeout,
             f"postern_backend_up{{backend={backend!r},server={server!r}}} == {want}",
             interval=0.02, on_timeout=lambda: _up_lines(gw))


def _up_lines(gw: Postern) -> str:
    try:
        return "\n".join(line for line in gw.metrics().text.splitlines() if line.startswith("postern_backend"))
    except Exception as e:  # noqa: BLE001 (only for a failure message)
        return f"(metrics unavailable: {e})"


# probes every 200 ms: a server goes down or up within about half a second
FAST_HEALTH = {"interval": "200ms", "timeout": "100ms", "fall": 2, "rise": 2}


def imap_pool(postern_factory, servers: list[str], **backend_kw) -> Postern:
    """A postern whose implicit-TLS listener `imaps` serves backend `pool` over `servers`."""
    cfg = postern_factory.config()
    cfg.backend("pool", servers, **backend_kw)
    cfg.listener("imaps", "imap", "pool")
    return postern_factory.start(cfg)


def session_backend(gw: Postern, ctx: ssl.SSLContext, source: Source = None) -> str:
    """One short IMAP session (imap_hello) at `imaps`; the server it used, read after it
    ended (so the pool's active count is back down when this returns)."""
    mark = gw.log_mark()
    local = imap_hello(gw.addr("imaps"), ctx, source)
    return backend_of(gw, local, after=mark)


def session_backends(gw: Postern, ctx: ssl.SSLContext, n: int, source: Source = None) -> list[str]:
    """n sequential sessions' servers (see session_backend); the first failure raises."""
    return [session_backend(gw, ctx, source) for _ in range(n)]
