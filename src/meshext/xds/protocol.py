"""The xDS stream protocols, state-of-the-world and delta, as state machines without I/O.

One machine serves one ADS stream. Feed it what arrives (a ``DiscoveryRequest`` or
``DeltaDiscoveryRequest``, or a new :class:`~meshext.xds.snapshot.Snapshot` for the
stream's node) and it returns the events that follow, in order: :class:`Response`
(send its ``message``), :class:`Ack` and :class:`Nack` (the client's verdict on an
earlier response). The caller does the I/O; the machine never blocks and never reads
a clock, so every rule below is tested without gRPC.

Rules the machines follow:

* Versions and nonces are per type URL; nonces come from one counter per stream.
* At most one response per type is outstanding: the next one waits for the client's
  ACK or NACK. Versions stay exact (the client's reported version always describes
  what it holds) and status is attributable.
* Per-name types (see :mod:`meshext.xds.types`) go out one resource per response, so
  an ACK or NACK concerns exactly one resource. Complete types (listeners, clusters)
  go out whole in state-of-the-world, all changes at once in delta.
* A request whose nonce is not the latest this stream sent for its type is stale: it
  is neither an ACK nor a NACK and is never answered. Its subscription still counts
  (a name the client dropped and asked for again must be sent again); the answer
  comes after the verdict on the outstanding response.
* Names subscribed before they exist are remembered and sent when they appear.
* A rejected version is not sent again; a changed one is.
* Something is sent only when the client lacks it. A client reconnecting with
  ``version_info`` (state-of-the-world) or ``initial_resource_versions`` (delta) that
  matches the snapshot gets nothing; what it already holds at the snapshot's version
  is confirmed instead with an :class:`Ack` whose ``nonce`` is empty.

Versions reported in events (``Response.version``, ``Ack.version``, ``Nack.version``)
can be compared with the snapshot: for a per-name type it is the content version of
the one resource in the response (``""`` for a delta response removing it); for a
complete type it is the version of the whole set sent (for a wildcard subscription,
``snapshot.version(type_url)``). On the state-of-the-world wire a per-name response's
``version_info`` is ``"<resource version>;<name>=<version>&..."``, the resource's
version followed by everything the client holds of that type once it accepts the
response (URL-encoded). A client reconnecting after a restart of the server sends
that back, which tells the new stream exactly what the client has.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, quote_plus

from envoy.service.discovery.v3 import discovery_pb2

from meshext.errors import MeshextError
from meshext.xds import types, wire
from meshext.xds.snapshot import ResourceSet, Snapshot, versions_digest

# Stands for "removed" where a rejected version is recorded.
_REMOVAL = ""


class ProtocolError(MeshextError):
    """A client broke the protocol (no node on the first request, no type URL, ...)."""


# The events below are values: nothing changes one after it is made. They are not
# frozen dataclasses because one is made for every response and every ACK of every
# stream, and a frozen dataclass takes four times as long to make.


@dataclass(slots=True)
class Response:
    """Send ``payload``, a serialized ``DiscoveryResponse`` (``DeltaDiscoveryResponse``
    when ``delta``).

    The payload is assembled from parts encoded once for every stream that gets the
    same response (see :mod:`meshext.xds.wire`); :attr:`message` parses it back.
    """

    type_url: str
    nonce: str
    version: str
    resource_names: tuple[str, ...]
    removed_names: tuple[str, ...]
    payload: bytes = field(repr=False, compare=False)
    delta: bool = field(default=False, repr=False, compare=False)

    @property
    def message(self) -> Any:
        """The payload as a protobuf message (parsed on each call: for tests and tools)."""
        kind = (
            discovery_pb2.DeltaDiscoveryResponse if self.delta else discovery_pb2.DiscoveryResponse
        )
        return kind.FromString(self.payload)


@dataclass(slots=True)
class Ack:
    """The client accepted the response with ``nonce``.

    An ``Ack`` with an empty ``nonce`` confirms resources a client already held when
    its stream opened (it reconnected, to this server or a restarted one) at the
    version the snapshot has now: nothing is sent for them, and this is the only
    word the control plane gets that the client runs them.
    """

    type_url: str
    version: str
    nonce: str
    resource_names: tuple[str, ...]
    removed_names: tuple[str, ...] = ()


@dataclass(slots=True)
class Nack:
    """The client rejected the response with ``nonce``; it keeps what it had."""

    type_url: str
    version: str
    nonce: str
    error_detail: str
    resource_names: tuple[str, ...]
    removed_names: tuple[str, ...] = ()


Event = Response | Ack | Nack


@dataclass(frozen=True, slots=True)
class TypeStatus:
    """What one stream knows about one type, for admin views.

    ``resources`` is what the client holds as far as the server knows (name → content
    version). ``rejected`` maps each resource whose latest sent version was NACKed
    (and not replaced since) to the client's error detail; ``last_nack`` is the detail
    of the latest NACK among those, ``None`` when no rejection stands.
    """

    type_url: str
    wildcard: bool
    subscribed: tuple[str, ...]
    acked_version: str
    resources: Mapping[str, str]
    rejected: Mapping[str, str]
    last_nack: str | None
    pending_nonce: str | None
    responses_sent: int
    acks: int
    nacks: int


@dataclass(slots=True)
class _Pending:
    nonce: str
    version: str
    sent: dict[str, str]
    removed: tuple[str, ...]
    # State-of-the-world complete types: the response replaces what the client holds.
    replaces: bool = False


class _TypeState:
    __slots__ = (
        "acked_version",
        "acks",
        "complete",
        "held_confirmed",
        "initial_empty",
        "last_nack",
        "last_nonce",
        "nacks",
        "names",
        "pending",
        "rejected",
        "rejected_set",
        "sent",
        "sorted_names",
        "type_url",
        "view",
        "view_version",
        "wildcard",
    )

    def __init__(self, type_url: str) -> None:
        self.type_url = type_url
        self.complete = types.is_complete(type_url)
        self.wildcard = False
        self.names: set[str] = set()
        # ``names`` in order, made when first needed after they change.
        self.sorted_names: tuple[str, ...] | None = None
        # What the client holds, name -> resource version, as far as we know.
        self.view: dict[str, str] = {}
        # State-of-the-world complete types: version of the set the client holds.
        self.view_version: str | None = None
        # Delta complete types: answer once even with nothing, so the client's
        # initialization completes.
        self.initial_empty = False
        # Whether resources held at the stream's start were compared with a snapshot.
        self.held_confirmed = False
        self.pending: _Pending | None = None
        self.last_nonce = ""
        # name -> (rejected version, error detail)
        self.rejected: dict[str, tuple[str, str]] = {}
        # State-of-the-world complete types: the rejected set version.
        self.rejected_set: str | None = None
        self.acked_version = ""
        self.last_nack: str | None = None
        self.sent = 0
        self.acks = 0
        self.nacks = 0

    def interested(self, name: str) -> bool:
        return self.wildcard or name in self.names

    def prune(self) -> None:
        if not self.wildcard:
            self.view = {name: v for name, v in self.view.items() if name in self.names}

    def set_names(self, names: Iterable[str]) -> None:
        # Names are interned: every stream subscribed to a resource shares one.
        self.names = set(map(sys.intern, names))
        self.sorted_names = None

    def names_changed(self) -> None:
        self.sorted_names = None

    def wanted(self, resources: ResourceSet) -> Mapping[str, str]:
        if self.wildcard:
            return resources.versions
        versions = resources.versions
        ordered = self.sorted_names
        if ordered is None:
            ordered = self.sorted_names = tuple(sorted(self.names))
        return {name: versions[name] for name in ordered if name in versions}

    def is_rejected(self, name: str, version: str) -> bool:
        rejected = self.rejected.get(name)
        return rejected is not None and rejected[0] == version

    def resolve(self, error_detail: str | None) -> Ack | Nack:
        pending = self.pending
        assert pending is not None
        self.pending = None
        names = tuple(pending.sent)
        if error_detail is not None:
            self.nacks += 1
            self.last_nack = error_detail
            for name, version in pending.sent.items():
                if self.view.get(name) != version:
                    self.rejected[name] = (version, error_detail)
            removed = pending.removed
            if pending.replaces:
                removed = tuple(name for name in self.view if name not in pending.sent)
                self.rejected_set = pending.version
            for name in removed:
                self.rejected[name] = (_REMOVAL, error_detail)
            return Nack(
                self.type_url, pending.version, pending.nonce, error_detail, names, pending.removed
            )
        self.acks += 1
        self.acked_version = pending.version
        if pending.replaces:
            self.view = {}
            self.view_version = pending.version
            self.rejected_set = None
        for name, version in pending.sent.items():
            if self.interested(name):
                self.view[name] = version
            self.rejected.pop(name, None)
        for name in pending.removed:
            self.view.pop(name, None)
            self.rejected.pop(name, None)
        if not self.rejected:
            self.last_nack = None
        return Ack(self.type_url, pending.version, pending.nonce, names, pending.removed)

    def confirm_held(self, resources: ResourceSet) -> list[Ack]:
        """Acks for what the client held at the stream's start and the snapshot still has.

        Runs once per type, the first time both the client's first request and a
        snapshot are known.
        """
        if self.held_confirmed:
            return []
        self.held_confirmed = True
        if self.complete and self.view_version is not None:
            # State of the world: the client named the version of the whole set.
            if self.view_version != resources.version:
                return []
            self.acked_version = resources.version
            return [Ack(self.type_url, resources.version, "", tuple(resources.versions))]
        held = sorted(
            name for name, version in self.view.items() if resources.versions.get(name) == version
        )
        return [Ack(self.type_url, self.view[name], "", (name,)) for name in held]

    def status(self) -> TypeStatus:
        return TypeStatus(
            type_url=self.type_url,
            wildcard=self.wildcard,
            subscribed=tuple(sorted(self.names)),
            acked_version=self.acked_version,
            resources=MappingProxyType(dict(sorted(self.view.items()))),
            rejected=MappingProxyType(
                {name: detail for name, (_, detail) in sorted(self.rejected.items())}
            ),
            last_nack=self.last_nack if self.rejected else None,
            pending_nonce=self.pending.nonce if self.pending else None,
            responses_sent=self.sent,
            acks=self.acks,
            nacks=self.nacks,
        )


class _Stream:
    """What both protocol variants share: node, snapshot, per-type state, nonces."""

    def __init__(self) -> None:
        self.node: types.Node | None = None
        self.snapshot: Snapshot | None = None
        self._types: dict[str, _TypeState] = {}
        self._order: list[_TypeState] = []
        self._nonce = 0

    def receive_snapshot(self, snapshot: Snapshot) -> list[Event]:
        """Take the node's new snapshot; returns the responses it makes due."""
        self.snapshot = snapshot
        events: list[Event] = []
        # The checks are made here too: this runs for every type of every stream of a
        # node on every change, and most types have nothing to do.
        for state in self._order:
            if not state.held_confirmed:
                events.extend(self._confirm_held(state))
            if state.pending is None:
                response = self._next(state)
                if response is not None:
                    events.append(response)
        return events

    def _confirm_held(self, state: _TypeState) -> list[Ack]:
        if state.held_confirmed or self.snapshot is None:
            return []
        return state.confirm_held(self.snapshot.resources(state.type_url))

    def status(self) -> dict[str, TypeStatus]:
        """Per requested type URL, what the stream knows (see :class:`TypeStatus`)."""
        return {state.type_url: state.status() for state in self._order}

    @property
    def waiting_for_client(self) -> bool:
        """Whether some response awaits its ACK or NACK."""
        return any(state.pending is not None for state in self._order)

    def _identify(self, request: Any) -> None:
        if self.node is None:
            if not request.HasField("node") or not request.node.id:
                raise ProtocolError("the first request of a stream must carry node.id")
            self.node = types.Node.from_proto(request.node)
        elif request.HasField("node") and request.node.id and request.node.id != self.node.id:
            raise ProtocolError(
                f"node id changed within a stream: {self.node.id!r} -> {request.node.id!r}"
            )
        if not request.type_url:
            raise ProtocolError("a request must carry type_url")

    def _state(self, type_url: str) -> tuple[_TypeState, bool]:
        state = self._types.get(type_url)
        if state is not None:
            return state, False
        state = _TypeState(type_url)
        self._types[type_url] = state
        self._order.append(state)
        self._order.sort(key=lambda s: types.push_rank(s.type_url))
        return state, True

    def _next_nonce(self) -> str:
        self._nonce += 1
        return str(self._nonce)

    def _next(self, state: _TypeState) -> Response | None:
        if state.pending is not None or self.snapshot is None:
            return None
        response = self._compose(state, self.snapshot.resources(state.type_url))
        if response is not None:
            state.last_nonce = response.nonce
            state.sent += 1
        return response

    def _compose(self, state: _TypeState, resources: ResourceSet) -> Response | None:
        raise NotImplementedError


