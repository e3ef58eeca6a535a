"""The bench's own peers, started as sub-processes by compare.py: the Python asyncio IMAP
backend stand-in and the clients (idle holders, handshakes, bulk streams, line streams,
NOOP round trips). Their CPU is never measured, only the proxy's.

    python3 benches/workloads.py backend          # prints its port, serves until killed
    python3 benches/workloads.py hold PORT N      # (compare.py also accepts these)
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import sys
import time

SNI = "mail.bench.test"
GIB = 1 << 30
# Mail-like text for the literal payloads: 76 characters and CRLF per line, about 1 MiB.
_LINE = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem.\r\n"
TEXT_CHUNK = _LINE * ((1 << 20) // len(_LINE))
# Line-heavy responses (FETCH ENVELOPE, SEARCH, LIST of a big account): untagged lines of
# 80 bytes with CRLF, no literal, about 1 MiB; every byte is outside a literal.
_RESP = b'* 1 FETCH (UID 4711 FLAGS (\\Seen) ENVELOPE ("Mon, 1 Jan 2026" "re: ipsum"))'
RESP_LINE = _RESP + b" " * (78 - len(_RESP)) + b"\r\n"
assert len(RESP_LINE) == 80
LINES_CHUNK = RESP_LINE * ((1 << 20) // len(RESP_LINE))


def client_context() -> ssl.SSLContext:
    """TLS 1.3 only, no verification (client CPU is not measured), no session reuse."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    return ctx


# --------------------------------------------------------------------------- backend


async def _backend_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.transport.set_write_buffer_limits(high=4 << 20)
    chunk = memoryview(b"0123456789abcdef" * (1 << 16))  # 1 MiB, no CR/LF (raw mode)
    text = memoryview(TEXT_CHUNK)
    idle_tag = b"*"
    try:
        writer.write(b"* OK ready\r\n")
        await writer.drain()
        while True:
            line = await reader.readline()
            if not line:
                break
            parts = line.split()
            if len(parts) == 1 and parts[0].upper() == b"DONE":
                writer.write(idle_tag + b" OK IDLE done\r\n")
            elif len(parts) < 2:
                writer.write(b"* BAD no tag\r\n")
            else:
                tag, cmd = parts[0], parts[1].upper()
                if cmd == b"IDLE":
                    idle_tag = tag
                    writer.write(b"+ idling\r\n")
                elif cmd == b"DOWN":
                    left = int(parts[2])
                    while left > 0:
                        n = min(left, len(chunk))
                        writer.write(chunk[:n])
                        left -= n
                        await writer.drain()
                    writer.write(tag + b" OK\r\n")
                elif cmd == b"FETCHBIG":
                    # A message body as a real server sends it: an IMAP literal of text lines.
                    left = int(parts[2])
                    writer.write(b"* 1 FETCH (BODY[] {%d}\r\n" % left)
                    while left > 0:
                        n = min(left, len(text))
                        writer.write(text[:n])
                        left -= n
                        await writer.drain()
                    writer.write(b")\r\n" + tag + b" OK FETCH completed\r\n")
                elif cmd == b"FETCHLINES" or (cmd == b"ID" and b'"bench-lines"' in line):
                    # n bytes of bare response lines: after LOGIN (FETCHLINES n), or before
                    # login as an answer to ID ("bench-lines" "n"), a command any state allows.
                    left = int(parts[2]) if cmd == b"FETCHLINES" else int(line.split(b'"')[3])
                    lines = memoryview(LINES_CHUNK)
                    while left > 0:
                        n = min(left, len(lines))
                        writer.write(lines[:n])
                        left -= n
                        await writer.drain()
                    writer.write(tag + b" OK done\r\n")
                elif cmd == b"APPEND" and parts[-1].startswith(b"{"):
                    left = int(parts[-1].strip(b"{}+"))
                    writer.write(b"+ Ready for literal data\r\n")
                    await writer.drain()
                    while left > 0:
                        data = await reader.read(min(left, 1 << 20))
                        if not data:
                            return
                        left -= len(data)
                    if (await reader.readline()).strip():
                        writer.write(tag + b" BAD junk after literal\r\n")
                    else:
                        writer.write(tag + b" OK APPEND completed\r\n")
                elif cmd == b"UP":
                    left = int(parts[2])
                    while left > 0:
                        data = await reader.read(min(left, 1 << 20))
                        if not data:
                            return
                        left -= len(data)
                    writer.write(tag + b" OK\r\n")
                elif cmd == b"LOGOUT":
                    writer.write(b"* BYE bye\r\n" + tag + b" OK\r\n")
                    await writer.drain()
                    break
                else:
                    writer.write(tag + b" OK done\r\n")
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _backend_main() -> None:
    server = await asyncio.start_server(_backend_session, "127.0.0.1", 0, backlog=4096, limit=1 << 20)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    async with server:
        await server.serve_forever()


