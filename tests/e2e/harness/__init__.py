"""Test harness for postern's end-to-end tests: a real Dovecot, an SMTP sink, fake backends,
test certificates, the postern process, its admin endpoint and logs, and the clients.
See tests/e2e/README.md for the map of modules."""

from .certs import CertPair, TestCa, install_cert, make_ca, make_self_signed, pem_to_der, served_cert_der
from .clients import MemoryTlsClient, curl, imaps, pop3s, smtps
from .deflate import Deflated
from .dovecot import Dovecot, ZlibDovecot, make_message
from .fake_backend import CloseAfter, Connection, ReadAllBackend, ScriptedBackend, Silent, imap_responder, smtp_responder
from .line_client import LineClient, read_line, read_until_eof
from .metrics import HttpResponse, Metrics, Sample, http_get, parse_exposition
from .notify import NotifySocket
from .pebble import Pebble
from .pool import backend_of, up, wait_up
from .postern import (
    PANIC_MARKERS,
    Postern,
    PosternConfig,
    PosternStartError,
    binary_path,
    check_config,
    message_is,
    parse_addr,
    parse_log_line,
    run_expecting_failure,
)
from .procs import children, open_fds, proc_ids, wait_no_children, zombies
from .proxy import ProxyHeader, parse_proxy, proxy_v1, proxy_v1_unknown, proxy_v2
from .sessions import ConnectLoop, Held, IdleWatcher, SessionRun, imap_hello, run_sessions
from .smtp_sink import SmtpSink
from .sockets import Source, connect, local_of, tls_connect
from .util import LOOPBACK, WaitTimeout, closed_port, free_port, make_test_root, port_answers, remove_tree, tail, wait_for

__all__ = [
    "CertPair", "TestCa", "install_cert", "make_ca", "make_self_signed", "pem_to_der", "served_cert_der",
    "MemoryTlsClient", "curl", "imaps", "pop3s", "smtps",
    "Deflated", "Dovecot", "ZlibDovecot", "make_message",
    "CloseAfter", "Connection", "ReadAllBackend", "ScriptedBackend", "Silent", "imap_responder", "smtp_responder",
    "LineClient", "read_line", "read_until_eof",
    "HttpResponse", "Metrics", "Sample", "http_get", "parse_exposition",
    "NotifySocket", "Pebble", "backend_of", "up", "wait_up",
    "PANIC_MARKERS", "Postern", "PosternConfig", "PosternStartError", "binary_path", "check_config", "message_is", "parse_addr",
    "parse_log_line", "run_expecting_failure",
    "children", "open_fds", "proc_ids", "wait_no_children", "zombies",
    "ProxyHeader", "parse_proxy", "proxy_v1", "proxy_v1_unknown", "proxy_v2",
    "ConnectLoop", "Held", "IdleWatcher", "SessionRun", "imap_hello", "run_sessions",
    "SmtpSink", "Source", "connect", "local_of", "tls_connect",
    "LOOPBACK", "WaitTimeout", "closed_port", "free_port", "make_test_root", "port_answers", "remove_tree", "tail", "wait_for",
]
