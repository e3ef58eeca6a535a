"""ACME (issue 14) against pebble, Let's Encrypt's RFC 8555 test CA: full orders by tls-alpn-01
and http-01, the issued certificate served on IMAPS to a real client that trusts only pebble's
root, a restart that serves the stored certificate with no new order, a forced renewal under a
handshake loop with zero failed handshakes, and a CA that is down (postern keeps serving, retries,
and gets its certificate once the CA is back)."""

from __future__ import annotations

import grp
import imaplib
import pwd
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
    PANIC_MARKERS,
    Pebble,
    Postern,
    check_config,
    message_is,
    pem_to_der,
    run_expecting_failure,
    served_cert_der,
    tls_connect,
    wait_for,
)

NAMES = ["mail.acme.test", "imap.acme.test"]
OBTAINED = "ACME certificate obtained and installed"
FAILED = "ACME order failed"


def acme_config(postern_factory, dovecot, pebble: Pebble, challenge: str = "tls-alpn-01", **acme_extra):
    """An imaps listener in front of the shared Dovecot, no [[tls.certificate]] (the fallback is
    the self-signed pair), and [tls.acme] against `pebble`."""
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    tls = cfg.section("tls")
    tls.pop("certificate", None)
    tls["acme"] = pebble.acme_section(NAMES, challenge, **acme_extra)
    return cfg


def acme_dir(gw: Postern) -> Path:
    assert gw.config is not None
    return Path(gw.config.data["server"]["state_dir"]) / "acme"


def wait_obtained(gw: Postern, after: int = 0, timeout: float = 30.0) -> dict:
    return gw.wait_for_record(message_is(OBTAINED), timeout=timeout, what="the ACME certificate", after=after)[0]


class Imaps(imaplib.IMAP4):
    """imaplib over TLS to 127.0.0.1 while verifying the certificate for `name` (SNI too)."""

    def __init__(self, addr: tuple[str, int], ctx: ssl.SSLContext, name: str) -> None:
        self._addr, self._ctx, self._name = addr, ctx, name
        super().__init__(addr[0], addr[1], timeout=10)

    def _create_socket(self, timeout):
        return tls_connect(self._addr, self._ctx, server_hostname=self._name, timeout=timeout)


def test_tls_alpn_01_certificate_is_served_on_imaps_and_trusted_by_a_mail_client(
    postern_bin, postern_factory, pebble, dovecot, mailbox
):
    cfg = acme_config(postern_factory, dovecot, pebble)

    # check-config explains what will happen: names, CA, challenge, where postern listens.
    res = check_config(postern_bin, cfg.write())
    assert res.returncode == 0, res.stdout + res.stderr
    for text in (*NAMES, pebble.directory, "tls-alpn-01", pebble.challenge_listen("tls-alpn-01"),
                 "no certificate yet", "self-signed"):
        assert text in res.stdout, f"{text!r} not in check-config output:\n{res.stdout}"

    started = time.monotonic()
    gw = postern_factory.start(cfg)
    waiting = gw.one_record("no certificate from the ACME server yet; serving the fallback certificate until the CA issues one")
    assert waiting["serving"] == "the self-signed certificate"
    obtained = wait_obtained(gw)
    print(f"tls-alpn-01 order: {obtained['took_ms']} ms (postern's own measure), {time.monotonic() - started:.2f} s from start")

    # A real IMAP client that trusts only pebble's root logs in under both names.
    ctx = pebble.client_context()
    for name in NAMES:
        imap = Imaps(gw.addr("imaps"), ctx, name)
        try:
            assert imap.login(mailbox.user, mailbox.password)[0] == "OK"
            assert imap.select("INBOX")[0] == "OK"
        finally:
            imap.logout()

    # The certificate joined the store like a file certificate: reload and expiry metrics.
    m = gw.metrics()
    assert m.value("postern_certificate_reloads_total", result="ok") >= 1
    expiry = m.value("postern_certificate_expiry_timestamp_seconds", name=NAMES[0])
    assert expiry > time.time(), expiry

    # Files under state_dir/acme, 0600, and `cert inspect` reads them.
    d = acme_dir(gw)
    for path in (d / "fullchain.pem", d / "privkey.pem", *(d / "accounts").iterdir()):
        assert (path.stat().st_mode & 0o777) == 0o600, f"{path} {oct(path.stat().st_mode)}"
    assert (d.stat().st_mode & 0o777) == 0o700
    report = subprocess.run([str(postern_bin), "cert", "inspect", str(d / "fullchain.pem"), "--key", str(d / "privkey.pem")],
                            capture_output=True, text=True, timeout=30)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "mail.acme.test, imap.acme.test" in report.stdout and "Pebble Intermediate" in report.stdout, report.stdout
    assert "certbot" not in report.stdout, report.stdout

    # check-config now reports the stored certificate and its renewal.
    res = check_config(postern_bin, gw.config_path)
    assert res.returncode == 0 and "renewal from" in res.stdout, res.stdout


