"""The socket between the main process and a worker: frames read one by one, written
in batches."""

from __future__ import annotations

import asyncio

from meshext.server.workers.wire import Frame, decode_body, frame_length


async def read_frame(reader: asyncio.StreamReader) -> Frame | None:
    """The next frame, ``None`` at the end of the stream."""
    try:
        prefix = await reader.readexactly(4)
        return decode_body(await reader.readexactly(frame_length(prefix)))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


class BatchedWriter:
    """Frames written to a stream, gathered into one write per event-loop iteration.

    Thousands of small frames follow each other when a change reaches every proxy;
    writing each at once would cost a system call apiece."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._pending: list[bytes] = []

    def send(self, frames: bytes | list[bytes]) -> None:
        if self.writer.is_closing():
            return
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        if isinstance(frames, bytes):
            self._pending.append(frames)
        else:
            self._pending.extend(frames)

    def flush(self) -> None:
        """Write what is pending now rather than at the end of this iteration."""
        self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self.writer.is_closing():
            self.writer.write(b"".join(pending))

    def close(self) -> None:
        self._flush()
        self.writer.close()

    def is_closing(self) -> bool:
        return self.writer.is_closing()
