"""Certificates through the real binary (issue 3): `cert generate` / `cert inspect`, serving
what was generated with host-name verification, clear refusals of bad keys at start, SNI,
the self-signed default, and hot reload without a signal."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from harness import PosternConfig, pem_to_der, served_cert_der
from harness.clients import imaps

ENCRYPTED_PASS = "Pw-Cert-Pass-42"


def run_cli(postern_bin: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run([str(postern_bin), *args], capture_output=True, text=True, timeout=timeout)


def generate(postern_bin: Path, out: Path, *names: str, key_type: str = "ecdsa-p256") -> tuple[Path, Path]:
    args = ["cert", "generate", "--out", str(out), "--key-type", key_type]
    for n in names:
        args += ["--name", n]
    res = run_cli(postern_bin, *args)
    assert res.returncode == 0, res.stderr
    return out / "fullchain.pem", out / "privkey.pem"


def config_with(factory, dovecot, cert: Path, key: Path | None, **tls_extra) -> PosternConfig:
    cfg = factory.config(dovecot, protocols=("imap",))
    entry = {"cert": str(cert)}
    if key is not None:
        entry["key"] = str(key)
    cfg.section("tls").update({"certificate": [entry], **tls_extra})
    return cfg


def test_generate_inspect_serve_round_trip(postern_bin, postern_factory, dovecot, mailbox, tmp_path):
    cert, key = generate(postern_bin, tmp_path / "tls", "mail.example.test", "127.0.0.1")
    assert (key.stat().st_mode & 0o777) == 0o600, oct(key.stat().st_mode)

    report = run_cli(postern_bin, "cert", "inspect", str(cert), "--key", str(key))
    assert report.returncode == 0, report.stdout + report.stderr
    assert "mail.example.test" in report.stdout
    assert "match" in report.stdout.lower()

    gw = postern_factory.start(config_with(postern_factory, dovecot, cert, key))
    # A client that trusts the generated certificate as its CA verifies the host name.
    ctx = ssl.create_default_context(cafile=str(cert))
    host, port = gw.addr("imaps")
    with socket.create_connection((host, port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="mail.example.test") as tls:
            assert tls.recv(64).startswith(b"* OK")
    with pytest.raises(ssl.SSLCertVerificationError):
        with socket.create_connection((host, port), timeout=5) as raw:
            ctx.wrap_socket(raw, server_hostname="other.example.test")
    # And a real IMAP session works over it.
    m = imaplib_login(gw.addr("imaps"), ctx, "mail.example.test", mailbox)
    assert m == "OK"


def imaplib_login(addr, ctx, server_name, mailbox) -> str:
    import imaplib

    class Named(imaplib.IMAP4_SSL):
        def _create_socket(self, timeout):
            sock = socket.create_connection((self.host, self.port), timeout)
            return self.ssl_context.wrap_socket(sock, server_hostname=server_name)

    m = Named(addr[0], addr[1], ssl_context=ctx, timeout=10)
    typ, _ = m.login(mailbox.user, mailbox.password)
    m.logout()
    return typ


def test_rsa_key_type(postern_bin, tmp_path):
    cert, key = generate(postern_bin, tmp_path, "rsa.example.test", key_type="rsa2048")
    report = run_cli(postern_bin, "cert", "inspect", str(cert), "--key", str(key))
    assert report.returncode == 0, report.stdout
    assert "RSA" in report.stdout.upper()


def encrypted_key(tmp_path: Path, plain_key: Path) -> Path:
    out = tmp_path / "encrypted.pem"
    subprocess.run(
        ["openssl", "pkey", "-in", str(plain_key), "-out", str(out), "-aes256", "-passout", f"pass:{ENCRYPTED_PASS}"],
        check=True, capture_output=True,
    )
    out.chmod(0o600)
    return out


def test_encrypted_key_is_refused_with_the_fix(postern_bin, postern_factory, dovecot, tmp_path):
    cert, key = generate(postern_bin, tmp_path / "tls", "mail.example.test")
    enc = encrypted_key(tmp_path, key)

    report = run_cli(postern_bin, "cert", "inspect", str(cert), "--key", str(enc))
    assert report.returncode == 1, report.stdout
    assert "encrypted" in report.stdout.lower() and "openssl" in report.stdout, report.stdout

    cfg = config_with(postern_factory, dovecot, cert, enc)
    path = cfg.write()
    check = run_cli(postern_bin, "check-config", "-c", str(path))
    assert check.returncode == 2, check.stdout + check.stderr
    msg = check.stderr
    assert str(enc) in msg and "encrypted" in msg.lower() and "openssl" in msg, msg

    run = run_cli(postern_bin, "run", "-c", str(path), timeout=30)
    assert run.returncode == 2, run.stderr
    assert str(enc) in run.stderr and "encrypted" in run.stderr.lower()
    assert "panicked" not in run.stderr


def test_mismatched_key_is_refused(postern_bin, postern_factory, dovecot, tmp_path):
    cert, _ = generate(postern_bin, tmp_path / "a", "a.example.test")
    _, other_key = generate(postern_bin, tmp_path / "b", "b.example.test")
    path = config_with(postern_factory, dovecot, cert, other_key).write()
    check = run_cli(postern_bin, "check-config", "-c", str(path))
    assert check.returncode == 2
    assert str(other_key) in check.stderr and "match" in check.stderr.lower(), check.stderr


def test_strict_permissions_refuse_a_readable_key(postern_bin, postern_factory, dovecot, tmp_path):
    cert, key = generate(postern_bin, tmp_path / "tls", "mail.example.test")
    key.chmod(0o644)
    path = config_with(postern_factory, dovecot, cert, key, key_permissions="strict").write()
    check = run_cli(postern_bin, "check-config", "-c", str(path))
    assert check.returncode == 2
    assert str(key) in check.stderr and "chmod 600" in check.stderr, check.stderr
    # warn mode serves, with one warning naming the file and its mode
    cfg = config_with(postern_factory, dovecot, cert, key, key_permissions="warn")
    gw = postern_factory.start(cfg)
    warn = gw.find_records(lambda r: r.get("level") == "WARN" and str(key) in str(r.get("message", "")))
    assert warn, "no permission warning naming the key"
    assert "0644" in warn[0]["message"], warn[0]


def test_combined_pem_and_sni(postern_bin, postern_factory, dovecot, tmp_path):
    a_cert, a_key = generate(postern_bin, tmp_path / "a", "a.example.test")
    b_cert, b_key = generate(postern_bin, tmp_path / "b", "b.example.test", "*.wild.example.test")
    combined = tmp_path / "b" / "combined.pem"
    combined.write_text(b_cert.read_text() + b_key.read_text())
    combined.chmod(0o600)
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    cfg.section("tls")["certificate"] = [{"cert": str(a_cert), "key": str(a_key)}, {"cert": str(combined)}]
    gw = postern_factory.start(cfg)
    addr = gw.addr("imaps")
    assert served_cert_der(addr, "a.example.test") == pem_to_der(a_cert)
    assert served_cert_der(addr, "b.example.test") == pem_to_der(b_cert)
    assert served_cert_der(addr, "x.wild.example.test") == pem_to_der(b_cert)
    # no SNI (most IMAP clients) and an unknown name get the first certificate
    assert served_cert_der(addr, None) == pem_to_der(a_cert)
    assert served_cert_der(addr, "unknown.example.test") == pem_to_der(a_cert)


def test_self_signed_default_is_generated_once_and_reused(postern_factory, dovecot):
    cfg = postern_factory.config(dovecot, protocols=("imap",))
    cfg.section("tls")["certificate"] = []
    gw = postern_factory.start(cfg)
    state = Path(cfg.data["server"]["state_dir"]) / "selfsigned"
    key = state / "privkey.pem"
    assert (key.stat().st_mode & 0o777) == 0o600
    assert gw.find_records(lambda r: r.get("level") == "WARN" and "self-signed" in str(r.get("message", ""))), "no self-signed warning"
    first = served_cert_der(gw.addr("imaps"), None)
    assert first == pem_to_der(state / "fullchain.pem")
    assert gw.stop() == 0
    again = postern_factory.start(cfg)
    assert served_cert_der(again.addr("imaps"), None) == first, "self-signed certificate was not reused"


def test_hot_reload_by_rename_without_a_signal(postern_bin, postern_factory, dovecot, tmp_path):
    live = tmp_path / "live"
    cert, key = generate(postern_bin, live, "mail.example.test")
    gw = postern_factory.start(config_with(postern_factory, dovecot, cert, key))
    addr = gw.addr("imaps")
    old = served_cert_der(addr, None)

    # certbot style: new files written elsewhere, renamed over the old ones
    new_cert, new_key = generate(postern_bin, tmp_path / "next", "mail.example.test")
    os.replace(new_key, key)
    os.replace(new_cert, cert)
    deadline = time.monotonic() + 5
    while served_cert_der(addr, None) == old:
        assert time.monotonic() < deadline, "new certificate not served within 5 s"
        time.sleep(0.05)
    assert served_cert_der(addr, None) == pem_to_der(cert)
    gw.wait_metric("postern_certificate_reloads_total", lambda v: v >= 1, result="ok")

    # a broken replacement keeps the served certificate and counts an error
    served = served_cert_der(addr, None)
    tmp = live / ".broken"
    tmp.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")
    os.replace(tmp, cert)
    gw.wait_metric("postern_certificate_reloads_total", lambda v: v >= 1, result="error")
    assert served_cert_der(addr, None) == served
    assert gw.alive()
