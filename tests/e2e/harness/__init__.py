"""Test harness for postern's end-to-end tests: a real Dovecot, an SMTP sink, test
certificates, the postern process, its admin endpoint and logs. See tests/e2e/README.md."""

from .certs import CertPair, make_self_signed
from .clients import CountingClient, MemoryTlsClient, curl, imaps, pop3s, read_line, read_until_eof, smtps, tls_connect
from .dovecot import Dovecot, make_message
from .fake_backend import ReadAllBackend
from .metrics import HttpResponse, Metrics, Sample, http_get, parse_exposition
from .postern import Postern, PosternConfig, PosternStartError, binary_path, check_config, parse_addr, parse_log_line
from .smtp_sink import SmtpSink
from .util import LOOPBACK, WaitTimeout, closed_port, free_port, make_test_root, port_answers, remove_tree, wait_for

__all__ = [
    "CertPair", "make_self_signed", "CountingClient", "MemoryTlsClient", "curl", "imaps", "pop3s", "read_line", "read_until_eof", "smtps", "tls_connect",
    "Dovecot", "make_message", "ReadAllBackend", "HttpResponse", "Metrics", "Sample", "http_get", "parse_exposition",
    "Postern", "PosternConfig", "PosternStartError", "binary_path", "check_config", "parse_addr", "parse_log_line",
    "SmtpSink", "LOOPBACK", "WaitTimeout", "closed_port", "free_port", "make_test_root", "port_answers",
    "remove_tree", "wait_for",
]
