"""The Kubernetes API server as a :class:`~meshext.sources.base.ConfigSource`.

``meshext serve`` can take its resources from a cluster instead of a folder:
ServiceMeshExtensions (read through v1, whatever version they were written in),
control planes, member rolls, and WasmPlugins when Istio's CRD is installed —
except the WasmPlugins meshext's own controller rendered, which stand for
extensions already listed. Each change yields the complete current state, decoded
like a folder is; an object that does not decode becomes an error naming
``kubernetes://<namespace>/<kind>/<name>``, and the rest still load.

Other informers whose objects decide how the state is served, without being part of
it (the ConfigMaps of trusted keys, :mod:`meshext.kube.signature_trust`), can run
with the source: the first state waits for them too, and their changes yield the
state again, so the consumer looks at it anew.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

from meshext.api.decode import DecodeError, decode
from meshext.api.meta import SourceLocation
from meshext.istio.render import MANAGED_BY, MANAGED_BY_LABEL
from meshext.kube.client import KubeClient
from meshext.kube.resources import (
    SERVICE_MESH_CONTROL_PLANE,
    SERVICE_MESH_EXTENSION,
    SERVICE_MESH_MEMBER_ROLL,
    WASM_PLUGIN,
    KubeObject,
    ObjectKey,
    ResourceType,
)
from meshext.kube.tasks import cancel_and_wait
from meshext.kube.watching import Informer, wait_all_synced
from meshext.sources.folder import LoadedResource, LoadResult

SOURCE_SCHEME = "kubernetes://"


def location_of(rtype: ResourceType, key: ObjectKey) -> SourceLocation:
    """``kubernetes://<namespace>/<kind>/<name>``: where an object came from."""
    return SourceLocation(f"{SOURCE_SCHEME}{key.namespace}/{rtype.kind}/{key.name}")


class KubernetesSource:
    """Yields a :class:`LoadResult` when started and whenever an object changes.

    Changes arriving while the consumer is busy are coalesced: the next state yielded
    is the latest one. ``namespace`` limits the watch to one namespace.
    ``watch_also``: informers run and waited for with the source's own, whose
    changes yield the state again; their objects are not part of it.
    """

    def __init__(
        self,
        client: KubeClient,
        *,
        namespace: str | None = None,
        wasm_plugins: bool = True,
        watch_timeout: int = 300,
        watch_also: Sequence[Informer] = (),
    ) -> None:
        self.client = client
        self._changed = asyncio.Event()
        types = [SERVICE_MESH_EXTENSION, SERVICE_MESH_CONTROL_PLANE, SERVICE_MESH_MEMBER_ROLL]
        self.informers = [
            Informer(
                client,
                rtype,
                namespace=namespace,
                on_change=self._on_change,
                watch_timeout=watch_timeout,
            )
            for rtype in types
        ]
        if wasm_plugins:
            self.informers.append(
                Informer(
                    client,
                    WASM_PLUGIN,
                    namespace=namespace,
                    label_selector=f"{MANAGED_BY_LABEL}!={MANAGED_BY}",
                    on_change=self._on_change,
                    watch_timeout=watch_timeout,
                )
            )
        self.watched_also = list(watch_also)
        for informer in self.watched_also:
            informer.add_handler(self._on_change)

    def __repr__(self) -> str:
        return f"<KubernetesSource {self.client.host}: {self.informers!r}>"

    def _on_change(self, key: ObjectKey, old: KubeObject | None, new: KubeObject | None) -> None:
        self._changed.set()

    def updates(self) -> AsyncGenerator[LoadResult, None]:
        """The states; close the generator (``aclose``) to stop watching."""
        return self._updates()

    async def _updates(self) -> AsyncGenerator[LoadResult, None]:
        informers = [*self.informers, *self.watched_also]
        tasks = [asyncio.create_task(i.run(), name=f"source informer {i.rtype}") for i in informers]
        try:
            await wait_all_synced(*informers)
            while True:
                self._changed.clear()
                yield self.snapshot()
                await self._changed.wait()
        finally:
            await cancel_and_wait(*tasks)

    def snapshot(self) -> LoadResult:
        """The current state of every watched object, decoded."""
        result = LoadResult()
        for informer in self.informers:
            for key, obj in sorted(informer.objects.items()):
                location = location_of(informer.rtype, key)
                try:
                    resource = decode(obj, location)
                except DecodeError as exc:
                    result.errors.extend(exc.errors)
                    continue
                if resource is not None:
                    result.resources.append(LoadedResource(resource, location))
        return result
