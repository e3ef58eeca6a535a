"""The client side of an IMAP session after COMPRESS DEFLATE (RFC 4978): raw deflate both ways."""

from __future__ import annotations

import time
import zlib

from .line_client import LineClient


class Deflated:
    """Wraps a LineClient whose COMPRESS DEFLATE was just accepted. `text` is everything
    inflated so far, `raw` the compressed bytes as received."""

    def __init__(self, conn: LineClient) -> None:
        self.conn = conn
        self.out = zlib.compressobj(wbits=-15)
        self.inflate = zlib.decompressobj(wbits=-15)
        self.text = bytearray()
        self.raw = bytearray(conn.buf)  # anything already read past the OK belongs to the stream
        conn.buf.clear()
        self.text += self.inflate.decompress(bytes(self.raw))

    def send(self, line: bytes) -> None:
        self.conn.send(self.out.compress(line) + self.out.flush(zlib.Z_SYNC_FLUSH))

    def _take(self) -> None:
        chunk = bytes(self.conn.buf)
        self.conn.buf.clear()
        self.raw += chunk
        self.text += self.inflate.decompress(chunk)

    def read_until(self, marker: bytes, timeout: float) -> bytes:
        """Inflated text up to (at least) `marker`; EOFError if the server closes first."""
        deadline = time.monotonic() + timeout
        while marker not in self.text:
            if not self.conn.fill(deadline):
                raise EOFError(f"closed before {marker!r}; got {bytes(self.text[-200:])!r}")
            self._take()
        return bytes(self.text)

    def read_to_eof(self, timeout: float) -> None:
        """Everything until the close; zlib.error if the bytes are not one deflate stream."""
        deadline = time.monotonic() + timeout
        while self.conn.fill(deadline):
            self._take()
