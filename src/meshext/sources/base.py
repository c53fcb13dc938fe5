"""The narrow interfaces between meshext's core and where its configuration lives.

A config source yields the complete current set of resources each time it changes
(level-triggered: a consumer never needs the history). A status sink receives the
status meshext computed for an extension and writes it where users look (a file,
the Kubernetes status subresource, the admin API).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from meshext.api.extension import ExtensionStatus
from meshext.api.meta import ResourceKey
from meshext.sources.folder import LoadResult


class ConfigSource(Protocol):
    def updates(self) -> AsyncIterator[LoadResult]:
        """Every complete state of the configuration, the current one first."""
        ...


class StatusSink(Protocol):
    async def publish(self, key: ResourceKey, status: ExtensionStatus) -> None:
        """Record ``status`` for the extension ``key``; called only when it changed."""
        ...
