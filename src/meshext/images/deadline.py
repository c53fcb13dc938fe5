"""A deadline for a whole pull, beside the per-read timeout of the HTTP client.

httpx's timeout bounds each connect and each wait between received bytes, so a
registry that sends one byte every few seconds keeps a pull alive indefinitely. The
deadline bounds the pull as a whole: when it passes, the pull is cancelled (its
partial files are removed by the work folders that hold them) and reported as a
transient registry failure, so the control loop retries later with its backoff.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from meshext.images.errors import TransientRegistryError

T = TypeVar("T")


async def within_deadline(seconds: float, what: str, work: Awaitable[T]) -> T:
    """``await work``, or :class:`TransientRegistryError` once ``seconds`` have passed."""
    try:
        async with asyncio.timeout(seconds):
            return await work
    except TimeoutError as exc:
        raise TransientRegistryError(
            f"{what} took longer than the {seconds:g} s allowed for one pull; stopped"
        ) from exc
