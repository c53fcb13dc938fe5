"""A work queue of object keys for level-triggered reconciliation.

Events only say *which* object to look at; the handler reads the object's current
state itself. So the queue holds keys, not events, with three guarantees:

* **coalescing** - a key added many times before a worker takes it is handled once;
* **one at a time per key** - a key added while its handler runs is handled again
  right after, never concurrently, so work on one object stays ordered (different
  keys run in parallel, up to ``workers``);
* **retry with backoff** - a handler that raises is retried for that key after an
  exponentially growing delay, reset by the next success.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from meshext.kube.tasks import Backoff, cancel_and_wait

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(
        self,
        handler: Callable[[K], Awaitable[None]],
        *,
        workers: int = 4,
        backoff_initial: float = 0.5,
        backoff_max: float = 60.0,
        name: str = "queue",
    ) -> None:
        self._handler = handler
        self._workers = workers
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self.name = name
        self._ready: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._backoffs: dict[K, Backoff] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self.handled = 0
        self.failures = 0

    def __repr__(self) -> str:
        return (
            f"<WorkQueue {self.name}: {len(self._queued)} queued, "
            f"{len(self._processing)} running, {len(self._timers)} delayed>"
        )

    def add(self, key: K) -> None:
        """Handle ``key`` soon (once, however often it is added before that)."""
        if key in self._queued:
            return
        if key in self._processing:
            self._dirty.add(key)
            return
        self._queued.add(key)
        self._idle.clear()
        self._ready.put_nowait(key)

    def add_after(self, key: K, delay: float) -> None:
        """Handle ``key`` after ``delay`` seconds (an earlier pending request wins)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        existing = self._timers.get(key)
        if existing is not None:
            if existing.when() <= when:
                return
            existing.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def forget(self, key: K) -> None:
        """Drop ``key``'s retry state and any delayed request for it."""
        self._backoffs.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    @property
    def pending(self) -> int:
        return len(self._queued) + len(self._processing) + len(self._dirty)

    async def wait_idle(self) -> None:
        """Return once nothing is queued or running (delayed retries do not count)."""
        await self._idle.wait()

    async def run(self) -> None:
        """Run the workers until cancelled."""
        tasks = [
            asyncio.create_task(self._work(), name=f"{self.name} worker {i}")
            for i in range(self._workers)
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            await cancel_and_wait(*tasks)
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()

    async def _work(self) -> None:
        while True:
            key = await self._ready.get()
            self._queued.discard(key)
            self._processing.add(key)
            try:
                await self._handler(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                backoff = self._backoffs.setdefault(
                    key, Backoff(self._backoff_initial, self._backoff_max)
                )
                delay = backoff.next_delay()
                log.warning("%s: %s failed (%s); retrying in %.1fs", self.name, key, exc, delay)
                log.debug("%s: failure detail", self.name, exc_info=True)
                self.add_after(key, delay)
            else:
                self._backoffs.pop(key, None)
            finally:
                self.handled += 1
                self._processing.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)
                if not self._queued and not self._processing:
                    self._idle.set()
