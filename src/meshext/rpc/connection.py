"""One HTTP/2 connection of the gRPC server: frames in, calls dispatched, frames out.

Written for many long-lived streaming calls that mostly wait: a connection is one
asyncio protocol object, a call one :class:`~meshext.rpc.call.ServerCall` and one
task running its handler. Reading a request parses the frame header, hands the
message to the handler's deserializer and wakes the handler; writing a response is
one socket write of a DATA frame header followed by bytes that were serialized once
for every call that sends them.

Limits that keep a hostile or broken client from costing more than its share (each
ends the connection with GOAWAY, or the call with RST_STREAM, and a log line naming
the peer): frames of at most 16 KiB, header blocks of at most :attr:`Limits.header_list`
bytes (decoded and encoded), requests of at most :attr:`Limits.max_message` bytes,
at most :attr:`Limits.concurrent_streams` calls at a time, unread requests of at most
:attr:`Limits.inbox_bytes` per connection, flow control on both sides, and a budget
of control frames (SETTINGS, PING, PRIORITY, RST_STREAM, new streams, empty DATA; a PING after the server sent data is
free) per housekeeping period, beyond which the client is told ``ENHANCE_YOUR_CALM``.
A client that reads nothing while it keeps asking for answers is dropped once
:attr:`Limits.frames_while_full` of them wait in the socket's full buffer.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

import hpack
from hpack.exceptions import HPACKError

from meshext.rpc import headers as h
from meshext.rpc.call import ServerCall
from meshext.rpc.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_WINDOW,
    FRAME_HEADER,
    MAX_WINDOW,
    PREFACE,
    SETTINGS_ACK,
    ErrorCode,
    Flag,
    FrameType,
    Setting,
    frame_header,
    goaway,
    parse_settings,
    ping,
    ping_ack,
    rst_stream,
    settings_frame,
    window_update,
)
from meshext.rpc.status import Status

if TYPE_CHECKING:
    from meshext.rpc.server import RpcServer

_log = logging.getLogger(__name__)

# DATA frame header and gRPC message prefix in one pack: length+type, flags, stream id,
# compressed flag, message length.
_DATA_AND_PREFIX: Final = struct.Struct(">I B I B I")
_KEEPALIVE_OPAQUE: Final = b"meshext\x00"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one connection may ask of the server."""

    max_message: int = 4 * 1024 * 1024
    """Largest request message (gRPC's default)."""
    header_list: int = 16 * 1024
    """Largest header block, compressed or decoded."""
    concurrent_streams: int = 100
    inbox_bytes: int = 16 * 1024 * 1024
    """Requests received and not yet read by their handlers, over all calls, with the
    parts of requests still arriving (so at least :attr:`max_message`)."""
    stream_window: int = 1024 * 1024
    connection_window: int = 16 * 1024 * 1024
    control_frames: int = 2000
    """Control frames and new streams per housekeeping period (10 s)."""
    preface_timeout: float = 10.0
    keepalive_time: float = 60.0
    """Idle time after which the server pings the client."""
    keepalive_timeout: float = 20.0
    """How long the client has to answer that ping."""
    frames_while_full: int = 10_000
    """Frames other than DATA (acknowledgements, resets, trailers) the server may write
    while the socket's buffer is full, that is while the client reads nothing; past
    this the connection is dropped."""


