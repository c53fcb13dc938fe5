"""Snapshots from the main process to one worker, each resource and snapshot sent once.

The main process keeps one :class:`Shipment` per worker: what that worker holds, by
reference number. Assigning a snapshot to a node defines only what the worker lacks
(a resource shared by a thousand proxies is sent once, then referred to by number;
replicas sharing one snapshot share its definition too) and releases what no node of
the worker uses any more. The worker applies the same frames to a
:class:`SnapshotTable`, which rebuilds each snapshot once and hands the same object to
every node assigned it. Both sides are pure: they turn calls into frames and frames
into state, and the tests drive them without processes.

Releases are decided by the main process only, so the two sides never disagree on
what a reference means: a worker never drops a definition on its own.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from google.protobuf import any_pb2

from meshext.server.workers.wire import Frame, Kind, WireError, encode
from meshext.xds.snapshot import Requirement, Resource, ResourceSet, Snapshot

_ResourceKey = tuple[str, str, str]  # type URL, name, content version


@dataclass
class Shipment:
    """The main process's record of what one worker holds."""

    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _resources: dict[_ResourceKey, int] = field(default_factory=dict)
    _resource_uses: dict[int, int] = field(default_factory=dict)
    _resource_keys: dict[int, _ResourceKey] = field(default_factory=dict)
    _snapshots: dict[Snapshot, int] = field(default_factory=dict)
    _snapshot_uses: dict[int, int] = field(default_factory=dict)
    _snapshot_parts: dict[int, tuple[Snapshot, list[int]]] = field(default_factory=dict)
    _nodes: dict[str, int] = field(default_factory=dict)

    def assign(self, node_id: str, snapshot: Snapshot) -> list[bytes]:
        """Frames giving ``node_id`` ``snapshot``; none when it has that content already."""
        return self.assign_many(((node_id, snapshot),))

    def assign_many(self, assignments: Iterable[tuple[str, Snapshot]]) -> list[bytes]:
        """Frames giving each node its snapshot: definitions, then one ``ASSIGN`` per
        snapshot naming every node that gets it, then the releases."""
        frames: list[bytes] = []
        by_ref: dict[int, list[str]] = {}
        previous_refs: list[int] = []
        nodes, snapshots, uses = self._nodes, self._snapshots, self._snapshot_uses
        for node_id, snapshot in assignments:
            ref = snapshots.get(snapshot)
            previous = nodes.get(node_id)
            if ref is not None and previous == ref:
                continue
            if ref is None:
                ref = self._define_snapshot(snapshot, frames)
            uses[ref] += 1
            nodes[node_id] = ref
            if ref in by_ref:
                by_ref[ref].append(node_id)
            else:
                by_ref[ref] = [node_id]
            if previous is not None:
                previous_refs.append(previous)
        for ref, node_ids in by_ref.items():
            frames.append(encode(Kind.ASSIGN, [ref, node_ids]))
        for previous in previous_refs:
            self._release_snapshot(previous, frames)
        return frames

    def forget(self, node_id: str) -> list[bytes]:
        """Frames releasing what only ``node_id`` used (the worker no longer serves it)."""
        frames: list[bytes] = []
        previous = self._nodes.pop(node_id, None)
        if previous is not None:
            self._release_snapshot(previous, frames)
        return frames

    def holds(self, node_id: str) -> bool:
        return node_id in self._nodes

    @property
    def resource_count(self) -> int:
        return len(self._resource_uses)

    @property
    def snapshot_count(self) -> int:
        return len(self._snapshot_uses)

    def _define_snapshot(self, snapshot: Snapshot, frames: list[bytes]) -> int:
        parts = []
        refs: list[int] = []
        for type_url in snapshot.type_urls:
            resource_set = snapshot.resources(type_url)
            set_refs = [
                self._resource_ref(resource, type_url, frames)
                for resource in resource_set.resources.values()
            ]
            refs.extend(set_refs)
            parts.append([type_url, set_refs])
        ref = next(self._ids)
        frames.append(encode(Kind.DEFINE_SNAPSHOT, [ref, parts]))
        self._snapshots[snapshot] = ref
        self._snapshot_uses[ref] = 0
        self._snapshot_parts[ref] = (snapshot, refs)
        return ref

    def _resource_ref(self, resource: Resource, type_url: str, frames: list[bytes]) -> int:
        key = (type_url, resource.name, resource.version)
        ref = self._resources.get(key)
        if ref is None:
            ref = next(self._ids)
            requires = [[r.type_url, r.name] for r in resource.requires]
            header = [ref, type_url, resource.name, resource.version, requires]
            frames.append(encode(Kind.DEFINE_RESOURCE, header, resource.packed.value))
            self._resources[key] = ref
            self._resource_keys[ref] = key
            self._resource_uses[ref] = 0
        self._resource_uses[ref] += 1
        return ref

    def _release_snapshot(self, ref: int, frames: list[bytes]) -> None:
        uses = self._snapshot_uses[ref] - 1
        if uses:
            self._snapshot_uses[ref] = uses
            return
        del self._snapshot_uses[ref]
        snapshot, resource_refs = self._snapshot_parts.pop(ref)
        del self._snapshots[snapshot]
        released = []
        for resource_ref in resource_refs:
            left = self._resource_uses[resource_ref] - 1
            if left:
                self._resource_uses[resource_ref] = left
                continue
            del self._resource_uses[resource_ref]
            del self._resources[self._resource_keys.pop(resource_ref)]
            released.append(resource_ref)
        frames.append(encode(Kind.RELEASE, [[ref], released]))


class SnapshotTable:
    """A worker's side of :class:`Shipment`: definitions by reference, node assignments.

    Rebuilt resources carry their serialized form only (``message`` is ``None``): the
    ADS server sends ``packed`` and never looks inside.
    """

    def __init__(self) -> None:
        self._resources: dict[int, Resource] = {}
        self._snapshots: dict[int, Snapshot] = {}

    def apply(self, frame: Frame) -> tuple[list[str], Snapshot] | None:
        """Take one frame; for an ``ASSIGN``, the nodes and the snapshot they now get."""
        header = frame.header
        try:
            if frame.kind is Kind.DEFINE_RESOURCE:
                ref, type_url, name, version, requires = header
                self._resources[int(ref)] = Resource(
                    name=str(name),
                    version=str(version),
                    message=None,
                    packed=any_pb2.Any(type_url=str(type_url), value=frame.blob),
                    requires=tuple(Requirement(str(t), str(n)) for t, n in requires),
                )
            elif frame.kind is Kind.DEFINE_SNAPSHOT:
                ref, parts = header
                self._snapshots[int(ref)] = Snapshot(
                    ResourceSet.of(str(type_url), (self._resources[r] for r in refs))
                    for type_url, refs in parts
                )
            elif frame.kind is Kind.ASSIGN:
                ref, node_ids = header
                if not isinstance(node_ids, list):
                    raise TypeError("node ids are not a list")
                return node_ids, self._snapshots[int(ref)]
            elif frame.kind is Kind.RELEASE:
                snapshots, resources = header
                for ref in snapshots:
                    self._snapshots.pop(int(ref), None)
                for ref in resources:
                    self._resources.pop(int(ref), None)
            else:
                raise WireError(f"a {frame.kind.name} frame holds no snapshot data")
        except (KeyError, ValueError, TypeError) as exc:
            raise WireError(f"{frame.kind.name} frame: {exc!r}") from exc
        return None

    @property
    def resource_count(self) -> int:
        return len(self._resources)

    @property
    def snapshot_count(self) -> int:
        return len(self._snapshots)