def test_http_01_order_and_a_responder_that_serves_only_open_tokens(postern_factory, pebble, dovecot):
    gw = postern_factory.start(acme_config(postern_factory, dovecot, pebble, challenge="http-01"))
    obtained = wait_obtained(gw)
    print(f"http-01 order: {obtained['took_ms']} ms")
    assert gw.find_records(message_is("answered an http-01 validation")), "pebble never asked postern"

    # Served and trusted on the IMAPS listener.
    der = served_cert_der(gw.addr("imaps"), NAMES[1])
    assert der == pem_to_der(acme_dir(gw) / "fullchain.pem")
    with tls_connect(gw.addr("imaps"), pebble.client_context(), server_hostname=NAMES[1]) as tls:
        assert tls.recv(64).startswith(b"* OK")

    # With no order open, the responder has nothing to give: 404 for every path.
    base = f"http://127.0.0.1:{pebble.http_port}"
    for path in ("/.well-known/acme-challenge/anything", "/", "/index.html"):
        try:
            urllib.request.urlopen(base + path, timeout=5)  # noqa: S310 (loopback)
            raise AssertionError(f"{path} answered")
        except urllib.error.HTTPError as e:
            assert e.code == 404, (path, e.code)


def test_restart_serves_the_stored_certificate_at_once_with_no_new_order(postern_factory, pebble, dovecot):
    cfg = acme_config(postern_factory, dovecot, pebble)
    before = pebble.order_count()
    gw = postern_factory.start(cfg)
    wait_obtained(gw)
    assert gw.stop() == 0
    orders = pebble.order_count()
    assert orders == before + 1, (before, orders)
    stored = pem_to_der(acme_dir(gw) / "fullchain.pem")

    again = postern_factory.start(cfg)
    # The first handshake after `ready` already gets the stored certificate, trusted.
    with tls_connect(again.addr("imaps"), pebble.client_context(), server_hostname=NAMES[0]) as tls:
        assert tls.getpeercert(binary_form=True) == stored
    again.wait_for_record(message_is("ACME certificate renewal scheduled"), what="the renewal schedule")
    assert not again.find_records(lambda r: str(r.get("message", "")).startswith("no certificate")), "it waited for the CA"
    assert not again.find_records(message_is("created an ACME account")), "the stored account was not reused"
    assert pebble.order_count() == orders, "a new order was placed"


@dataclass
class HandshakeLoop:
    """Full handshakes in a loop on one thread, verifying against pebble's root, recording each
    leaf certificate and every failure."""

    addr: tuple[str, int]
    ctx: ssl.SSLContext
    name: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    leaves: list[bytes] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, limit: int = 50_000, seconds: float = 60.0) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and self.ok + len(self.failures) < limit and time.monotonic() < deadline:
            try:
                with tls_connect(self.addr, self.ctx, server_hostname=self.name, timeout=5) as tls:
                    der = tls.getpeercert(binary_form=True)
                self.ok += 1
                if not self.leaves or self.leaves[-1] != der:
                    self.leaves.append(der)
            except (OSError, ssl.SSLError) as e:
                self.failures.append(repr(e))


def test_forced_renewal_swaps_the_certificate_with_zero_failed_handshakes(postern_factory, pebble_factory, dovecot):
    # 6 s certificates and renew_before = 1h: postern renews at half the lifetime (and says so)
    # instead of ordering in a loop.
    pebble = pebble_factory(validity=6)
    gw = postern_factory.start(acme_config(postern_factory, dovecot, pebble, renew_before="1h"))
    wait_obtained(gw)
    gw.wait_for_record(message_is("tls.acme.renew_before is not shorter than the certificate's lifetime; renewing at half its lifetime instead"))
    reloads = gw.metrics().value("postern_certificate_reloads_total", result="ok")
    expiry = gw.metrics().value("postern_certificate_expiry_timestamp_seconds", name=NAMES[0])
    mark = gw.log_mark()

    loop = HandshakeLoop(gw.addr("imaps"), pebble.client_context(), NAMES[0])
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        wait_obtained(gw, after=mark, timeout=20)
        # keep going a little past the swap, then stop
        wait_for(lambda: len(loop.leaves) >= 2 and loop.ok > 20, 10, "handshakes with the new certificate")
    finally:
        loop.stop.set()
        thread.join(timeout=30)
    print(f"renewal under load: {loop.ok} handshakes, {len(loop.failures)} failed, {len(loop.leaves)} certificates seen")
    assert loop.failures == [], loop.failures[:5]
    assert len(loop.leaves) == 2, f"{len(loop.leaves)} distinct certificates"
    assert loop.leaves[-1] == pem_to_der(acme_dir(gw) / "fullchain.pem")
    m = gw.metrics()
    assert m.value("postern_certificate_reloads_total", result="ok") == reloads + 1
    assert m.value("postern_certificate_expiry_timestamp_seconds", name=NAMES[0]) > expiry

    # The CA goes away before the next renewal: the order fails with the reason logged, and the
    # certificate in service stays in service.
    pebble.stop()
    mark = gw.log_mark()
    failed = gw.wait_for_record(message_is(FAILED), after=mark, timeout=20, what="the failed renewal")[0]
    assert "cannot reach the ACME server" in failed["error"], failed
    assert failed["still_serving"] == "the current ACME certificate", failed
    with tls_connect(gw.addr("imaps"), ssl._create_unverified_context(), server_hostname=NAMES[0]) as tls:
        assert tls.getpeercert(binary_form=True) == loop.leaves[-1]


