"""Writing ServiceMeshExtension status to the status subresource, only when it changed.

Status is written as a JSON merge patch of the ``status`` subresource: it touches
nothing else (no conflict with users editing the spec) and needs only ``patch`` on
``servicemeshextensions/status``. Fields that disappear from the status (the
deployment fields cleared on failure) are removed with explicit ``null``\\ s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from meshext.api import extension as sme_api
from meshext.api.extension import ExtensionStatus, status_to_dict
from meshext.api.meta import ResourceKey
from meshext.kube.client import KubeClient
from meshext.kube.errors import NotFound
from meshext.kube.resources import SERVICE_MESH_EXTENSION

log = logging.getLogger(__name__)


def merge_patch(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> dict[str, Any]:
    """The RFC 7386 merge patch turning ``current`` into ``desired`` (empty: no change)."""
    current = current or {}
    patch: dict[str, Any] = {}
    for key in current.keys() - desired.keys():
        patch[key] = None
    for key, value in desired.items():
        before = current.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif before != value or key not in current:
            patch[key] = value
    return patch


def status_patch(
    current: Mapping[str, Any] | None, status: ExtensionStatus
) -> dict[str, Any] | None:
    """The patch for the status subresource, or ``None`` when ``current`` already matches."""
    change = merge_patch(current, status_to_dict(status))
    return {"status": change} if change else None


async def write_status(
    client: KubeClient, key: ResourceKey, current: Mapping[str, Any] | None, status: ExtensionStatus
) -> bool:
    """Patch the status of ServiceMeshExtension ``key`` if it differs from ``current``.

    Returns whether a patch was sent. An extension deleted meanwhile is not an error.
    """
    patch = status_patch(current, status)
    if patch is None:
        return False
    try:
        await client.merge_patch(
            SERVICE_MESH_EXTENSION, key.namespace, key.name, patch, subresource="status"
        )
    except NotFound:
        log.debug("%s is gone; its status is not written", key)
        return False
    return True


class KubernetesStatusSink:
    """:class:`~meshext.sources.base.StatusSink` writing to the status subresource.

    Only ServiceMeshExtensions have a meshext status; other kinds (WasmPlugins, whose
    status belongs to Istio) are ignored. ``should_write`` (for example
    ``elector.is_leader``) is asked before every write. The stored status is read once
    and then remembered, so an unchanged status is never sent twice and a stale
    field is removed even when this process never saw it written.
    """

    def __init__(
        self, client: KubeClient, *, should_write: Callable[[], bool] | None = None
    ) -> None:
        self.client = client
        self._should_write = should_write
        self._written: dict[ResourceKey, dict[str, Any]] = {}
        self.writes = 0

    def observe(self, key: ResourceKey, status: Mapping[str, Any] | None) -> None:
        """Record the status currently stored for ``key`` (from a watch)."""
        if status is None:
            self._written.pop(key, None)
        else:
            self._written[key] = dict(status)

    async def publish(self, key: ResourceKey, status: ExtensionStatus) -> None:
        if key.kind != sme_api.KIND:
            return
        if self._should_write is not None and not self._should_write():
            return
        if key not in self._written:
            try:
                stored = await self.client.get(SERVICE_MESH_EXTENSION, key.namespace, key.name)
            except NotFound:
                return
            self._written[key] = dict(stored.get("status") or {})
        if await write_status(self.client, key, self._written.get(key), status):
            self.writes += 1
            self._written[key] = status_to_dict(status)
