"""One gRPC call on a connection, as its handler sees it: read requests, write responses.

A handler reads with :meth:`ServerCall.read` (which returns :data:`EOF` once the
client has half-closed) and writes responses that are already serialized:
:meth:`ServerCall.write_nowait` frames and sends them at once (what a server pushing
the same bytes to thousands of calls wants), :meth:`ServerCall.write` also waits while
the client's flow-control window holds the response back or the connection's socket
buffer is full. :meth:`ServerCall.abort` ends the call with a
status and raises :class:`CallAborted`, which the server catches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn

from meshext.rpc.status import Status

if TYPE_CHECKING:
    from meshext.rpc.connection import Connection


class _Eof:
    __slots__ = ()

    def __repr__(self) -> str:
        return "EOF"


EOF: Final = _Eof()
"""What :meth:`ServerCall.read` returns once the client has sent its last message."""


class CallAborted(Exception):
    """Raised by :meth:`ServerCall.abort` after the call's status has been sent."""


class CallClosed(Exception):
    """A write to a call that has ended (the client reset it, or the connection is gone)."""


class ServerCall:
    """The server's side of one call (one HTTP/2 stream)."""

    __slots__ = (
        "conn",
        "deserialize",
        "ended",
        "flushed",
        "headers_sent",
        "inbox",
        "listener",
        "partial",
        "pending",
        "recv_unacked",
        "remote_closed",
        "reset",
        "send_window",
        "stream_id",
        "task",
        "trailers_pending",
        "user_agent",
        "waiter",
    )

    def __init__(
        self,
        conn: Connection,
        stream_id: int,
        deserialize: Callable[[bytes], Any],
        send_window: int,
        user_agent: str,
    ) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.deserialize = deserialize
        self.send_window = send_window
        self.user_agent = user_agent
        # Requests received and not read yet, with their sizes (rarely more than one).
        self.inbox: list[tuple[Any, int]] = []
        self.waiter: asyncio.Future[Any] | None = None
        self.listener: Callable[[Any], None] | None = None
        # The bytes of a request whose end has not arrived yet.
        self.partial: bytearray | None = None
        # Response bytes (gRPC-framed) waiting for flow-control window, oldest first.
        self.pending: list[memoryview] = []
        self.trailers_pending: bytes | None = None
        # Set while write() waits for the client's window to take its response.
        self.flushed: asyncio.Future[None] | None = None
        self.recv_unacked = 0
        self.headers_sent = False
        self.remote_closed = False
        self.ended = False
        self.reset = False
        self.task: asyncio.Task[None] | None = None

    def peer(self) -> str:
        """The client's address, as gRPC writes it (``ipv4:127.0.0.1:5000``)."""
        return self.conn.peer

    def auth_context(self) -> Mapping[str, Sequence[bytes]]:
        """The verified client certificate (``x509_pem_cert``), as in gRPC's auth context;
        empty on a plaintext connection."""
        return self.conn.auth_context()

    async def read(self) -> Any:
        """The next request, or :data:`EOF` when the client will send no more."""
        inbox = self.inbox
        if inbox:
            message, size = inbox.pop(0)
            self.conn.inbox_bytes -= size
            return message
        if self.remote_closed or self.reset:
            return EOF
        waiter = self.conn.loop.create_future()
        self.waiter = waiter
        try:
            return await waiter
        finally:
            self.waiter = None

    def listen(self, listener: Callable[[Any], None]) -> None:
        """From now on hand each request to ``listener`` as it arrives (in the
        connection's read callback, so responses it writes go out with the
        connection's other answers to that read), instead of keeping it for
        :meth:`read`, which then returns only :data:`EOF`. Requests received and not
        read yet go to ``listener`` first. ``listener`` must not raise; to end the
        call it uses :meth:`fail`."""
        self.listener = listener
        inbox, self.inbox = self.inbox, []
        for message, size in inbox:
            self.conn.inbox_bytes -= size
            listener(message)

    def fail(self, status: Status, details: str = "") -> None:
        """End the call with ``status`` and stop its handler (from a listener)."""
        self.conn.end_call(self, status, details)
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def deliver(self, message: Any, size: int) -> None:
        listener = self.listener
        if listener is not None:
            listener(message)
            return
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(message)
            return
        self.inbox.append((message, size))
        self.conn.inbox_bytes += size

    def close_remote(self) -> None:
        """The client half-closed: a reader waiting gets :data:`EOF`."""
        self.remote_closed = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(EOF)

    def write_nowait(self, message: bytes) -> None:
        """Send one serialized response now (or as soon as flow control allows)."""
        if self.ended or self.reset:
            raise CallClosed(f"stream {self.stream_id} has ended")
        self.conn.send_message(self, message)

    def write_many_nowait(self, messages: Sequence[bytes]) -> None:
        """:meth:`write_nowait` for each of ``messages``, in one socket write."""
        if self.ended or self.reset:
            raise CallClosed(f"stream {self.stream_id} has ended")
        self.conn.send_messages(self, messages)

    async def write(self, message: bytes) -> None:
        """Send one serialized response; waits until the client's flow-control window has
        taken it (a client that does not read gets no queue of responses without end),
        then while the socket's buffer is full."""
        self.write_nowait(message)
        if self.pending:
            flushed = self.conn.loop.create_future()
            self.flushed = flushed
            try:
                await flushed
            finally:
                self.flushed = None
        await self.conn.drained()

    async def abort(self, status: Status | Any, details: str = "") -> NoReturn:
        """End the call with ``status`` (a :class:`Status`, or a ``grpc.StatusCode``)."""
        code = status if isinstance(status, int) else Status(status.value[0])
        self.conn.end_call(self, Status(code), details)
        raise CallAborted(details)


__all__ = ["EOF", "CallAborted", "CallClosed", "ServerCall"]
