"""A raw HTTP/2 client on loopback for tests: hand-crafted frames in, parsed frames out.

Frames are built here with ``struct`` (not with :mod:`meshext.rpc.frames`, the code
under test); header blocks with ``hpack.Encoder``, responses read with
``hpack.Decoder``. Each read has a deadline, so a server that stops answering fails
the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
READ_SECONDS = 10.0

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE = 0, 1, 2, 3, 4, 5
PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4

NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM = 0x5, 0x6, 0x7
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB

INITIAL_WINDOW_SIZE = 0x4


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame: 24-bit length, type, flags, 31-bit stream id, payload."""
    header = struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", frame_type, flags, stream_id)
    return header + payload


def settings(*pairs: tuple[int, int], ack: bool = False) -> bytes:
    payload = b"".join(struct.pack(">HI", key, value) for key, value in pairs)
    return frame(SETTINGS, ACK if ack else 0, 0, payload)


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def rst_stream(stream_id: int, code: int = 0x8) -> bytes:
    return frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))


def ping(opaque: bytes = b"12345678") -> bytes:
    return frame(PING, 0, 0, opaque)


def grpc_message(message: bytes, *, compressed: bool = False, length: int | None = None) -> bytes:
    """The 5-byte gRPC prefix (``length`` may lie about the size), then ``message``."""
    declared = len(message) if length is None else length
    return struct.pack(">BI", 1 if compressed else 0, declared) + message


def data(stream_id: int, payload: bytes, *, end_stream: bool = False) -> bytes:
    """``payload`` cut into DATA frames of at most 16 KiB (END_STREAM on the last)."""
    chunks = [payload[at : at + 16_384] for at in range(0, len(payload), 16_384)] or [b""]
    frames = [frame(DATA, 0, stream_id, chunk) for chunk in chunks[:-1]]
    frames.append(frame(DATA, END_STREAM if end_stream else 0, stream_id, chunks[-1]))
    return b"".join(frames)


@dataclass(frozen=True)
class Frame:
    type: int
    flags: int
    stream_id: int
    payload: bytes


@dataclass(frozen=True)
class GoAway:
    last_stream_id: int
    code: int
    debug: bytes


@dataclass
class StreamOutcome:
    """What the server sent on one stream, until it ended it."""

    headers: list[list[tuple[str, str]]] = field(default_factory=list)
    data: bytes = b""
    reset_code: int | None = None
    ended: bool = False

    @property
    def fields(self) -> dict[str, str]:
        return {name: value for block in self.headers for name, value in block}

    @property
    def grpc_status(self) -> int | None:
        status = self.fields.get("grpc-status")
        return None if status is None else int(status)


