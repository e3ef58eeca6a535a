"""Test certificates, made with the openssl CLI once per test session."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

DEFAULT_NAMES = ("mail.test", "localhost")
DEFAULT_IPS = ("127.0.0.1",)


@dataclass(frozen=True)
class CertPair:
    """A self-signed certificate and its key; the certificate doubles as the clients' CA."""

    cert: Path
    key: Path
    names: tuple[str, ...]

    def client_context(self, verify: bool = True) -> ssl.SSLContext:
        """An SSL context that trusts this certificate (or, with verify=False, anything)."""
        if not verify:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        return ssl.create_default_context(cafile=str(self.cert))

    def combined_pem(self, path: Path) -> Path:
        """Write cert + key into one file (stunnel style) and return its path."""
        path.write_bytes(self.cert.read_bytes() + self.key.read_bytes())
        path.chmod(0o600)
        return path


def make_self_signed(
    directory: Path,
    names: tuple[str, ...] = DEFAULT_NAMES,
    ips: tuple[str, ...] = DEFAULT_IPS,
    days: int = 30,
    stem: str = "server",
    key_type: str = "ec",
) -> CertPair:
    """Generate `<stem>.crt` / `<stem>.key` in `directory`, CN = names[0], SANs = names + ips.

    key_type: "ec" (P-256) or "rsa" (2048 bits).
    """
    directory.mkdir(parents=True, exist_ok=True)
    cert = directory / f"{stem}.crt"
    key = directory / f"{stem}.key"
    san = ",".join([f"DNS:{n}" for n in names] + [f"IP:{i}" for i in ips])
    if key_type == "ec":
        keyopts = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    elif key_type == "rsa":
        keyopts = ["-newkey", "rsa:2048"]
    else:
        raise ValueError(f"unknown key_type {key_type!r}: use 'ec' or 'rsa'")
    cmd = [
        "openssl", "req", "-x509", *keyopts, "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", str(days),
        "-subj", f"/CN={names[0]}",
        "-addext", f"subjectAltName={san}",
        "-addext", "basicConstraints=critical,CA:FALSE",
        "-addext", "keyUsage=critical,digitalSignature,keyEncipherment",
        "-addext", "extendedKeyUsage=serverAuth",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"openssl req failed (rc {res.returncode}): {res.stderr}")
    key.chmod(0o600)
    return CertPair(cert=cert, key=key, names=tuple(names))


@dataclass(frozen=True)
class TestCa:
    """A test CA (its certificate is the `tls_ca` bundle) that issues server certificates."""

    cert: Path
    key: Path

    def issue(self, directory: Path, stem: str, names: tuple[str, ...] = DEFAULT_NAMES, ips: tuple[str, ...] = DEFAULT_IPS, days: int = 30) -> CertPair:
        """`<stem>.crt` / `<stem>.key` signed by this CA, CN = names[0], SANs = names + ips."""
        directory.mkdir(parents=True, exist_ok=True)
        cert, key, csr, ext = (directory / f"{stem}{s}" for s in (".crt", ".key", ".csr", ".ext"))
        san = ",".join([f"DNS:{n}" for n in names] + [f"IP:{i}" for i in ips])
        ext.write_text(
            f"subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        )
        _openssl(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                  "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={names[0]}"])
        _openssl(["x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
                  "-CAcreateserial", "-out", str(cert), "-days", str(days), "-extfile", str(ext)])
        key.chmod(0o600)
        return CertPair(cert=cert, key=key, names=tuple(names))


def make_ca(directory: Path, name: str = "postern test CA", stem: str = "ca", days: int = 30) -> TestCa:
    """A self-signed CA certificate (`<stem>.crt`, CA:TRUE) and its key."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    _openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
              "-keyout", str(key), "-out", str(cert), "-days", str(days), "-subj", f"/CN={name}",
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    key.chmod(0o600)
    return TestCa(cert=cert, key=key)


def _openssl(args: list[str]) -> None:
    res = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed (rc {res.returncode}): {res.stderr}")


def served_cert_der(addr: tuple[str, int], server_name: Optional[str] = None, timeout: float = 5.0) -> bytes:
    """The leaf certificate (DER) a full handshake with addr gets (no verification, no resumption)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(addr, timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return der


def pem_to_der(path: Path) -> bytes:
    """The first certificate of a PEM file (a chain, or cert + key) as DER."""
    text = path.read_text()
    first = text[text.index("-----BEGIN CERTIFICATE-----"): text.index("-----END CERTIFICATE-----") + 25]
    return ssl.PEM_cert_to_DER_cert(first)


def install_cert(pair: CertPair, cert_path: Path, key_path: Path, key_owner: int, group: int) -> None:
    """Put a certificate in place the way an admin (or a certbot hook) should for a postern
    that drops privileges: cert root 0644, key owned by `key_owner` 0600, both group `group`,
    each file swapped in by rename (a watcher never sees half a file)."""
    for src, dst, mode, uid in ((pair.key, key_path, 0o600, key_owner), (pair.cert, cert_path, 0o644, 0)):
        tmp = dst.with_name(f".{dst.name}.new")
        shutil.copyfile(src, tmp)
        os.chown(tmp, uid, group)
        os.chmod(tmp, mode)
        os.replace(tmp, dst)
