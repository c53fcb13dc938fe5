"""Cyclic garbage collection held off while a push round and the sends it starts run.

``meshext serve`` makes young collections rare (see
:func:`meshext.server.app.tune_garbage_collector`), so each one scans many objects: at
1,000 connected proxies a young collection took 11 to 16 ms. Landing in the middle of a
round, it delayed every response not yet written by that much. Held off, it runs
right after the last response of the round is written, while the proxies read them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collection_held_through_sends(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """No automatic collection inside the block, nor in the callbacks it schedules on
    ``loop`` (the sends of the streams it wakes): collection is enabled again by a
    callback scheduled when the block ends, which runs after them.

    Does nothing when collection is disabled already (by an enclosing hold, or by
    whoever embeds the control plane); then it stays as it was.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        loop.call_soon(gc.enable)