# --------------------------------------------------------------------------- clients


async def _expect(reader: asyncio.StreamReader, prefix: bytes) -> None:
    line = await reader.readline()
    if not line.startswith(prefix):
        raise RuntimeError(f"expected {prefix!r}, got {line!r}")


async def _hold_one(port: int, ctx: ssl.SSLContext, sem: asyncio.Semaphore, held: list) -> None:
    async with sem:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=SNI), 30
        )
        await asyncio.wait_for(_expect(reader, b"* OK"), 30)
        for cmd, reply in ((b"a LOGIN u p\r\n", b"a OK"), (b"b SELECT INBOX\r\n", b"b OK"), (b"c IDLE\r\n", b"+")):
            writer.write(cmd)
            await asyncio.wait_for(_expect(reader, reply), 30)
        held.append(writer)


async def _hold_main(port: int, n: int) -> None:
    """Opens n sessions into IDLE, prints READY, holds them until stdin closes."""
    ctx = client_context()
    sem = asyncio.Semaphore(32)
    held: list = []
    results = await asyncio.gather(*(_hold_one(port, ctx, sem, held) for _ in range(n)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    print(f"READY {len(held)} {len(errors)} {errors[0]!r}" if errors else f"READY {len(held)} 0", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for writer in held:
        writer.transport.abort()


def _handshakes_main(port: int, n: int, resume: bool = False) -> None:
    """n sequential connections: handshake, read the relayed greeting, close. With resume,
    each connection offers the session (ticket) of the previous one, as a mail client does;
    a first, full connection gets the first ticket, then READY is printed and the n counted
    connections start when a line arrives on stdin."""
    ctx = client_context()
    reused = 0
    cipher = None
    session = None
    for i in range(n + 1 if resume else n):
        if resume and i == 1:
            reused = 0
            print("READY", flush=True)
            sys.stdin.readline()
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        with ctx.wrap_socket(raw, server_hostname=SNI, session=session) as tls:
            reused += tls.session_reused
            cipher = tls.cipher()
            buf = b""
            while not buf.endswith(b"\r\n"):
                data = tls.recv(256)
                if not data:
                    raise RuntimeError("closed before the greeting")
                buf += data
            if not buf.startswith(b"* OK"):
                raise RuntimeError(f"bad greeting {buf!r}")
            if resume:
                # TLS 1.3 tickets arrive after the handshake: the greeting read took them in.
                session = tls.session
    print(json.dumps({"reused": reused, "cipher": cipher}), flush=True)


def _stream_main(port: int, direction: str, nbytes: int, payload: str = "literal") -> None:
    """One logged-in session moving nbytes down (backend->client) or up; prints JSON.

    payload "literal": an IMAP FETCH / APPEND literal of CRLF text lines (what mail is);
    "raw": bench commands DOWN/UP moving bytes without CR/LF or IMAP framing."""
    ctx = client_context()
    raw = socket.create_connection(("127.0.0.1", port), timeout=60)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tls = ctx.wrap_socket(raw, server_hostname=SNI)

    def line() -> bytes:
        out = b""
        while not out.endswith(b"\n"):
            b = tls.recv(1)
            if not b:
                raise RuntimeError("closed")
            out += b
        return out

    assert line().startswith(b"* OK")
    tls.sendall(b"a LOGIN u p\r\n")
    assert line().startswith(b"a OK")
    # Tell the harness we are logged in; it samples CPU, then says go.
    print("LOGGED_IN", flush=True)
    sys.stdin.readline()
    t0 = time.monotonic()
    if direction == "down":
        if payload == "raw":
            tls.sendall(b"d DOWN %d\r\n" % nbytes)
            trailer = b"d OK\r\n"
            want = nbytes + len(trailer)
        else:
            tls.sendall(b"d FETCHBIG %d\r\n" % nbytes)
            head = line()
            if head != b"* 1 FETCH (BODY[] {%d}\r\n" % nbytes:
                raise RuntimeError(f"bad FETCH head {head!r}")
            trailer = b")\r\nd OK FETCH completed\r\n"
            want = nbytes + len(trailer)
        buf = bytearray(1 << 18)
        got = 0
        tail = b""
        while got < want:
            n = tls.recv_into(buf)
            if n == 0:
                raise RuntimeError(f"closed after {got} of {want} bytes")
            got += n
            tail = (tail + bytes(buf[max(0, n - 64) : n]))[-64:]
        if got != want or not tail.endswith(trailer):
            raise RuntimeError(f"bad end of stream: {got} bytes, tail {tail!r}")
    else:
        if payload == "raw":
            tls.sendall(b"u UP %d\r\n" % nbytes)
            chunk = memoryview(b"fedcba9876543210" * (1 << 16))
        else:
            tls.sendall(b"u APPEND INBOX {%d}\r\n" % nbytes)
            if not line().startswith(b"+"):
                raise RuntimeError("no continuation for APPEND")
            chunk = memoryview(TEXT_CHUNK)
        left = nbytes
        while left > 0:
            n = min(left, len(chunk))
            tls.sendall(chunk[:n])
            left -= n
        if payload != "raw":
            tls.sendall(b"\r\n")
        reply = line()
        if not reply.startswith(b"u OK"):
            raise RuntimeError(f"upload not acknowledged: {reply!r}")
    elapsed = time.monotonic() - t0
    print(json.dumps({"seconds": elapsed, "cipher": tls.cipher(), "version": tls.version()}), flush=True)
    tls.close()


def _session(port: int, login: bool):
    """A TLS session through the proxy (or, port < 0, plain TCP to backend -port), after the
    greeting and optionally LOGIN; returns (socket, readline)."""
    if port < 0:
        sock = socket.create_connection(("127.0.0.1", -port), timeout=60)
    else:
        raw = socket.create_connection(("127.0.0.1", port), timeout=60)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = client_context().wrap_socket(raw, server_hostname=SNI)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pending = bytearray()

    def line() -> bytes:
        while b"\n" not in pending:
            data = sock.recv(4096)
            if not data:
                raise RuntimeError("closed")
            pending.extend(data)
        end = pending.index(b"\n") + 1
        out = bytes(pending[:end])
        del pending[:end]
        return out

    if not line().startswith(b"* OK"):
        raise RuntimeError("no greeting")
    if login:
        sock.sendall(b"a LOGIN u p\r\n")
        if not line().startswith(b"a OK"):
            raise RuntimeError("LOGIN refused")
    return sock, line


def _lines_main(port: int, nbytes: int, when: str) -> None:
    """nbytes of bare 80-byte response lines backend->client, after LOGIN (FETCHLINES) or
    before login (an ID answer); the harness measures the proxy's CPU around it."""
    sock, _ = _session(port, login=(when == "login"))
    print("LOGGED_IN", flush=True)
    sys.stdin.readline()
    t0 = time.monotonic()
    if when == "login":
        sock.sendall(b"l FETCHLINES %d\r\n" % nbytes)
    else:
        sock.sendall(b'l ID ("bench-lines" "%d")\r\n' % nbytes)
    trailer = b"l OK done\r\n"
    want = nbytes + len(trailer)
    buf = bytearray(1 << 18)
    got, tail = 0, b""
    while got < want:
        n = sock.recv_into(buf)
        if n == 0:
            raise RuntimeError(f"closed after {got} of {want} bytes")
        got += n
        tail = (tail + bytes(buf[max(0, n - 64) : n]))[-64:]
    if got != want or not tail.endswith(trailer):
        raise RuntimeError(f"bad end of stream: {got} bytes, tail {tail!r}")
    print(json.dumps({"seconds": time.monotonic() - t0}), flush=True)
    sock.close()


def _noop_main(port: int, count: int) -> None:
    """count sequential NOOP round trips on a logged-in session; microseconds each."""
    sock, line = _session(port, login=True)
    rtts = []
    for i in range(count + 50):
        t0 = time.perf_counter_ns()
        sock.sendall(b"n NOOP\r\n")
        if not line().startswith(b"n OK"):
            raise RuntimeError("NOOP failed")
        if i >= 50:  # the first ones warm caches and the TCP windows
            rtts.append((time.perf_counter_ns() - t0) / 1000)
    print(json.dumps({"rtt_us": rtts}), flush=True)
    sock.close()


SUBCOMMANDS = ("backend", "hold", "handshakes", "stream", "lines", "noop")


def run_subcommand(argv: list[str]) -> None:
    cmd, rest = argv[0], argv[1:]
    if cmd == "backend":
        asyncio.run(_backend_main())
    elif cmd == "hold":
        asyncio.run(_hold_main(int(rest[0]), int(rest[1])))
    elif cmd == "handshakes":
        _handshakes_main(int(rest[0]), int(rest[1]), len(rest) > 2 and rest[2] == "resume")
    elif cmd == "lines":
        _lines_main(int(rest[0]), int(rest[1]), rest[2])
    elif cmd == "noop":
        _noop_main(int(rest[0]), int(rest[1]))
    else:
        _stream_main(int(rest[0]), rest[1], int(rest[2]), rest[3] if len(rest) > 3 else "raw")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in SUBCOMMANDS:
        print(f"usage: workloads.py {{{'|'.join(SUBCOMMANDS)}}} ARGS...", file=sys.stderr)
        sys.exit(2)
    run_subcommand(sys.argv[1:])
