"""List+watch caches: a local copy of every object of one resource type.

An :class:`Informer` lists, then watches from the list's resourceVersion. When a watch
ends (the server closes it every few minutes) it resumes from the last version it
saw; when the connection fails it backs off (waking early when the client sees the
API server answer again, see :mod:`meshext.kube.connectivity`) and resumes; when the
API server says that version is too old (410 Gone, e.g. after a restart compacted
its history) it lists again and reports the difference between the old and the new
list as ordinary changes. So a consumer sees every change that matters, once, whatever happened to
the connection - a deletion that happened while the server was away shows up as
a deletion.

Changes are reported to a synchronous callback with the object's key and its old and
new state; consumers are expected to do nothing slow there (typically: put the key
on a :class:`~meshext.kube.workqueue.WorkQueue`).

A resource type the API server does not serve (an optional CRD not installed) is
treated as empty and looked for again now and then, so installing Istio's CRDs
after meshext started is picked up without a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from meshext.kube.client import KubeClient
from meshext.kube.errors import Gone, KubeError, NotFound
from meshext.kube.resources import KubeObject, ObjectKey, ResourceType, object_key, resource_version
from meshext.kube.tasks import Backoff

log = logging.getLogger(__name__)

ChangeHandler = Callable[[ObjectKey, KubeObject | None, KubeObject | None], None]
"""``(key, old, new)``: ``old`` is ``None`` for a new object, ``new`` for a deleted one."""


class Informer:
    """Keeps :attr:`objects` equal to the API server's objects of one type (and selector)."""

    def __init__(
        self,
        client: KubeClient,
        rtype: ResourceType,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        on_change: ChangeHandler | None = None,
        watch_timeout: int = 300,
        absent_retry: float = 30.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.client = client
        self.rtype = rtype
        self.namespace = namespace
        self.label_selector = label_selector
        self._handlers: list[ChangeHandler] = [on_change] if on_change else []
        self.watch_timeout = watch_timeout
        self.absent_retry = absent_retry
        self._backoff = backoff or Backoff()
        self.objects: dict[ObjectKey, KubeObject] = {}
        self.served = True
        self.lists = 0
        self.problem = ""
        """Why the last list or watch failed; empty once one succeeds again."""
        self._synced = asyncio.Event()
        self._resource_version = ""

    def __repr__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        selector = f" [{self.label_selector}]" if self.label_selector else ""
        return f"<Informer {self.rtype}{where}{selector}: {len(self.objects)} objects>"

    def add_handler(self, handler: ChangeHandler) -> None:
        self._handlers.append(handler)

    @property
    def synced(self) -> bool:
        """True once the first list completed (or the type turned out not to be served)."""
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def get(self, key: ObjectKey) -> KubeObject | None:
        return self.objects.get(key)

    def values(self) -> list[KubeObject]:
        return [self.objects[k] for k in sorted(self.objects)]

    async def run(self) -> None:
        """List and watch until cancelled."""
        while True:
            try:
                if not self._resource_version:
                    await self._relist()
                    self._backoff.reset()
                await self._watch()
                self._backoff.reset()
            except Gone:
                log.info("%s: history too old, listing again", self.rtype)
                self._resource_version = ""
            except NotFound:
                if self.served:
                    log.info("%s is not served by the API server; looking again later", self.rtype)
                self._set_absent()
                await asyncio.sleep(self.absent_retry)
            except KubeError as exc:
                delay = self._backoff.next_delay()
                self.problem = str(exc)
                log.warning("%s: %s; retrying in %.1fs", self.rtype, exc, delay)
                # Ends early when the API server is seen answering again.
                await self.client.connectivity.pause(delay)

    async def _relist(self) -> None:
        listing = await self.client.list(
            self.rtype, self.namespace, label_selector=self.label_selector
        )
        self.lists += 1
        self.served = True
        self.problem = ""
        fresh = {object_key(obj): obj for obj in listing.items}
        old = self.objects
        self.objects = fresh
        self._resource_version = listing.resource_version
        for key in sorted(old.keys() - fresh.keys()):
            self._notify(key, old[key], None)
        for key in sorted(fresh):
            before = old.get(key)
            if before is None or resource_version(before) != resource_version(fresh[key]):
                self._notify(key, before, fresh[key])
        self._synced.set()

    async def _watch(self) -> None:
        async for event in self.client.watch(
            self.rtype,
            self._resource_version,
            namespace=self.namespace,
            label_selector=self.label_selector,
            timeout_seconds=self.watch_timeout,
            opened=self._watch_opened,
        ):
            self._backoff.reset()
            self.problem = ""
            version = resource_version(event.object)
            if version:
                self._resource_version = version
            if event.type == "BOOKMARK":
                continue
            key = object_key(event.object)
            before = self.objects.get(key)
            if event.type == "DELETED":
                if before is not None:
                    del self.objects[key]
                    self._notify(key, before, None)
                continue
            if before is not None and resource_version(before) == version:
                continue
            self.objects[key] = event.object
            self._notify(key, before, event.object)

    def _watch_opened(self) -> None:
        self._backoff.reset()
        self.problem = ""

    def _set_absent(self) -> None:
        self.served = False
        self._resource_version = ""
        old, self.objects = self.objects, {}
        for key in sorted(old):
            self._notify(key, old[key], None)
        self._synced.set()

    def _notify(self, key: ObjectKey, old: KubeObject | None, new: KubeObject | None) -> None:
        for handler in self._handlers:
            try:
                handler(key, old, new)
            except Exception:
                log.exception("%s: change handler failed for %s", self.rtype, key)


async def wait_all_synced(*informers: Informer) -> None:
    await asyncio.gather(*(i.wait_synced() for i in informers))


def run_all(informers: list[Informer]) -> list[asyncio.Task[Any]]:
    return [asyncio.create_task(i.run(), name=f"informer {i.rtype}") for i in informers]
