"""Small asyncio helpers shared by the long-running parts of the controller."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and wait until each has finished.

    Their own errors are not raised here (each task reports its failure where it
    happens); only a new cancellation of the caller interrupts the wait, so this is
    safe in a ``finally`` that runs because the caller was cancelled.
    """
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled():
            task.exception()


@dataclass
class Backoff:
    """Exponential backoff with full jitter: ``initial`` doubling up to ``maximum``."""

    initial: float = 0.2
    maximum: float = 30.0
    attempts: int = field(default=0, init=False)

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * (2**self.attempts))
        self.attempts += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0
