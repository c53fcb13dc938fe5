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

_Shape = TypeVar("_Shape", bound=Hashable)


class _ByShape(Generic[_Shape]):
    """Messages made per shape, this round's and the last round's."""

    def __init__(self, make: Callable[[_Shape], Any]) -> None:
        self._make = make
        self.current: dict[_Shape, Any] = {}
        self.previous: dict[_Shape, Any] = {}

    def __call__(self, shape: _Shape) -> Any:
        message = self.current.get(shape)
        if message is None:
            message = self.previous.get(shape)
            if message is None:
                message = self._make(shape)
            self.current[shape] = message
        return message

    def next_round(self) -> None:
        self.previous, self.current = self.current, {}


class KeptResources:
    """Listeners and clusters by shape, with their resources, kept across rounds."""

    def __init__(self) -> None:
        self.listener: _ByShape[ListenerShape] = _ByShape(make_listener)
        """:func:`make_listener`, keeping what it made (a ``ListenerFactory``)."""
        self.cluster: _ByShape[ClusterShape] = _ByShape(make_cluster)
        """:func:`make_cluster`, keeping what it made (a ``ClusterFactory``)."""
        self._packed: dict[int, Resource] = {}
        self._packed_before: dict[int, Resource] = {}

    def packed(self, type_url: str, message: Any) -> Resource:
        """``make_resource(type_url, message)``, made once per message while this round
        or the last asks for it. A resource is found by its message's id and taken
        only if it holds that very message (which it keeps alive, so the id is not
        reused meanwhile)."""
        key = id(message)
        resource = self._packed.get(key)
        if resource is not None and resource.message is message:
            return resource
        resource = self._packed_before.get(key)
        if resource is None or resource.message is not message:
            resource = make_resource(type_url, message)
        self._packed[key] = resource
        return resource

    def next_round(self) -> None:
        """A new round starts: what neither it nor the last round asks for is dropped."""
        self.listener.next_round()
        self.cluster.next_round()
        self._packed_before, self._packed = self._packed, {}


__all__ = ["KeptResources"]