def test_a_ca_that_is_down_leaves_postern_serving_and_retrying(postern_factory, pebble_factory, dovecot):
    pebble = pebble_factory(start=False)  # its ports are known; nothing listens yet
    gw = postern_factory.start(acme_config(postern_factory, dovecot, pebble))
    selfsigned = pem_to_der(Path(gw.config.data["server"]["state_dir"]) / "selfsigned" / "fullchain.pem")

    first, second = gw.wait_for_record(message_is(FAILED), count=2, timeout=20, what="two failed attempts")[:2]
    for rec in (first, second):
        assert "cannot reach the ACME server" in rec["error"] and pebble.directory in rec["error"], rec
        assert rec["still_serving"] == "the configured or self-signed certificate", rec
    # Backoff: 2 s, then 4 s (each up to a quarter more).
    assert 2.0 <= first["retry_in_secs"] <= 2.5 and 4.0 <= second["retry_in_secs"] <= 5.0, (first, second)
    assert served_cert_der(gw.addr("imaps"), NAMES[0]) == selfsigned

    # The CA comes back: the next retry gets the certificate, and it is served.
    pebble.start()
    wait_obtained(gw, timeout=30)
    with tls_connect(gw.addr("imaps"), pebble.client_context(), server_hostname=NAMES[0]) as tls:
        assert tls.recv(64).startswith(b"* OK")


# ---- bad input: a clear error, nothing lost, postern still serving ------------------------------

def test_unusable_ca_roots_and_a_busy_challenge_port_refuse_to_start_with_a_clear_error(
    postern_bin, postern_factory, pebble, dovecot, tmp_path
):
    cfg = acme_config(postern_factory, dovecot, pebble)
    garbage = tmp_path / "roots.pem"
    garbage.write_text("this is not a certificate\n")
    cfg.section("tls")["acme"]["ca_roots"] = str(garbage)
    path = cfg.write()
    for res in (check_config(postern_bin, path), run_expecting_failure(postern_bin, path)):
        out = res.stdout + (res.stderr or "")
        assert res.returncode == 2, out
        assert f"tls.acme.ca_roots = {garbage}" in out and "BEGIN CERTIFICATE" in out, out
        assert not PANIC_MARKERS.search(out), out

    # Something else holds the challenge port: exit 1, naming the key and the address.
    cfg = acme_config(postern_factory, dovecot, pebble)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", pebble.tls_port))
        busy.listen(1)
        res = run_expecting_failure(postern_bin, cfg.write())
    assert res.returncode == 1, res.stdout
    assert f"cannot listen on tls.acme.challenge_listen = 127.0.0.1:{pebble.tls_port}" in res.stdout, res.stdout


def test_a_damaged_stored_certificate_is_replaced_not_fatal(postern_factory, pebble, dovecot):
    cfg = acme_config(postern_factory, dovecot, pebble)
    gw = postern_factory.start(cfg)
    wait_obtained(gw)
    assert gw.stop() == 0
    key = acme_dir(gw) / "privkey.pem"
    key.write_text(key.read_text()[:40])  # truncated, as by a full disk

    again = postern_factory.start(cfg)
    again.one_record("the stored ACME certificate does not load; serving without it until the ACME server issues a new one")
    wait_obtained(again)
    with tls_connect(again.addr("imaps"), pebble.client_context(), server_hostname=NAMES[0]) as tls:
        assert tls.getpeercert(binary_form=True) == pem_to_der(acme_dir(gw) / "fullchain.pem")


def test_with_a_privilege_drop_the_acme_files_belong_to_the_user(postern_factory, pebble, dovecot):
    cfg = acme_config(postern_factory, dovecot, pebble)
    cfg.section("server").update(user="nobody", group="nogroup")
    gw = postern_factory.start(cfg)
    wait_obtained(gw)
    d = acme_dir(gw)
    nobody, nogroup = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    for path in (d, d / "accounts", d / "fullchain.pem", d / "privkey.pem", *(d / "accounts").iterdir()):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (nobody, nogroup), f"{path}: {st.st_uid}:{st.st_gid}"
    with tls_connect(gw.addr("imaps"), pebble.client_context(), server_hostname=NAMES[0]) as tls:
        assert tls.recv(64).startswith(b"* OK")