class _ConnectionError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Connection(asyncio.Protocol):
    """The server's side of one client connection."""

    def __init__(self, server: RpcServer) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown"
        self.calls: dict[int, ServerCall] = {}
        self.buffer = bytearray()
        self.preface_seen = False
        self.decoder = hpack.Decoder(max_header_list_size=self.limits.header_list)
        self.decoder.max_allowed_table_size = 4096
        # A header block spread over HEADERS and CONTINUATION frames: stream, flags, bytes.
        self.continuation: tuple[int, int, bytearray] | None = None
        self.last_stream_id = 0
        self.peer_max_frame = DEFAULT_MAX_FRAME_SIZE
        self.peer_initial_window = DEFAULT_WINDOW
        self.send_window = DEFAULT_WINDOW
        self.recv_window = self.limits.connection_window
        self.recv_unacked = 0
        # Calls with responses waiting for the connection's send window, in order.
        self.blocked: dict[int, ServerCall] = {}
        self.inbox_bytes = 0
        self.strikes = 0
        self.sent_data = False
        self.last_read = self.loop.time()
        self.ping_sent_at: float | None = None
        self.paused = False
        self.corked: list[bytes] | None = None
        self.frames_while_full = 0
        self.drain_waiters: list[asyncio.Future[None]] = []
        self.going_away = False
        self.closed = False
        self._auth: Mapping[str, Sequence[bytes]] | None = None
        self._preface_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass; it has its methods.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.peer = _peer_name(transport.get_extra_info("peername"))
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() not in (None, "h2"):
            _log.debug("%s: ALPN %s is not h2", self.peer, ssl_object.selected_alpn_protocol())
            transport.abort()
            return
        self.server.connections.add(self)
        limits = self.limits
        transport.write(
            settings_frame(
                (
                    (Setting.MAX_CONCURRENT_STREAMS, limits.concurrent_streams),
                    (Setting.INITIAL_WINDOW_SIZE, limits.stream_window),
                    (Setting.MAX_HEADER_LIST_SIZE, limits.header_list),
                    (Setting.ENABLE_PUSH, 0),
                )
            )
            + window_update(0, limits.connection_window - DEFAULT_WINDOW)
        )
        self._preface_timer = self.loop.call_later(limits.preface_timeout, self._preface_late)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        # What the frames of one read make the server send goes out in one write.
        corked = self.cork()
        try:
            self._received(data)
        finally:
            if corked:
                self.uncork()

    def _received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        buffer = self.buffer
        view: bytes | bytearray
        if buffer:
            buffer += data
            view = buffer
        else:
            view = data
        end = len(view)
        offset = 0
        try:
            if not self.preface_seen:
                if end < len(PREFACE):
                    if not PREFACE.startswith(bytes(view)):
                        raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 client")
                    if view is data:
                        buffer += data
                    return
                if view[: len(PREFACE)] != PREFACE:
                    raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 client")
                offset = len(PREFACE)
                self.preface_seen = True
                if self._preface_timer is not None:
                    self._preface_timer.cancel()
                    self._preface_timer = None
            unpack = FRAME_HEADER.unpack_from
            while end - offset >= 9:
                word, flags, stream_id = unpack(view, offset)
                length = word >> 8
                if length > DEFAULT_MAX_FRAME_SIZE:
                    raise _ConnectionError(
                        ErrorCode.FRAME_SIZE_ERROR, f"a frame of {length} bytes (limit 16384)"
                    )
                start = offset + 9
                if end - start < length:
                    break
                offset = start + length
                self._frame(word & 0xFF, flags, stream_id & 0x7FFF_FFFF, view[start:offset])
                if self.closed:
                    return
        except _ConnectionError as exc:
            self._fail(exc.code, str(exc))
            return
        if view is buffer:
            del buffer[:offset]
        elif offset < end:
            buffer += view[offset:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self._preface_timer is not None:
            self._preface_timer.cancel()
        for call in list(self.calls.values()):
            self._reset_call(call)
        self.calls.clear()
        self.blocked.clear()
        self._wake_drainers()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.frames_while_full = 0
        self._wake_drainers()

    # -- frames in --------------------------------------------------------------

    def _frame(
        self, frame_type: int, flags: int, stream_id: int, payload: bytes | bytearray
    ) -> None:
        if self.continuation is not None and frame_type != FrameType.CONTINUATION:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "header block interrupted")
        if frame_type == FrameType.DATA:
            self._data(flags, stream_id, payload)
        elif frame_type == FrameType.WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif frame_type == FrameType.HEADERS:
            self._headers(flags, stream_id, payload)
        elif frame_type == FrameType.CONTINUATION:
            self._continuation(flags, stream_id, payload)
        elif frame_type == FrameType.PING:
            self._ping(flags, stream_id, payload)
        elif frame_type == FrameType.SETTINGS:
            self._settings(flags, stream_id, payload)
        elif frame_type == FrameType.RST_STREAM:
            self._rst_stream(stream_id, payload)
        elif frame_type == FrameType.PRIORITY:
            if len(payload) != 5:
                raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "PRIORITY of the wrong size")
            self._strike()
        elif frame_type == FrameType.GOAWAY:
            self.going_away = True
        elif frame_type == FrameType.PUSH_PROMISE:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "a client sent PUSH_PROMISE")
        # Unknown frame types are ignored (RFC 9113 §5.5).

    def _strike(self) -> None:
        self.strikes += 1
        if self.strikes > self.limits.control_frames:
            raise _ConnectionError(
                ErrorCode.ENHANCE_YOUR_CALM, "too many control frames or new streams"
            )

    def _data(self, flags: int, stream_id: int, payload: bytes | bytearray) -> None:
        if stream_id == 0:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self.recv_window -= size
        if self.recv_window < 0:
            raise _ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the window")
        self.recv_unacked += size
        if self.recv_unacked >= self.limits.connection_window // 2:
            self._write(window_update(0, self.recv_unacked))
            self.recv_window += self.recv_unacked
            self.recv_unacked = 0
        if flags & Flag.PADDED:
            if not size or payload[0] >= size:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame")
            payload = payload[1 : size - payload[0]]
        elif not payload and not flags & Flag.END_STREAM:
            self._strike()
        call = self.calls.get(stream_id)
        if call is None or call.remote_closed:
            if stream_id > self.last_stream_id:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "DATA on an idle stream")
            if call is not None:
                # DATA after the client's END_STREAM: the stream is reset, once.
                self._write(rst_stream(stream_id, ErrorCode.STREAM_CLOSED))
                self._reset_call(self.calls.pop(stream_id))
            # A call that has ended (the client may not know yet): its DATA is ignored,
            # never answered frame by frame.
            return
        call.recv_unacked += size
        if call.recv_unacked >= self.limits.stream_window // 2 and not flags & Flag.END_STREAM:
            self._write(window_update(stream_id, call.recv_unacked))
            call.recv_unacked = 0
        if payload:
            self._messages(call, payload)
        if flags & Flag.END_STREAM and not call.reset:
            call.close_remote()

    def _messages(self, call: ServerCall, payload: bytes | bytearray) -> None:
        """Cut gRPC messages (5-byte prefix, then the message) out of a call's DATA."""
        partial = call.partial
        if partial is not None:
            # Counted as unread while it waits; what is left is counted again below.
            self.inbox_bytes -= len(partial)
            call.partial = None
            partial += payload
            data: bytes | bytearray = partial
        else:
            data = payload
        offset, end = 0, len(data)
        limit = self.limits.max_message
        while end - offset >= 5:
            compressed = data[offset]
            length = int.from_bytes(data[offset + 1 : offset + 5], "big")
            if compressed:
                self._refuse(call, Status.UNIMPLEMENTED, "compressed requests are not accepted")
                return
            if length > limit:
                self._refuse(
                    call,
                    Status.RESOURCE_EXHAUSTED,
                    f"a request of {length} bytes is larger than the limit of {limit}",
                )
                return
            if end - offset - 5 < length:
                break
            start = offset + 5
            offset = start + length
            self._deliver(call, bytes(data[start:offset]), length)
            if call.ended or call.reset:
                return
        rest = end - offset
        if not rest:
            call.partial = None
        elif partial is not None:
            del partial[:offset]
            call.partial = partial
        else:
            call.partial = bytearray(data[offset:])
        if rest:
            self.inbox_bytes += rest
            self._check_unread()

    def _deliver(self, call: ServerCall, message: bytes, size: int) -> None:
        try:
            request = call.deserialize(message)
        except Exception as exc:
            self._refuse(call, Status.INVALID_ARGUMENT, f"the request is not valid: {exc}")
            return
        call.deliver(request, size)
        self._check_unread()

    def _check_unread(self) -> None:
        if self.inbox_bytes > self.limits.inbox_bytes:
            raise _ConnectionError(
                ErrorCode.ENHANCE_YOUR_CALM,
                f"more than {self.limits.inbox_bytes} bytes of requests not read yet",
            )

    def _refuse(self, call: ServerCall, status: Status, message: str) -> None:
        """End a call the client broke: its status, then the handler is stopped."""
        _log.info("%s stream %d: %s", self.peer, call.stream_id, message)
        call.fail(status, message)

    def _headers(self, flags: int, stream_id: int, payload: bytes | bytearray) -> None:
        if stream_id == 0 or stream_id % 2 == 0:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        fragment = payload
        if flags & Flag.PADDED:
            if not fragment or fragment[0] >= len(fragment):
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame")
            fragment = fragment[1 : len(fragment) - fragment[0]]
        if flags & Flag.PRIORITY:
            if len(fragment) < 5:
                raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "HEADERS too short")
            fragment = fragment[5:]
        if flags & Flag.END_HEADERS:
            self._header_block(stream_id, flags, bytes(fragment))
        else:
            self.continuation = (stream_id, flags, bytearray(fragment))

    def _continuation(self, flags: int, stream_id: int, payload: bytes | bytearray) -> None:
        pending = self.continuation
        if pending is None or pending[0] != stream_id:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "CONTINUATION out of place")
        block = pending[2]
        block += payload
        if len(block) > self.limits.header_list:
            raise _ConnectionError(
                ErrorCode.ENHANCE_YOUR_CALM,
                f"a header block over {self.limits.header_list} bytes",
            )
        if not payload:
            self._strike()
        if flags & Flag.END_HEADERS:
            self.continuation = None
            self._header_block(stream_id, pending[1], bytes(block))

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        if len(block) > self.limits.header_list:
            raise _ConnectionError(
                ErrorCode.ENHANCE_YOUR_CALM, f"a header block over {self.limits.header_list} bytes"
            )
        try:
            fields = [(str(name), str(value)) for name, value in self.decoder.decode(block)]
        except (HPACKError, UnicodeDecodeError, ValueError) as exc:
            raise _ConnectionError(
                ErrorCode.COMPRESSION_ERROR, f"header block not decodable: {exc}"
            ) from exc
        call = self.calls.get(stream_id)
        if call is not None:
            # Trailers from the client: only to end its side.
            if not flags & Flag.END_STREAM:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "trailers without END_STREAM")
            call.close_remote()
            return
        if stream_id <= self.last_stream_id:
            raise _ConnectionError(ErrorCode.STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
        self.last_stream_id = stream_id
        self._strike()
        if self.going_away or self.server.stopping:
            self._write(rst_stream(stream_id, ErrorCode.REFUSED_STREAM))
            return
        if len(self.calls) >= self.limits.concurrent_streams:
            self._write(rst_stream(stream_id, ErrorCode.REFUSED_STREAM))
            return
        self._start_call(stream_id, flags, fields)

    def _start_call(self, stream_id: int, flags: int, fields: list[tuple[str, str]]) -> None:
        end_stream = flags & Flag.END_STREAM
        try:
            call_headers = h.read_call(fields)
        except h.BadRequest as exc:
            _log.debug("%s stream %d: %s", self.peer, stream_id, exc)
            self._last_headers(stream_id, h.http_error(exc.http_status), bool(end_stream))
            return
        method = self.server.methods.get(call_headers.path)
        if method is None:
            block = h.RESPONSE_HEADERS + h.trailers(
                Status.UNIMPLEMENTED, f"unknown method {call_headers.path}"
            )
            self._last_headers(stream_id, block, bool(end_stream))
            return
        call = ServerCall(
            self, stream_id, method.deserialize, self.peer_initial_window, call_headers.user_agent
        )
        self.calls[stream_id] = call
        if end_stream:
            call.remote_closed = True
        call.task = self.loop.create_task(self.server.run_call(call, method.handler))

    def _window_update(self, stream_id: int, payload: bytes | bytearray) -> None:
        if len(payload) != 4:
            raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
        increment = int.from_bytes(payload, "big") & 0x7FFF_FFFF
        if stream_id == 0:
            if increment == 0:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise _ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "window over 2^31-1")
            if self.blocked:
                blocked, self.blocked = self.blocked, {}
                for waiting in blocked.values():
                    self._flush(waiting)
            return
        call = self.calls.get(stream_id)
        if call is None:
            if stream_id > self.last_stream_id:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return
        if increment == 0:
            self._refuse(call, Status.INTERNAL, "WINDOW_UPDATE of 0")
            return
        call.send_window += increment
        if call.send_window > MAX_WINDOW:
            self._refuse(call, Status.INTERNAL, "stream window over 2^31-1")
            return
        if call.pending:
            self._flush(call)

    def _ping(self, flags: int, stream_id: int, payload: bytes | bytearray) -> None:
        if stream_id != 0:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "PING of the wrong size")
        if flags & Flag.ACK:
            if payload == _KEEPALIVE_OPAQUE:
                self.ping_sent_at = None
            return
        # gRPC clients probe bandwidth with a PING after receiving data: those are
        # free; a PING with no data sent since the last one counts against the budget.
        if self.sent_data:
            self.sent_data = False
        else:
            self._strike()
        self._write(ping_ack(bytes(payload)))

    def _settings(self, flags: int, stream_id: int, payload: bytes | bytearray) -> None:
        if stream_id != 0:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & Flag.ACK:
            if payload:
                raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS of the wrong size")
        self._strike()
        for key, value in parse_settings(bytes(payload)):
            if key == Setting.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "initial window too big")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for call in self.calls.values():
                    call.send_window += delta
                    if call.send_window > MAX_WINDOW:
                        raise _ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "window over 2^31-1")
            elif key == Setting.MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME_SIZE <= value <= 16_777_215:
                    raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self.peer_max_frame = value
            elif key == Setting.ENABLE_PUSH and value > 1:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "ENABLE_PUSH not 0 or 1")
        self._write(SETTINGS_ACK)
        for call in list(self.calls.values()):
            if call.pending and call.send_window > 0:
                self._flush(call)

    def _rst_stream(self, stream_id: int, payload: bytes | bytearray) -> None:
        if stream_id == 0:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM of the wrong size")
        self._strike()
        call = self.calls.pop(stream_id, None)
        if call is not None:
            self._reset_call(call)
        elif stream_id > self.last_stream_id:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on an idle stream")

    # -- frames out -------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.paused and data[3] != FrameType.DATA:
            # A client that reads nothing while it keeps asking for answers (PINGs,
            # SETTINGS, new streams) would make them pile up here without end.
            self.frames_while_full += 1
            if self.frames_while_full > self.limits.frames_while_full:
                _log.warning("%s reads nothing of what it asks for; closing", self.peer)
                self.abort()
                return
        corked = self.corked
        if corked is not None:
            corked.append(data)
            return
        transport = self.transport
        if transport is not None and not self.closed:
            transport.write(data)

    def cork(self) -> bool:
        """Hold writes until :meth:`uncork` (then one socket write); ``False`` if they
        are held already (the caller must not uncork then)."""
        if self.corked is not None:
            return False
        self.corked = []
        return True

    def uncork(self) -> None:
        corked, self.corked = self.corked, None
        if not corked:
            return
        transport = self.transport
        if transport is not None and not self.closed:
            transport.write(corked[0] if len(corked) == 1 else b"".join(corked))

    def send_messages(self, call: ServerCall, messages: Sequence[bytes]) -> None:
        """:meth:`send_message` for each of ``messages``, in one socket write."""
        corked = self.cork()
        try:
            for message in messages:
                self.send_message(call, message)
        finally:
            if corked:
                self.uncork()

    def send_message(self, call: ServerCall, message: bytes) -> None:
        """Frame one serialized response and send what flow control allows now."""
        if self.transport is None or self.closed:
            return
        self.sent_data = True
        size = len(message) + 5
        if (
            not call.pending
            and size <= self.peer_max_frame
            and size <= call.send_window
            and size <= self.send_window
        ):
            call.send_window -= size
            self.send_window -= size
            frame = _DATA_AND_PREFIX.pack(size << 8, 0, call.stream_id, 0, len(message)) + message
            if not call.headers_sent:
                call.headers_sent = True
                frame = _response_headers_frame(call.stream_id) + frame
            self._write(frame)
            return
        if not call.headers_sent:
            call.headers_sent = True
            self._write(_response_headers_frame(call.stream_id))
        call.pending.append(memoryview(b"\x00" + len(message).to_bytes(4, "big") + message))
        self._flush(call)

    def _flush(self, call: ServerCall) -> None:
        """Send as much of ``call``'s waiting responses as the windows allow."""
        if self.transport is None or self.closed:
            return
        pending = call.pending
        max_frame = self.peer_max_frame
        while pending:
            window = min(call.send_window, self.send_window)
            if window <= 0:
                if self.send_window <= 0:
                    self.blocked[call.stream_id] = call
                return
            head = pending[0]
            size = min(len(head), max_frame, window)
            self._write(frame_header(size, FrameType.DATA, 0, call.stream_id) + head[:size])
            call.send_window -= size
            self.send_window -= size
            if size == len(head):
                pending.pop(0)
            else:
                pending[0] = head[size:]
        if call.flushed is not None and not call.flushed.done():
            call.flushed.set_result(None)
        if call.trailers_pending is not None:
            block, call.trailers_pending = call.trailers_pending, None
            self._send_trailers(call, block)

    def end_call(self, call: ServerCall, status: Status, message: str = "") -> None:
        """End ``call`` with ``status``: trailers (after any waiting responses), then
        RST_STREAM if the client has not finished its side."""
        if call.ended or call.reset:
            return
        call.ended = True
        block = h.trailers(status, message)
        if not call.headers_sent:
            call.headers_sent = True
            block = h.RESPONSE_HEADERS + block
        if call.pending:
            call.trailers_pending = block
            return
        self._send_trailers(call, block)

    def _last_headers(self, stream_id: int, block: bytes, client_done: bool) -> None:
        """The header block that ends a stream, then RST_STREAM if the client has not
        finished its side."""
        self._write(
            frame_header(
                len(block), FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, stream_id
            )
            + block
        )
        if not client_done:
            self._write(rst_stream(stream_id, ErrorCode.NO_ERROR))

    def _send_trailers(self, call: ServerCall, block: bytes) -> None:
        self._last_headers(call.stream_id, block, call.remote_closed)
        self.calls.pop(call.stream_id, None)
        self.blocked.pop(call.stream_id, None)
        self._release_unread(call)
        if self.going_away and not self.calls:
            self.close()

    def _release_unread(self, call: ServerCall) -> None:
        """Requests a call left unread no longer count against the connection."""
        if call.inbox or call.partial:
            self.inbox_bytes -= sum(size for _, size in call.inbox) + len(call.partial or b"")
            call.inbox.clear()
            call.partial = None

    def _reset_call(self, call: ServerCall) -> None:
        """The call is gone (client reset, connection lost): stop its handler."""
        call.reset = True
        call.pending.clear()
        self._release_unread(call)
        self.blocked.pop(call.stream_id, None)
        waiter = call.waiter
        if waiter is not None and not waiter.done():
            waiter.cancel()
        if call.task is not None and not call.task.done():
            call.task.cancel()

    async def drained(self) -> None:
        """Return once the socket's buffer is below its high-water mark."""
        if not self.paused or self.closed:
            return
        waiter = self.loop.create_future()
        self.drain_waiters.append(waiter)
        await waiter

    def _wake_drainers(self) -> None:
        waiters, self.drain_waiters = self.drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- connection -------------------------------------------------------------

    def auth_context(self) -> Mapping[str, Sequence[bytes]]:
        if self._auth is None:
            self._auth = {}
            if self.transport is not None:
                ssl_object = self.transport.get_extra_info("ssl_object")
                der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
                if der:
                    pem = ssl.DER_cert_to_PEM_cert(der).encode("ascii")
                    self._auth = {
                        "x509_pem_cert": [pem],
                        "transport_security_type": [b"ssl"],
                    }
        return self._auth

    def housekeeping(self, now: float) -> None:
        """Called every period: keepalive pings and the control-frame budget."""
        self.strikes = 0
        limits = self.limits
        if self.ping_sent_at is not None:
            if now - self.ping_sent_at > limits.keepalive_timeout:
                _log.info("%s did not answer a keepalive ping; closing", self.peer)
                self.abort()
        elif now - self.last_read > limits.keepalive_time:
            self.ping_sent_at = now
            self._write(ping(_KEEPALIVE_OPAQUE))

    def go_away(self) -> None:
        """Accept no more calls; close once the open ones have ended."""
        if self.going_away and self.closed:
            return
        self.going_away = True
        self._write(goaway(self.last_stream_id, ErrorCode.NO_ERROR))
        if not self.calls:
            self.close()

    def close(self) -> None:
        if self.corked:
            self.uncork()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    def _fail(self, code: ErrorCode, message: str) -> None:
        _log.warning("HTTP/2 connection from %s closed: %s (%s)", self.peer, message, code.name)
        self._write(goaway(self.last_stream_id, code, message.encode()[:256]))
        if self.corked:
            self.uncork()  # the GOAWAY goes out before the connection is half-closed
        transport = self.transport
        if transport is None or self.closed or not transport.can_write_eof():
            self.close()
            return
        # Closing a socket whose input has not all been read makes the kernel reset the
        # connection, and the client may never see the GOAWAY: stop writing, drop what
        # still arrives, and close once the client does (or after a second).
        self.closed = True
        transport.write_eof()
        self.loop.call_later(1.0, transport.abort)

    def _preface_late(self) -> None:
        self._preface_timer = None
        if not self.preface_seen:
            _log.info("%s sent no HTTP/2 preface in time; closing", self.peer)
            self.abort()


def _response_headers_frame(stream_id: int) -> bytes:
    return _RESPONSE_HEADERS_PREFIX + stream_id.to_bytes(4, "big") + h.RESPONSE_HEADERS


_RESPONSE_HEADERS_PREFIX: Final = frame_header(
    len(h.RESPONSE_HEADERS), FrameType.HEADERS, Flag.END_HEADERS, 0
)[:5]


def _peer_name(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        if ":" in str(host):
            return f"ipv6:[{host}]:{port}"
        return f"ipv4:{host}:{port}"
    return "unknown"


__all__ = ["Connection", "Limits"]