class SotwStream(_Stream):
    """State-of-the-world ADS (``StreamAggregatedResources``) for one stream."""

    def receive_request(self, request: Any) -> list[Event]:
        """Take a ``DiscoveryRequest``; returns the ACK/NACK and responses it causes.

        Raises :class:`ProtocolError` for a request the protocol does not allow.
        """
        self._identify(request)
        state, first = self._state(request.type_url)
        stale = bool(state.last_nonce) and request.response_nonce != state.last_nonce
        events: list[Event] = []
        if not stale and state.pending is not None:
            error = request.error_detail.message if request.HasField("error_detail") else None
            events.append(state.resolve(error))
        # Every request carries the client's whole current subscription, stale or not;
        # keeping it lets a name dropped and requested again be sent again.
        names = set(request.resource_names)
        wildcard = types.WILDCARD in names or (state.complete and not names)
        names.discard(types.WILDCARD)
        if names != state.names or wildcard != state.wildcard or first:
            # (An ACK usually repeats the subscription: nothing to prune then.)
            state.set_names(names)
            state.wildcard = wildcard
            state.prune()
        if stale:
            return events
        if first and request.version_info:
            if state.complete:
                state.view_version = request.version_info
            else:
                held = _parse_holdings(request.version_info)
                state.view = {name: v for name, v in held.items() if state.interested(name)}
        events.extend(self._confirm_held(state))
        response = self._next(state)
        if response is not None:
            events.append(response)
        return events

    def _compose(self, state: _TypeState, resources: ResourceSet) -> Response | None:
        wanted = state.wanted(resources)
        if state.complete:
            return self._compose_complete(state, resources, wanted)
        for name, version in wanted.items():
            if state.view.get(name) == version or state.is_rejected(name, version):
                continue
            # The client's holdings and the resource's version determine the bytes
            # (its version_info lists the holdings): replicas share one encoding.
            key = ("sotw", state.type_url, name, version, tuple(state.view.items()))
            head = _MEMO.get(key)
            if head is None:
                holds = dict(state.view)
                holds[name] = version
                head = wire.sotw_head(
                    _format_holdings(version, holds),
                    state.type_url,
                    (resources.resources[name].encoded,),
                )
                _MEMO.put(key, head)
            assert isinstance(head, bytes)
            nonce = self._next_nonce()
            state.pending = _Pending(nonce, version, {name: version}, ())
            payload = head + wire.nonce_field(nonce)
            return Response(state.type_url, nonce, version, (name,), (), payload)
        return None

    def _compose_complete(
        self, state: _TypeState, resources: ResourceSet, wanted: Mapping[str, str]
    ) -> Response | None:
        version = resources.version if state.wildcard else versions_digest(wanted)
        if version == state.view_version:
            if not state.view:
                state.view = dict(wanted)
            return None
        if version == state.rejected_set:
            return None
        # The set's version hashes every (name, version) pair it holds.
        key = ("sotw", state.type_url, version)
        head = _MEMO.get(key)
        if head is None:
            by_name = resources.resources
            head = wire.sotw_head(
                version, state.type_url, (by_name[name].encoded for name in wanted)
            )
            _MEMO.put(key, head)
        assert isinstance(head, bytes)
        nonce = self._next_nonce()
        state.pending = _Pending(nonce, version, dict(wanted), (), replaces=True)
        payload = head + wire.nonce_field(nonce)
        return Response(state.type_url, nonce, version, tuple(wanted), (), payload)


