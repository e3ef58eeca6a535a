"""pebble, Let's Encrypt's RFC 8555 test CA (Debian package `pebble`), on loopback for one test.

What the package needs on this kind of machine:
- it ships no certificate for pebble's own HTTPS: `Pebble` makes a test CA and a certificate
  for 127.0.0.1 from it (`ca_roots` is that CA: postern's `tls.acme.ca_roots`);
- pebble resolves the names it validates through `-dnsserver`: `pebble-challtestsrv` (same
  package) answers every A query with 127.0.0.1 and no AAAA, its own challenge servers off;
- `PEBBLE_VA_NOSLEEP=1` removes the random validation delays, `PEBBLE_WFE_NONCEREJECT=0` the
  random bad-nonce rejections, `PEBBLE_AUTHZREUSE=0` the reuse of earlier validations (so every
  order exercises postern's responders);
- the validation ports (`tlsPort`, `httpPort`) are free unprivileged ports: postern's
  `challenge_listen` must be `127.0.0.1:<tls_port>` or `127.0.0.1:<http_port>`;
- the issuing root is new at every start; `client_context()` trusts it (management `/roots/0`);
- it validates each challenge from several connections at once.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path
from typing import Any, Optional

from .util import LOOPBACK, free_port, tail, wait_for

PEBBLE = "pebble"
CHALLTESTSRV = "pebble-challtestsrv"


class Pebble:
    """One pebble + challtestsrv pair. Ports are chosen at construction, so a test can point
    postern at a CA that is not started yet (a CA that is down) and start it later."""

    def __init__(self, workdir: Path, validity: Optional[int] = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.validity = validity
        self.dir_port = free_port()
        self.mgmt_port = free_port()
        self.dns_port = free_port()
        self.chall_mgmt_port = free_port()
        self.tls_port = free_port()
        self.http_port = free_port()
        self.ca_roots = workdir / "pebble-https-ca.pem"
        self._procs: list[subprocess.Popen] = []
        self._logs: list[Path] = []
        self._make_https_cert()

    # ---- addresses ---------------------------------------------------------------------------

    @property
    def directory(self) -> str:
        return f"https://{LOOPBACK}:{self.dir_port}/dir"

    def challenge_listen(self, challenge: str) -> str:
        port = self.tls_port if challenge == "tls-alpn-01" else self.http_port
        return f"{LOOPBACK}:{port}"

    def acme_section(self, domains: list[str], challenge: str = "tls-alpn-01", **extra: Any) -> dict[str, Any]:
        """A `[tls.acme]` table for postern that uses this CA."""
        return {
            "domains": domains,
            "contact": ["mailto:postmaster@acme.test"],
            "directory": self.directory,
            "challenge": challenge,
            "challenge_listen": [self.challenge_listen(challenge)],
            "ca_roots": str(self.ca_roots),
            **extra,
        }

    # ---- process -----------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> "Pebble":
        for tool in (PEBBLE, CHALLTESTSRV):
            if shutil.which(tool) is None:
                raise AssertionError(f"{tool} not found: tests/run installs the Debian package `pebble` (apt-get install pebble)")
        config = {
            "pebble": {
                "listenAddress": f"{LOOPBACK}:{self.dir_port}",
                "managementListenAddress": f"{LOOPBACK}:{self.mgmt_port}",
                "certificate": str(self.workdir / "pebble-https.crt"),
                "privateKey": str(self.workdir / "pebble-https.key"),
                "httpPort": self.http_port,
                "tlsPort": self.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        if self.validity is not None:
            config["pebble"]["certificateValidityPeriod"] = self.validity
        cfg = self.workdir / "pebble.json"
        cfg.write_text(json.dumps(config, indent=2))
        self._spawn("challtestsrv", [
            CHALLTESTSRV,
            "-defaultIPv4", LOOPBACK, "-defaultIPv6", "",
            "-dns01", f"{LOOPBACK}:{self.dns_port}",
            "-http01", "", "-https01", "", "-tlsalpn01", "",
            "-management", f"{LOOPBACK}:{self.chall_mgmt_port}",
        ], {})
        self._spawn("pebble", [PEBBLE, "-config", str(cfg), "-dnsserver", f"{LOOPBACK}:{self.dns_port}"], {
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",
            "PEBBLE_AUTHZREUSE": "0",
        })
        wait_for(self._answers, timeout, "pebble's ACME directory", interval=0.05, on_timeout=self.log_text)
        return self

    def stop(self) -> None:
        """Kill both processes (pebble keeps everything in memory: nothing to shut down)."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        self._procs.clear()

    def running(self) -> bool:
        return bool(self._procs) and all(p.poll() is None for p in self._procs)

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{tail(p.read_text(errors='replace'), 40)}" for p in self._logs if p.exists())

    # ---- what pebble issued ------------------------------------------------------------------

    def issuing_root(self) -> str:
        """PEM of the root pebble issues under (new at every start)."""
        return self._get(f"https://{LOOPBACK}:{self.mgmt_port}/roots/0").decode()

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only pebble's issuing root and checks host names."""
        return ssl.create_default_context(cadata=self.issuing_root())

    def order_count(self) -> int:
        """New-order requests pebble has received (one `POST /order-plz` log line each)."""
        return sum("POST /order-plz" in line for line in self._pebble_log().splitlines())

    # ---- internals ---------------------------------------------------------------------------

    def _pebble_log(self) -> str:
        path = self.workdir / "pebble.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        import os

        log = self.workdir / f"{name}.log"
        self._logs.append(log)
        with open(log, "ab") as out:
            self._procs.append(subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **env}, cwd=self.workdir,
            ))

    def _answers(self) -> bool:
        if any(p.poll() is not None for p in self._procs):
            raise AssertionError(f"pebble exited during startup\n{self.log_text()}")
        try:
            return b"newOrder" in self._get(self.directory, timeout=1.0)
        except OSError:
            return False

    def _get(self, url: str, timeout: float = 5.0) -> bytes:
        ctx = ssl.create_default_context(cafile=str(self.ca_roots))
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as rsp:  # noqa: S310 (loopback)
            return rsp.read()

    def _make_https_cert(self) -> None:
        """The test CA (-> ca_roots) and pebble's HTTPS certificate for 127.0.0.1 signed by it."""
        d = self.workdir
        ca_key, srv_key, csr, ext = d / "pebble-https-ca.key", d / "pebble-https.key", d / "pebble-https.csr", d / "pebble-https.ext"
        ext.write_text(
            f"subjectAltName=IP:{LOOPBACK},DNS:localhost\n"
            "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n"
        )
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        steps = [
            ["openssl", "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(self.ca_roots), "-days", "2",
             "-subj", "/CN=postern test CA for pebble's HTTPS",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"],
            ["openssl", "req", *ec, "-keyout", str(srv_key), "-out", str(csr), "-subj", "/CN=localhost"],
            ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.ca_roots), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(d / "pebble-https.crt"), "-days", "2", "-extfile", str(ext)],
        ]
        for argv in steps:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            if res.returncode != 0:
                raise RuntimeError(f"{' '.join(argv[:3])} failed (rc {res.returncode}): {res.stderr}")
