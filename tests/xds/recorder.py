"""A StreamEvents implementation for tests: sets snapshots on connect, records the rest."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from meshext.xds.cache import SnapshotCache
from meshext.xds.snapshot import Snapshot
from meshext.xds.types import Node

WAIT_SECONDS = 60.0


@dataclass(frozen=True)
class Acked:
    node_id: str
    type_url: str
    version: str
    resource_names: tuple[str, ...]


@dataclass(frozen=True)
class Nacked:
    node_id: str
    type_url: str
    version: str
    resource_names: tuple[str, ...]
    error_detail: str


@dataclass
class Recorder:
    """Records callbacks; ``on_connect`` publishes ``snapshots[node.id]`` when present."""

    cache: SnapshotCache
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    connected: list[Node] = field(default_factory=list)
    acks: list[Acked] = field(default_factory=list)
    nacks: list[Nacked] = field(default_factory=list)
    disconnected: list[str] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_connect(self, node: Node) -> None:
        self.connected.append(node)
        snapshot = self.snapshots.get(node.id)
        if snapshot is not None:
            self.cache.set_snapshot(node.id, snapshot)
        self._changed.set()

    def on_ack(
        self, node_id: str, type_url: str, version: str, resource_names: Sequence[str]
    ) -> None:
        self.acks.append(Acked(node_id, type_url, version, tuple(resource_names)))
        self._changed.set()

    def on_nack(
        self,
        node_id: str,
        type_url: str,
        rejected_version: str,
        resource_names: Sequence[str],
        error_detail: str,
    ) -> None:
        self.nacks.append(
            Nacked(node_id, type_url, rejected_version, tuple(resource_names), error_detail)
        )
        self._changed.set()

    def on_disconnect(self, node_id: str) -> None:
        self.disconnected.append(node_id)
        self._changed.set()

    def acked(self, type_url: str, name: str, version: str) -> bool:
        """Whether some ACK covered resource ``name`` of ``type_url`` at ``version``."""
        return any(
            ack.type_url == type_url and name in ack.resource_names and ack.version == version
            for ack in self.acks
        )

    async def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Wait until ``condition`` holds after some callback (generous timeout)."""

        async def loop() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(loop(), WAIT_SECONDS)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None
