"""The snapshot cache: the current :class:`Snapshot` of every proxy, by node id.

The control plane writes (:meth:`SnapshotCache.set_snapshot`), the ADS server reads
the current snapshot (:meth:`SnapshotCache.get`) and learns of changes through
:meth:`SnapshotCache.watch`, a callback per node that costs no task and no future per
stream; :meth:`SnapshotCache.next_snapshot` waits until the node's snapshot differs
from a known one, for callers that prefer to await. Publishing a snapshot
whose content equals the current one changes nothing and wakes nobody, so callers
may recompute and set snapshots freely.

The cache lives on one asyncio event loop: call it from that loop's thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from meshext.xds.snapshot import Snapshot

_CONSISTENT_KEPT = 4096
"""Consistent snapshots remembered (one per distinct configuration in use)."""


class SnapshotCache:
    """Current snapshot per node id, with waiters for changes."""

    def __init__(self, *, check_consistency: bool = True) -> None:
        """``check_consistency``: refuse snapshots whose references are unsatisfied."""
        self._check = check_consistency
        # Snapshots found consistent (by content: equal snapshots hold the same
        # resources), so that replicas sharing one snapshot are checked once.
        self._consistent: dict[Snapshot, None] = {}
        self._last_consistent: Snapshot | None = None
        self._snapshots: dict[str, Snapshot] = {}
        self._waiters: dict[str, list[asyncio.Future[Snapshot]]] = {}
        self._watchers: dict[str, list[Callable[[], None]]] = {}

    def set_snapshot(self, node_id: str, snapshot: Snapshot) -> bool:
        """Publish ``snapshot`` for ``node_id``; ``False`` when its content is unchanged.

        Raises :class:`~meshext.xds.snapshot.InconsistentSnapshotError` (nothing is
        published) when consistency checks are on and the snapshot is inconsistent.
        """
        current = self._snapshots.get(node_id)
        if current is not None and current == snapshot:
            return False
        if self._check and snapshot is not self._last_consistent:
            self._check_once(snapshot)
        self._snapshots[node_id] = snapshot
        waiters = self._waiters.pop(node_id, None)
        if waiters is not None:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(snapshot)
        watchers = self._watchers.get(node_id)
        if watchers is not None:
            for notify in tuple(watchers):
                notify()
        return True

    def _check_once(self, snapshot: Snapshot) -> None:
        consistent = self._consistent
        if snapshot not in consistent:
            snapshot.check_consistency()
            if len(consistent) >= _CONSISTENT_KEPT:
                consistent.clear()
            consistent[snapshot] = None
        self._last_consistent = snapshot

    def get(self, node_id: str) -> Snapshot | None:
        """The node's current snapshot, ``None`` if none was set (or it was cleared)."""
        return self._snapshots.get(node_id)

    def clear(self, node_id: str) -> None:
        """Forget the node's snapshot; streams keep what they have until the next one."""
        self._snapshots.pop(node_id, None)

    def node_ids(self) -> list[str]:
        """Node ids holding a snapshot, sorted."""
        return sorted(self._snapshots)

    def watch(self, node_id: str, notify: Callable[[], None]) -> Callable[[], None]:
        """Call ``notify()`` whenever the node's snapshot changes; returns the function
        that stops it.

        ``notify`` runs inside :meth:`set_snapshot`, so it must be quick and must not
        raise: it should only schedule the work (read the snapshot with :meth:`get`
        when that work runs). It is not called for the snapshot current when watching
        starts.
        """
        watchers = self._watchers.setdefault(node_id, [])
        watchers.append(notify)

        def unwatch() -> None:
            found = self._watchers.get(node_id)
            if found is None:
                return
            for index, candidate in enumerate(found):
                if candidate is notify:
                    del found[index]
                    break
            if not found:
                del self._watchers[node_id]

        return unwatch

    async def next_snapshot(self, node_id: str, known: Snapshot | None) -> Snapshot:
        """The node's snapshot as soon as there is one that is not ``known``.

        Returns at once when the current snapshot already differs (by content) from
        ``known``; otherwise waits for the next :meth:`set_snapshot` for the node.
        """
        loop = asyncio.get_running_loop()
        while True:
            current = self._snapshots.get(node_id)
            if current is not None and (known is None or current != known):
                return current
            waiter: asyncio.Future[Snapshot] = loop.create_future()
            self._waiters.setdefault(node_id, []).append(waiter)
            try:
                await waiter
            finally:
                self._forget(node_id, waiter)

    def _forget(self, node_id: str, waiter: asyncio.Future[Snapshot]) -> None:
        waiters = self._waiters.get(node_id)
        if waiters is None:
            return
        try:
            waiters.remove(waiter)
        except ValueError:
            return
        if not waiters:
            del self._waiters[node_id]

    def __repr__(self) -> str:
        waiting = sum(len(waiters) for waiters in self._waiters.values()) + sum(
            len(watchers) for watchers in self._watchers.values()
        )
        return f"SnapshotCache(nodes={len(self._snapshots)}, waiting={waiting})"