class DeltaStream(_Stream):
    """Incremental ADS (``DeltaAggregatedResources``) for one stream."""

    def receive_request(self, request: Any) -> list[Event]:
        """Take a ``DeltaDiscoveryRequest``; returns the ACK/NACK and responses it causes.

        Raises :class:`ProtocolError` for a request the protocol does not allow.
        """
        self._identify(request)
        state, first = self._state(request.type_url)
        events: list[Event] = []
        nonce = request.response_nonce
        if nonce and state.pending is not None and nonce == state.pending.nonce:
            error = request.error_detail.message if request.HasField("error_detail") else None
            events.append(state.resolve(error))
        subscribe = request.resource_names_subscribe
        unsubscribe = request.resource_names_unsubscribe
        if first:
            names = set(subscribe)
            state.wildcard = types.WILDCARD in names or (state.complete and not names)
            names.discard(types.WILDCARD)
            state.set_names(names)
            initial = request.initial_resource_versions
            state.view = {name: initial[name] for name in initial if state.interested(name)}
            state.initial_empty = state.complete and not initial
        elif subscribe or unsubscribe:
            self._change_subscription(state, subscribe, unsubscribe)
        elif not events:
            return events
        events.extend(self._confirm_held(state))
        response = self._next(state)
        if response is not None:
            events.append(response)
        return events

    @staticmethod
    def _change_subscription(
        state: _TypeState, subscribe: Iterable[str], unsubscribe: Iterable[str]
    ) -> None:
        for name in subscribe:
            if name == types.WILDCARD:
                state.wildcard = True
            else:
                state.names.add(name)
                # A client subscribing again to a name wants the resource again.
                state.view.pop(name, None)
        for name in unsubscribe:
            if name == types.WILDCARD:
                state.wildcard = False
            else:
                state.names.discard(name)
        state.names_changed()
        state.prune()

    def _compose(self, state: _TypeState, resources: ResourceSet) -> Response | None:
        wanted = state.wanted(resources)
        view = state.view
        changed = [
            name
            for name, version in wanted.items()
            if view.get(name) != version and not state.is_rejected(name, version)
        ]
        removed = [
            name for name in view if name not in wanted and not state.is_rejected(name, _REMOVAL)
        ]
        if state.complete:
            if not changed and not removed and not state.initial_empty:
                return None
            state.initial_empty = False
            version = resources.version if state.wildcard else versions_digest(wanted)
            return self._respond(state, resources, version, changed, sorted(removed))
        if changed:
            name = changed[0]
            return self._respond(state, resources, wanted[name], [name], [])
        if removed:
            return self._respond(state, resources, "", [], [min(removed)])
        return None

    def _respond(
        self,
        state: _TypeState,
        resources: ResourceSet,
        version: str,
        changed: list[str],
        removed: list[str],
    ) -> Response:
        by_name = resources.resources
        changed_names, removed_names = tuple(changed), tuple(removed)
        key = ("delta", state.type_url, version, changed_names, removed_names)
        parts = _MEMO.get(key)
        if parts is None:
            entries = (by_name[name].delta_entry for name in changed_names)
            parts = wire.delta_parts(version, state.type_url, entries, removed_names)
            _MEMO.put(key, parts)
        assert isinstance(parts, tuple)
        head, tail = parts
        nonce = self._next_nonce()
        sent = {name: by_name[name].version for name in changed_names}
        state.pending = _Pending(nonce, version, sent, removed_names)
        payload = head + wire.nonce_field(nonce) + tail
        return Response(
            state.type_url, nonce, version, changed_names, removed_names, payload, delta=True
        )


