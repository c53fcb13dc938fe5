"""Whether the API server answers, as seen by every request of one client.

Each request the :class:`~meshext.kube.client.KubeClient` makes reports here: an
answer (any HTTP status below 500) marks the API server reachable, a transport
failure or an overloaded answer (5xx, 429) marks it lost. Readiness reports it, and
parts that back off while it is lost (informers) wait with :meth:`Connectivity.pause`,
which ends early as soon as it is reachable again, so a long outage does not leave
them asleep for their full backoff after the API server returns. While it is lost,
:meth:`Connectivity.probe` asks the API server's ``/version`` every ``interval``
seconds, so the return is noticed even when nothing else is asking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from meshext.kube.errors import KubeError

log = logging.getLogger(__name__)


class Connectivity:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.reachable = True
        self.problem = ""
        self.lost_at: float | None = None
        self.outages = 0
        self._restored = asyncio.Event()
        self._restored.set()
        self._lost = asyncio.Event()

    def __repr__(self) -> str:
        state = "reachable" if self.reachable else f"lost: {self.problem}"
        return f"<Connectivity {state}>"

    def succeeded(self) -> None:
        if self.reachable:
            return
        lost_for = self._clock() - (self.lost_at or self._clock())
        log.info("the API server answers again (after %.1fs)", lost_for)
        self.reachable = True
        self.problem = ""
        self.lost_at = None
        self._lost.clear()
        self._restored.set()

    def failed(self, problem: str) -> None:
        self.problem = problem
        if not self.reachable:
            return
        log.warning("lost the API server: %s", problem)
        self.reachable = False
        self.outages += 1
        self.lost_at = self._clock()
        self._restored.clear()
        self._lost.set()

    def lost_for(self) -> float:
        """Seconds since the API server stopped answering (0 while it answers)."""
        return 0.0 if self.lost_at is None else self._clock() - self.lost_at

    async def pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if a lost API server comes back meanwhile."""
        if self.reachable:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._restored.wait(), delay)

    async def probe(self, ask: Callable[[], Awaitable[object]], interval: float = 1.0) -> None:
        """While the API server is lost, call ``ask`` every ``interval`` seconds (its
        outcome reaches this object through the client); run until cancelled."""
        while True:
            await self._lost.wait()
            await asyncio.sleep(interval)
            if self.reachable:
                continue
            with contextlib.suppress(KubeError):
                await ask()
