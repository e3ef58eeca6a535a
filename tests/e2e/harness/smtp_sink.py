"""A tiny SMTP server that accepts and keeps every message: Dovecot's submission relay target."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from aiosmtpd.controller import Controller

from .util import LOOPBACK, free_port, wait_for


@dataclass(frozen=True)
class Received:
    """One message the sink accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes


class _Handler:
    def __init__(self, sink: "SmtpSink") -> None:
        self.sink = sink

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        self.sink._add(Received(envelope.mail_from, tuple(envelope.rcpt_tos), bytes(envelope.original_content or envelope.content)))
        return "250 2.0.0 OK queued"


class SmtpSink:
    """Accepts any envelope without auth on 127.0.0.1:`port`; `messages` holds what arrived."""

    def __init__(self) -> None:
        self.port = free_port()
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._controller = Controller(_Handler(self), hostname=LOOPBACK, port=self.port, ready_timeout=10)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def _add(self, msg: Received) -> None:
        with self._lock:
            self._messages.append(msg)

    @property
    def messages(self) -> list[Received]:
        with self._lock:
            return list(self._messages)

    def wait_for_message(self, contains: bytes, timeout: float = 10.0) -> Received:
        """The first accepted message whose data contains `contains` (polled with a deadline)."""

        def find():
            for m in self.messages:
                if contains in m.data:
                    return m
            return None

        return wait_for(find, timeout, f"a relayed message containing {contains!r}")