class _ResponseMemo:
    """Encoded responses (without their nonce) by what determines their bytes.

    Versions are content hashes, so a key made of the type URL, the versions and the
    names fully determines a response: every stream sent the same resources shares
    one encoding, whichever snapshot or resource set it got them from (the control
    plane may build one snapshot per proxy). The oldest entries go first once the
    encodings kept pass ``budget`` bytes.
    """

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._size = 0
        self._entries: dict[tuple[object, ...], bytes | tuple[bytes, bytes]] = {}

    def get(self, key: tuple[object, ...]) -> bytes | tuple[bytes, bytes] | None:
        return self._entries.get(key)

    def put(self, key: tuple[object, ...], encoded: bytes | tuple[bytes, bytes]) -> None:
        size = len(encoded[0]) + len(encoded[1]) if isinstance(encoded, tuple) else len(encoded)
        entries = self._entries
        while entries and self._size + size > self._budget:
            oldest = next(iter(entries))
            dropped = entries.pop(oldest)
            self._size -= (
                len(dropped[0]) + len(dropped[1]) if isinstance(dropped, tuple) else len(dropped)
            )
        entries[key] = encoded
        self._size += size


_MEMO = _ResponseMemo(budget=16 * 1024 * 1024)


def _format_holdings(version: str, holdings: Mapping[str, str]) -> str:
    # Same encoding as urlencode, with each (few, recurring) name quoted once.
    return version + ";" + "&".join(f"{_quote(name)}={holdings[name]}" for name in sorted(holdings))


@lru_cache(maxsize=65536)
def _quote(name: str) -> str:
    return quote_plus(name, safe="")


def _parse_holdings(version_info: str) -> dict[str, str]:
    _, sep, encoded = version_info.partition(";")
    if not sep:
        return {}
    return dict(parse_qsl(encoded, keep_blank_values=True))
