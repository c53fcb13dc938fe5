"""Immutable, content-versioned snapshots of the xDS resources meant for one proxy.

A :class:`Snapshot` holds, per type URL, a :class:`ResourceSet`: the resources by name,
each with a version that is a hash of its deterministic serialization, and a set
version that hashes the (name, version) pairs. Identical content therefore gives
identical versions, in this process and after a restart, which is what lets the
server send nothing when nothing changed and recognise a reconnecting proxy that is
already up to date.

Resources are serialized once, when the snapshot is built; the packed ``Any`` kept
with each resource, serialized, is what goes on the wire (see
:mod:`meshext.xds.wire`). Messages handed to :meth:`Snapshot.build`
must not be changed afterwards. Nested ``Any`` fields (an HCM inside a listener, a
filter config inside an extension config) are hashed as the bytes they hold, so pack
them with :func:`pack`, which serializes deterministically.

:meth:`Snapshot.consistency_errors` finds references that cannot be satisfied: a
listener filter fetched over ADS through ECDS, an RDS route configuration or an EDS
cluster load assignment missing from the snapshot would leave the proxy's listener or
cluster warming forever. What a listener or cluster references is worked out once,
when its :class:`Resource` is made, so checking a snapshot costs little.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType
from typing import Any, Final

from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from google.protobuf import any_pb2

from meshext.errors import MeshextError
from meshext.xds import types, wire

_HCM: Final = types.TYPE_PREFIX + str(
    http_connection_manager_pb2.HttpConnectionManager.DESCRIPTOR.full_name
)
_VERSION_CHARS: Final = 16


class SnapshotError(MeshextError):
    """A snapshot cannot be built or published as given (a permanent error)."""


class InconsistentSnapshotError(SnapshotError):
    """A snapshot references resources it does not hold."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("inconsistent snapshot: " + "; ".join(self.problems))


def pack(message: Any) -> Any:
    """``google.protobuf.Any`` holding ``message`` serialized deterministically."""
    return any_pb2.Any(
        type_url=types.message_type_url(message),
        value=message.SerializeToString(deterministic=True),
    )


def versions_digest(versions: Mapping[str, str]) -> str:
    """The version of a set of resources given as name → resource version.

    Independent of order; the empty set has a version too (an empty state-of-the-world
    response must still be versioned).
    """
    text = "".join(f"{name}\0{versions[name]}\n" for name in sorted(versions))
    return hashlib.sha256(text.encode()).hexdigest()[:_VERSION_CHARS]


@dataclass(frozen=True, slots=True)
class Requirement:
    """A resource that another one fetches over ADS and cannot work without."""

    type_url: str
    name: str


@dataclass(frozen=True, slots=True)
class Resource:
    """One resource: its name, content version, message, and the packed wire form.

    ``requires`` lists what a listener or cluster fetches over ADS (see
    :meth:`Snapshot.consistency_errors`). Build with :func:`make_resource`.
    ``encoded`` is ``packed`` serialized, done once here: responses are assembled
    from it (:mod:`meshext.xds.wire`) and never serialize the resource again.
    """

    name: str
    version: str
    message: Any
    packed: Any
    requires: tuple[Requirement, ...] = ()
    encoded: bytes = field(init=False, repr=False, compare=False)
    _delta_entry: bytes = field(init=False, repr=False, compare=False, default=b"")

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoded", self.packed.SerializeToString(deterministic=True))

    @property
    def delta_entry(self) -> bytes:
        """The resource as an entry of a delta response (name, version, ``Any``)."""
        entry = self._delta_entry
        if not entry:
            entry = wire.delta_entry(self.name, self.version, self.encoded)
            object.__setattr__(self, "_delta_entry", entry)
        return entry


@dataclass(frozen=True, slots=True)
class ResourceSet:
    """The resources of one type, by name, and the version of the whole set."""

    type_url: str
    version: str
    resources: Mapping[str, Resource]
    versions: Mapping[str, str]

    @classmethod
    def of(cls, type_url: str, resources: Iterable[Resource]) -> ResourceSet:
        """The set of ``resources``, which must have distinct names."""
        by_name: dict[str, Resource] = {}
        for resource in resources:
            if resource.name in by_name:
                raise SnapshotError(f"two {_short(type_url)} resources named {resource.name!r}")
            by_name[resource.name] = resource
        names = sorted(by_name)
        versions = {name: by_name[name].version for name in names}
        return cls(
            type_url=type_url,
            version=versions_digest(versions),
            resources=MappingProxyType({name: by_name[name] for name in names}),
            versions=MappingProxyType(versions),
        )

    def __len__(self) -> int:
        return len(self.resources)

    def __iter__(self) -> Iterator[str]:
        return iter(self.resources)

    def __contains__(self, name: object) -> bool:
        return name in self.resources


def make_resource(type_url: str, message: Any) -> Resource:
    """Name, serialize and version ``message`` as a resource of ``type_url``.

    A control plane serving many proxies the same resource can make it once and put
    the one :class:`Resource` into every proxy's snapshot.
    """
    actual = types.message_type_url(message)
    if actual != type_url:
        raise SnapshotError(f"a {_short(actual)} message cannot be a {_short(type_url)} resource")
    name = types.resource_name(type_url, message)
    if not name:
        raise SnapshotError(f"a {_short(type_url)} resource has no name")
    value = message.SerializeToString(deterministic=True)
    return Resource(
        name=name,
        version=hashlib.sha256(value).hexdigest()[:_VERSION_CHARS],
        message=message,
        packed=any_pb2.Any(type_url=type_url, value=value),
        requires=_requirements(type_url, message),
    )