class RawClient:
    """One TCP connection speaking HTTP/2 by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.outcomes: dict[int, StreamOutcome] = {}
        self.goaway: GoAway | None = None
        self.data_received = 0
        self.frames: list[Frame] = []
        # Whether the server's PINGs are acknowledged as they are read (keepalive).
        self.answer_pings = False
        # Flow control of what this client sends, as the server's frames grant it.
        self.initial_window = 65_535
        self.connection_window = 65_535
        self.stream_sent: dict[int, int] = {}
        self.stream_granted: dict[int, int] = {}

    def send(self, *chunks: bytes) -> None:
        self.writer.write(b"".join(chunks))

    async def flush(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    def header_block(self, fields: Sequence[tuple[str, str]]) -> bytes:
        return bytes(self.encoder.encode(list(fields)))

    def request(
        self,
        stream_id: int,
        path: str,
        *,
        method: str = "POST",
        content_type: str = "application/grpc",
        end_stream: bool = False,
        extra: Sequence[tuple[str, str]] = (),
    ) -> bytes:
        """A HEADERS frame opening a call."""
        block = self.header_block(
            [
                (":method", method),
                (":scheme", "http"),
                (":path", path),
                (":authority", "127.0.0.1"),
                ("content-type", content_type),
                ("te", "trailers"),
                *extra,
            ]
        )
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        return frame(HEADERS, flags, stream_id, block)

    async def read_frame(self, timeout: float = READ_SECONDS) -> Frame | None:
        """The next frame, or ``None`` once the server has closed the connection."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(9), timeout)
            length = int.from_bytes(head[:3], "big")
            payload = await asyncio.wait_for(self.reader.readexactly(length), timeout)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        stream_id = int.from_bytes(head[5:9], "big") & 0x7FFF_FFFF
        return self._record(Frame(head[3], head[4], stream_id, payload))

    def _record(self, received: Frame) -> Frame:
        self.frames.append(received)
        outcome = self.outcomes.setdefault(received.stream_id, StreamOutcome())
        if received.type == HEADERS:
            outcome.headers.append(
                [(str(n), str(v)) for n, v in self.decoder.decode(received.payload)]
            )
            outcome.ended = outcome.ended or bool(received.flags & END_STREAM)
        elif received.type == DATA:
            outcome.data += received.payload
            self.data_received += len(received.payload)
            outcome.ended = outcome.ended or bool(received.flags & END_STREAM)
        elif received.type == RST_STREAM:
            outcome.reset_code = int.from_bytes(received.payload, "big")
        elif received.type == SETTINGS and not received.flags & ACK:
            for at in range(0, len(received.payload), 6):
                key, value = struct.unpack_from(">HI", received.payload, at)
                if key == INITIAL_WINDOW_SIZE:
                    self.initial_window = value
        elif received.type == WINDOW_UPDATE:
            increment = int.from_bytes(received.payload, "big") & 0x7FFF_FFFF
            if received.stream_id == 0:
                self.connection_window += increment
            else:
                granted = self.stream_granted.get(received.stream_id, 0)
                self.stream_granted[received.stream_id] = granted + increment
        elif received.type == PING and not received.flags & ACK and self.answer_pings:
            self.send(frame(PING, ACK, 0, received.payload))
        elif received.type == GOAWAY:
            last, code = struct.unpack_from(">II", received.payload)
            self.goaway = GoAway(last & 0x7FFF_FFFF, code, received.payload[8:])
        return received

    def send_window(self, stream_id: int) -> int:
        """What this client may still send on ``stream_id``, as granted so far."""
        stream = (
            self.initial_window
            + self.stream_granted.get(stream_id, 0)
            - self.stream_sent.get(stream_id, 0)
        )
        return min(stream, self.connection_window)

    async def send_within_windows(self, stream_id: int, payload: bytes) -> int:
        """Send ``payload`` in DATA frames, waiting for window as a polite client does;
        returns how many times it had to wait."""
        waits = 0
        for at in range(0, len(payload), 16_384):
            chunk = payload[at : at + 16_384]
            while self.send_window(stream_id) < len(chunk):
                waits += 1
                await self.flush()
                if await self.read_frame() is None:
                    raise AssertionError("connection closed while waiting for window")
            self.send(frame(DATA, 0, stream_id, chunk))
            self.connection_window -= len(chunk)
            self.stream_sent[stream_id] = self.stream_sent.get(stream_id, 0) + len(chunk)
        await self.flush()
        return waits

    async def until_closed(self, timeout: float = READ_SECONDS) -> None:
        """Read (and record) every frame until the server closes the connection."""
        async with asyncio.timeout(timeout):
            while await self.read_frame() is not None:
                pass

    async def goaway_and_close(self) -> GoAway:
        """The GOAWAY the server ends the connection with (it must then close it)."""
        await self.until_closed()
        assert self.goaway is not None, "the server closed without GOAWAY"
        return self.goaway

    async def stream_outcome(self, stream_id: int, timeout: float = READ_SECONDS) -> StreamOutcome:
        """Everything the server sends on ``stream_id`` until it ends or resets it."""
        async with asyncio.timeout(timeout):
            while True:
                outcome = self.outcomes.get(stream_id)
                if outcome is not None and (outcome.ended or outcome.reset_code is not None):
                    return outcome
                if await self.read_frame() is None:
                    raise AssertionError(f"connection closed before stream {stream_id} ended")

    async def read_until(
        self, condition: Callable[[], bool], timeout: float = READ_SECONDS
    ) -> None:
        """Read (and record) frames until ``condition()`` holds."""
        async with asyncio.timeout(timeout):
            while not condition():
                if await self.read_frame() is None:
                    raise AssertionError("the server closed the connection")

    async def read_quiet(self, seconds: float) -> None:
        """Read (and record) whatever arrives within ``seconds``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        with contextlib.suppress(TimeoutError):
            while (left := deadline - loop.time()) > 0:
                if await self.read_frame(left) is None:
                    return

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def connected(
    port: int, *, preface: bytes = PREFACE, tls: ssl.SSLContext | None = None
) -> AsyncIterator[RawClient]:
    """A raw connection to 127.0.0.1:``port`` (over TLS with ``tls``) that has sent
    ``preface`` (and, for the real preface, an empty SETTINGS frame)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls, server_hostname="127.0.0.1" if tls else None
    )
    client = RawClient(reader, writer)
    if preface == PREFACE:
        client.send(PREFACE, settings())
    elif preface:
        client.send(preface)
    try:
        yield client
    finally:
        client.close()
