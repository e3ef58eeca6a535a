"""A scripted TCP backend for cases Dovecot cannot produce on demand (half-close, exact bytes).

`ReadAllBackend`: greets, reads until the client's EOF (FIN), then answers with a summary line
and a payload, then closes. Through postern this proves that the client's close is passed on
as a half-close (the backend still gets to answer) and that nothing is lost either way.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from dataclasses import dataclass, field
from typing import Optional

from .util import LOOPBACK


@dataclass
class Conversation:
    """What one connection carried: bytes received before EOF, whether EOF came as FIN."""

    received: bytes = b""
    fin: bool = False
    reset: bool = False


class ReadAllBackend:
    def __init__(self, greeting: bytes = b"* OK fake backend ready\r\n", payload: bytes = b"") -> None:
        self.greeting = greeting
        self.payload = payload
        self._srv = socket.create_server((LOOPBACK, 0))
        self.port = self._srv.getsockname()[1]
        self.conversations: list[Conversation] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def server(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def reply_for(self, data: bytes) -> bytes:
        return f"* OK got {len(data)} bytes sha256={hashlib.sha256(data).hexdigest()}\r\n".encode() + self.payload

    def start(self) -> "ReadAllBackend":
        self._srv.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name=f"fake-backend-{self.port}")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._srv.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conv = Conversation()
        conn.settimeout(30)
        try:
            conn.sendall(self.greeting)
            chunks = []
            while True:
                data = conn.recv(65536)
                if not data:
                    conv.fin = True
                    break
                chunks.append(data)
            conv.received = b"".join(chunks)
            conn.sendall(self.reply_for(conv.received))
        except ConnectionResetError:
            conv.reset = True
        except OSError:
            pass
        finally:
            conn.close()
            with self._lock:
                self.conversations.append(conv)

    def with_data(self) -> list[Conversation]:
        """Conversations that carried bytes (postern's health probes may send some too)."""
        with self._lock:
            return [c for c in self.conversations if c.received]