class Snapshot:
    """Everything one proxy should have, per type URL, immutable once built.

    Build with :meth:`build`; a type not given is an empty set (for listeners and
    clusters: the proxy should have none). Two snapshots are equal when every type has
    the same version, that is, the same content.
    """

    __slots__ = ("_key", "_sets")

    def __init__(self, sets: Iterable[ResourceSet] = ()) -> None:
        by_type: dict[str, ResourceSet] = {}
        for resource_set in sets:
            if resource_set.type_url in by_type:
                raise SnapshotError(f"two resource sets of type {_short(resource_set.type_url)}")
            by_type[resource_set.type_url] = resource_set
        self._sets: Mapping[str, ResourceSet] = MappingProxyType(
            {type_url: by_type[type_url] for type_url in sorted(by_type, key=_rank)}
        )
        self._key = tuple(
            (type_url, resource_set.version)
            for type_url, resource_set in self._sets.items()
            if resource_set.resources
        )

    @classmethod
    def build(cls, resources: Mapping[str, Iterable[Any]]) -> Snapshot:
        """A snapshot of protobuf messages given per type URL.

        Each message must be of its type URL's message type; names come from the
        messages (``cluster_name`` for endpoints, ``name`` otherwise) and must be unique
        per type. Raises :class:`SnapshotError` otherwise.
        """
        return cls(
            ResourceSet.of(type_url, (make_resource(type_url, message) for message in messages))
            for type_url, messages in resources.items()
        )

    def resources(self, type_url: str) -> ResourceSet:
        """The resources of ``type_url`` (an empty set when the snapshot has none)."""
        found = self._sets.get(type_url)
        return _empty_set(type_url) if found is None else found

    def version(self, type_url: str) -> str:
        """The version of the set of ``type_url`` resources."""
        return self.resources(type_url).version

    def resource_version(self, type_url: str, name: str) -> str | None:
        """The content version of one resource, ``None`` when absent."""
        return self.resources(type_url).versions.get(name)

    @property
    def type_urls(self) -> tuple[str, ...]:
        """Type URLs holding at least one resource, in push order."""
        return tuple(type_url for type_url, _ in self._key)

    def consistency_errors(self) -> list[str]:
        """References from listeners and clusters to resources the snapshot lacks.

        Listener filters fetched through ECDS, RDS route configurations and EDS load
        assignments must be in the snapshot: without them the proxy keeps the listener
        or cluster warming. An ECDS filter with a default config applied without
        warming needs nothing.
        """
        problems = []
        for type_url, kind in ((types.CLUSTER, "cluster"), (types.LISTENER, "listener")):
            for resource in self.resources(type_url).resources.values():
                for needed in resource.requires:
                    if needed.name not in self.resources(needed.type_url).versions:
                        problems.append(
                            f"{kind} {resource.name!r} needs {_short(needed.type_url)} "
                            f"{needed.name!r}, which is missing"
                        )
        return problems

    def check_consistency(self) -> None:
        """Raise :class:`InconsistentSnapshotError` if any reference is unsatisfied."""
        problems = self.consistency_errors()
        if problems:
            raise InconsistentSnapshotError(problems)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Snapshot):
            return NotImplemented
        return self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{_short(type_url)}: {len(self._sets[type_url])}@{version}"
            for type_url, version in self._key
        )
        return f"Snapshot({parts})"


def _requirements(type_url: str, message: Any) -> tuple[Requirement, ...]:
    found: dict[Requirement, None] = {}
    if type_url == types.LISTENER:
        for listener_filter in message.listener_filters:
            _extension_config(listener_filter, found)
        chains = list(message.filter_chains)
        if message.HasField("default_filter_chain"):
            chains.append(message.default_filter_chain)
        for chain in chains:
            for network_filter in chain.filters:
                _extension_config(network_filter, found)
                if network_filter.typed_config.type_url != _HCM:
                    continue
                hcm = http_connection_manager_pb2.HttpConnectionManager()
                network_filter.typed_config.Unpack(hcm)
                if hcm.HasField("rds") and hcm.rds.config_source.HasField("ads"):
                    found[Requirement(types.ROUTE, hcm.rds.route_config_name)] = None
                for http_filter in hcm.http_filters:
                    _extension_config(http_filter, found)
    elif type_url == types.CLUSTER and message.HasField("eds_cluster_config"):
        eds = message.eds_cluster_config
        if eds.eds_config.HasField("ads"):
            found[Requirement(types.ENDPOINT, eds.service_name or message.name)] = None
    return tuple(found)


def _extension_config(filter_message: Any, found: dict[Requirement, None]) -> None:
    if not filter_message.HasField("config_discovery"):
        return
    discovery = filter_message.config_discovery
    if not discovery.config_source.HasField("ads"):
        return
    if discovery.HasField("default_config") and discovery.apply_default_config_without_warming:
        return
    found[Requirement(types.EXTENSION_CONFIG, filter_message.name)] = None


def _rank(type_url: str) -> tuple[int, str]:
    return _RANKS.get(type_url) or types.push_rank(type_url)


_RANKS: Final = {type_url: types.push_rank(type_url) for type_url in types.PUSH_ORDER}


@cache
def _empty_set(type_url: str) -> ResourceSet:
    return ResourceSet.of(type_url, ())


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]
