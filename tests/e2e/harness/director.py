"""route = "user" (the director): `postern ctl` against a running postern, and the config of a
route = "user" gateway in front of several servers.

    out = ctl(p, "servers")                     # CtlResult(rc, out, err), rc 0 expected
    ctl_json(p, "user", "alice")["data"]        # the answer's data
    placed(p, "imap", "alice") -> "127.0.0.11:PORT"
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from .postern import Postern, PosternConfig, binary_path

# Hosts of the servers of a route = "user" test: placement is by host, so each server gets
# its own loopback address.
HOSTS = ("127.0.0.11", "127.0.0.12", "127.0.0.13")

FAST_HEALTH = {"interval": "200ms", "timeout": "200ms", "fall": 1, "rise": 1}


@dataclass
class CtlResult:
    rc: int
    out: str
    err: str


def socket_of(p: Postern) -> Path:
    """The control socket of a harness postern (state_dir/control.sock)."""
    return Path(p.config.data["server"]["state_dir"]) / "control.sock"


def ctl(p: Postern, *args: str, prefix: Sequence[str] = (), timeout: float = 15.0) -> CtlResult:
    """Runs `postern ctl --socket <p's socket> ARGS` (`prefix`, e.g. setpriv, goes first)."""
    cmd = [*prefix, str(binary_path()), "ctl", "--socket", str(socket_of(p)), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return CtlResult(r.returncode, r.stdout, r.stderr)


def ctl_json(p: Postern, *args: str) -> dict[str, Any]:
    """`postern ctl --json ARGS`, which must succeed; the parsed answer."""
    r = ctl(p, "--json", *args)
    assert r.rc == 0, f"postern ctl {' '.join(args)}: rc {r.rc}\n{r.out}\n{r.err}"
    return json.loads(r.out)


def placed(p: Postern, backend: str, user: str) -> Optional[str]:
    """The server `ctl user` says `user` is routed to in `backend` (None: nowhere)."""
    for entry in ctl_json(p, "user", user)["data"]["placements"]:
        if entry["backend"] == backend:
            return entry["server"]
    raise AssertionError(f"backend {backend} does not route by user")


def route_user_config(
    cfg: PosternConfig,
    backends: dict[str, tuple[str, list[str]]],
    *,
    user_map: Optional[Path] = None,
    health: Optional[dict[str, Any]] = None,
    tls: str = "implicit",
    **backend_kw: Any,
) -> PosternConfig:
    """Adds, for each `name: (protocol, servers)`, a route = "user" backend `name` and a
    listener `name` (implicit TLS unless `tls` says starttls) in front of it."""
    for name, (protocol, servers) in backends.items():
        extra = dict(backend_kw)
        if user_map is not None:
            extra["user_map"] = str(user_map)
        cfg.backend(name, servers, route="user", health=health or FAST_HEALTH, **extra)
        cfg.listener(name, protocol, name, tls=tls)
    return cfg
