"""Which workers hold streams of which node id, and as whom: decided in the main process.

Each worker's ADS server already refuses a second identity for a node id it serves;
across workers only the main process sees everything. A stream is admitted when no
worker holds the node id or every holder is the same identity; the first admission
of a node id and the last release are what the main process broadcasts to workers
(so each refuses a foreign claim at once, before the round trip) and what it reports
to the control plane as the proxy connecting and disconnecting.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Admission:
    admitted: bool
    first: bool = False
    """The node id had no holder before: the control plane learns of a new proxy."""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Release:
    held: bool
    """The worker held the node id (else the release is ignored)."""
    last: bool = False
    """No worker holds the node id any more: the proxy is gone."""


@dataclass
class NodeClaims:
    _holders: dict[str, dict[int, str]] = field(default_factory=dict)

    def admit(self, node_id: str, worker: int, identity: str) -> Admission:
        holders = self._holders.get(node_id)
        if holders is None:
            self._holders[node_id] = {worker: identity}
            return Admission(True, first=True)
        for holder in holders.values():
            if holder != identity:
                return Admission(
                    False,
                    reason=f"node {node_id!r} is connected as {holder}; "
                    f"{identity} may not claim it",
                )
        holders[worker] = identity
        return Admission(True)

    def release(self, node_id: str, worker: int) -> Release:
        holders = self._holders.get(node_id)
        if holders is None or worker not in holders:
            return Release(False)
        del holders[worker]
        if holders:
            return Release(True)
        del self._holders[node_id]
        return Release(True, last=True)

    def release_worker(self, worker: int) -> list[tuple[str, Release]]:
        """Release every node id ``worker`` held (it exited)."""
        held = [node_id for node_id, holders in self._holders.items() if worker in holders]
        return [(node_id, self.release(node_id, worker)) for node_id in held]

    def held(self, node_id: str) -> bool:
        """Whether some worker holds ``node_id``."""
        return node_id in self._holders

    def holding(self, node_id: str) -> Iterable[int]:
        """The workers holding ``node_id``, in no particular order."""
        holders = self._holders.get(node_id)
        return () if holders is None else holders.keys()

    def workers(self, node_id: str) -> list[int]:
        return sorted(self._holders.get(node_id, ()))

    def holder(self, node_id: str) -> str | None:
        holders = self._holders.get(node_id)
        if not holders:
            return None
        return next(iter(holders.values()))

    def node_ids(self) -> list[str]:
        return sorted(self._holders)
