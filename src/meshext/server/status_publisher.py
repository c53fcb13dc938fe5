"""Writing extension status to the status sinks, only what changed, at a bounded rate.

The status a sink receives (:func:`meshext.mesh.status.extension_status`) depends on
the configuration, the image resolutions and the pre-flight, never on single proxies,
so the control loop marks it stale only when one of those changed, and this publisher
computes it (one pass over the extensions, none over proxies) when it next runs.
Writes go out at once after a quiet period, then at most once per ``interval``
seconds while changes keep coming (a sink may be an API server: a burst of image
resolutions must not become a burst of patches). The last state is always written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence

from meshext.api.extension import ExtensionStatus
from meshext.api.meta import ResourceKey
from meshext.server.faults import Faults
from meshext.sources.base import StatusSink

log = logging.getLogger(__name__)

PART = "publishing status"


class StatusPublisher:
    def __init__(
        self,
        sinks: Sequence[StatusSink],
        current: Callable[[], Mapping[ResourceKey, ExtensionStatus]],
        faults: Faults,
        *,
        interval: float = 1.0,
    ) -> None:
        """``current`` computes every extension's status (called once per publication)."""
        self._sinks = list(sinks)
        self._current = current
        self._faults = faults
        self._interval = interval
        self._stale = asyncio.Event()
        self._published: dict[ResourceKey, ExtensionStatus] = {}

    def stale(self) -> None:
        """What status depends on changed: publish it soon. Costs nothing when called
        often, and nothing at all without sinks."""
        if self._sinks:
            self._stale.set()

    async def run(self) -> None:
        """Publish whenever status is stale, until cancelled."""
        while True:
            await self._stale.wait()
            self._stale.clear()
            try:
                await self.publish()
            except Exception as exc:
                self._faults.failed(PART, exc)
                self._stale.set()  # try again after the interval
            else:
                self._faults.succeeded(PART)
            await asyncio.sleep(self._interval)

    async def publish(self) -> None:
        """Write every status that differs from the one last written."""
        current = self._current()
        for key, status in current.items():
            if self._published.get(key) == status:
                continue
            self._published[key] = status
            for sink in self._sinks:
                try:
                    await sink.publish(key, status)
                except Exception:
                    log.exception("writing status of %s failed", key)
        for key in [k for k in self._published if k not in current]:
            del self._published[key]
