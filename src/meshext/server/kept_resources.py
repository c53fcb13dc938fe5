"""Listeners and clusters kept by shape from one recomputation to the next.

A change of an extension's config or module (the usual change) gives every affected
proxy a new ECDS resource and leaves its listeners and clusters as they were: their
shapes (:class:`meshext.envoy.sidecar.ListenerShape`, :class:`ClusterShape`) do not
change. Made again on each change, they cost most of a recomputation: building the
protobuf messages, then serializing and hashing them into resources. This keeps, per
shape, the message made and the resource packed from it, so a later round takes them
as they are.

Correct by construction: a listener or cluster is made from its shape only (see
:mod:`meshext.envoy.sidecar`), so the kept one is what would be made again. Bounded:
what the last two rounds did not ask for is dropped (:meth:`KeptResources.next_round`),
so a configuration that changes shapes does not grow this.

The kept messages are shared by every snapshot that holds them and must not be
changed (as everything in a snapshot).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from meshext.envoy.sidecar import ClusterShape, ListenerShape, make_cluster, make_listener
from meshext.xds.snapshot import Resource, make_resource

_Key = TypeVar("_Key", bound=Hashable)
_Value = TypeVar("_Value")


class _TwoRounds(Generic[_Key, _Value]):
    """What this round and the last one used, by key: a value of the last round found
    again is carried into this one; what this round did not use is dropped with the
    next."""

    def __init__(self) -> None:
        self._current: dict[_Key, _Value] = {}
        self._previous: dict[_Key, _Value] = {}

    def get(self, key: _Key) -> _Value | None:
        value = self._current.get(key)
        if value is None:
            value = self._previous.get(key)
            if value is not None:
                self._current[key] = value
        return value

    def put(self, key: _Key, value: _Value) -> None:
        self._current[key] = value

    def next_round(self) -> None:
        self._previous, self._current = self._current, {}


class KeptResources:
    """Listeners and clusters by shape, with their resources, kept across rounds."""

    def __init__(self) -> None:
        self._listeners: _TwoRounds[ListenerShape, Any] = _TwoRounds()
        self._clusters: _TwoRounds[ClusterShape, Any] = _TwoRounds()
        self._packed: _TwoRounds[int, Resource] = _TwoRounds()

    def listener(self, shape: ListenerShape) -> Any:
        """:func:`make_listener`, keeping what it made (a ``ListenerFactory``)."""
        return _kept(self._listeners, shape, make_listener)

    def cluster(self, shape: ClusterShape) -> Any:
        """:func:`make_cluster`, keeping what it made (a ``ClusterFactory``)."""
        return _kept(self._clusters, shape, make_cluster)

    def packed(self, type_url: str, message: Any) -> Resource:
        """``make_resource(type_url, message)``, made once per message while this round
        or the last asks for it. A resource is found by its message's id and taken
        only if it holds that very message (which it keeps alive, so the id is not
        reused meanwhile)."""
        resource = self._packed.get(id(message))
        if resource is None or resource.message is not message:
            resource = make_resource(type_url, message)
            self._packed.put(id(message), resource)
        return resource

    def next_round(self) -> None:
        """A new round starts: what neither it nor the last round asks for is dropped."""
        self._listeners.next_round()
        self._clusters.next_round()
        self._packed.next_round()


def _kept(store: _TwoRounds[_Key, Any], shape: _Key, make: Callable[[_Key], Any]) -> Any:
    message = store.get(shape)
    if message is None:
        message = make(shape)
        store.put(shape, message)
    return message


__all__ = ["KeptResources"]
