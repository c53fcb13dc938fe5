"""Which proxy was offered which version of each extension, and how many run it.

The book sits beside the :class:`~meshext.server.delivery.DeliveryTracker` (which it
owns and keeps up to date): the tracker knows, per proxy and ECDS resource, what was
offered, accepted and rejected; the book knows which extension each resource belongs
to on each proxy, and keeps per extension the number of proxies running, rejecting
and still waiting for the version they were offered.

Every event costs a constant amount of work per resource it names (an offer costs
the number of extensions of the proxy): a push to every proxy, and every proxy's
ACK after it, cost the number of proxies, never its square. An offer is queued
and counted when the proxy's next event arrives or the book is read, so a push to
every proxy costs one append each on the way to the proxies, and the counting
happens with the ACKs, after the responses are written. Per-proxy lists, which
only a reader needs (the admin API, ``meshext status``), are built when asked for,
from the members of one extension only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshext.api.meta import ResourceKey
from meshext.server.delivery import DeliveryState, DeliveryTracker, ProxyDelivery

_QueuedOffer = tuple[
    Mapping[ResourceKey, tuple[str, str]], Iterable[ResourceKey], Mapping[str, Any] | None
]

_QUEUED_KEPT = 8
"""Offers queued for one proxy before they are counted without waiting for it."""


@dataclass(slots=True)
class _Offer:
    """One extension on one proxy: its ECDS resource, the version offered, its state."""

    key: ResourceKey
    name: str
    version: str
    state: DeliveryState


@dataclass(frozen=True)
class DeliveryCounts:
    """How many proxies that should run an extension do, have rejected it, or wait."""

    running: int = 0
    rejected: int = 0
    pending: int = 0

    @property
    def total(self) -> int:
        return self.running + self.rejected + self.pending

    def summary(self) -> str:
        """``2/3 running, 1 rejected``-style summary for tables."""
        if not self.total:
            return "no proxies"
        parts = [f"{self.running}/{self.total} running"]
        if self.rejected:
            parts.append(f"{self.rejected} rejected")
        if self.pending:
            parts.append(f"{self.pending} pending")
        return ", ".join(parts)


class StatusBook:
    """Delivery of every extension to every proxy, counted as events arrive."""

    def __init__(self, tracker: DeliveryTracker | None = None) -> None:
        self.tracker = tracker if tracker is not None else DeliveryTracker()
        """Offers, acceptances and rejections per proxy and resource (isolation asks it)."""
        self._by_key: dict[str, dict[ResourceKey, _Offer]] = {}
        """Per proxy, per extension."""
        self._by_name: dict[str, dict[str, _Offer]] = {}
        """Per proxy, per ECDS resource name (what ACKs and NACKs name)."""
        self._members: dict[ResourceKey, dict[str, _Offer]] = {}
        """Per extension, per proxy."""
        self._counts: dict[ResourceKey, dict[DeliveryState, int]] = {}
        self._last: dict[
            str, tuple[Mapping[ResourceKey, tuple[str, str]], frozenset[ResourceKey]]
        ] = {}
        """Per proxy, the last offer as given (replicas are offered the same again and
        again: an offer equal to the last one costs one comparison)."""
        self._compared: tuple[object, object, tuple[tuple[ResourceKey, str, str], ...] | None]
        self._compared = (None, None, None)
        """The last two offers compared by :meth:`_changes`, and its answer."""
        self._queued: dict[str, list[_QueuedOffer]] = {}
        """Per proxy, offers not counted yet, oldest first."""

    # --- events ------------------------------------------------------------------------

    def offered(
        self,
        node_id: str,
        versions: Mapping[ResourceKey, tuple[str, str]],
        left_out: Iterable[ResourceKey] = (),
        messages: Mapping[str, Any] | None = None,
    ) -> None:
        """The proxy's snapshot now holds, per extension, ``(resource name, version)``
        (``messages`` by resource name); the extensions in ``left_out`` are kept out of
        it because the proxy rejected their version, which they keep in status.
        Extensions the proxy had before and are not in ``versions`` are forgotten.
        ``versions`` is kept as given (replicas share one): the caller must not change
        it afterwards, nor ``left_out`` and ``messages``.

        The offer is counted when the proxy's next ACK, NACK or clearance arrives, or
        when the book is read, whichever comes first. Until then the tracker holds
        the proxy's earlier offers (and may still hold resources the new offer no
        longer names). What isolation reads from it is current at all times: the
        proxy's rejections, and for a rejected resource the version it accepted
        before (an offer never changes either)."""
        offer = (versions, left_out, messages)
        queue = self._queued.get(node_id)
        if queue is None:
            self._queued[node_id] = [offer]
            return
        queue.append(offer)
        if len(queue) > _QUEUED_KEPT:  # a proxy that stopped answering
            self._settle(node_id)

    def _settle(self, node_id: str) -> None:
        """Count the proxy's queued offers, in the order they were made."""
        queue = self._queued.pop(node_id, None)
        if queue is not None:
            for versions, left_out, messages in queue:
                self._count_offer(node_id, versions, left_out, messages)

    def _settle_all(self) -> None:
        while self._queued:
            self._settle(next(iter(self._queued)))

    def _count_offer(
        self,
        node_id: str,
        versions: Mapping[ResourceKey, tuple[str, str]],
        left_out: Iterable[ResourceKey],
        messages: Mapping[str, Any] | None,
    ) -> None:
        excluded = frozenset(left_out) if left_out else _NOTHING
        messages = messages or {}
        last = self._last.get(node_id)
        self._last[node_id] = (versions, excluded)
        changes = None
        if last is not None and last[1] == excluded:
            changes = self._changes(last[0], versions)
        if changes is not None:
            # The usual change: the same extensions, some in a new version.
            by_name = self._by_name[node_id]
            for key, name, version in changes:
                if not excluded or key not in excluded:
                    self.tracker.offered(node_id, name, version, messages.get(name))
                changed = by_name[name]
                changed.version = version
                self._refresh(node_id, changed)
            return
        for key, (name, version) in versions.items():
            if key not in excluded:
                self.tracker.offered(node_id, name, version, messages.get(name))
        self.tracker.retain(node_id, {name for name, _ in versions.values()})
        by_key = self._by_key.setdefault(node_id, {})
        by_name = self._by_name.setdefault(node_id, {})
        for key in [k for k in by_key if k not in versions]:
            self._drop(node_id, by_key.pop(key), by_name)
        for key, (name, version) in versions.items():
            offer = by_key.get(key)
            if offer is not None and offer.name == name:
                offer.version = version
                self._refresh(node_id, offer)
                continue
            if offer is not None:
                self._drop(node_id, offer, by_name)
            offer = _Offer(key, name, version, self.tracker.phase(node_id, name, version))
            by_key[key] = by_name[name] = offer
            self._members.setdefault(key, {})[node_id] = offer
            self._count(key, offer.state, +1)

    def _changes(
        self,
        last: Mapping[ResourceKey, tuple[str, str]],
        versions: Mapping[ResourceKey, tuple[str, str]],
    ) -> tuple[tuple[ResourceKey, str, str], ...] | None:
        """The extensions whose version differs between two offers naming the same
        extensions under the same resource names, as ``(key, name, new version)``;
        ``None`` when the names differ. The last answer is remembered: replicas of a
        workload move from one shared offer to the next together."""
        before, after, changes = self._compared
        if before is last and after is versions:
            return changes
        changes = None
        if _same_names(last, versions):
            changes = tuple(
                (key, name, version)
                for key, (name, version) in versions.items()
                if last[key][1] != version
            )
        self._compared = (last, versions, changes)
        return changes

    def acked(self, node_id: str, names: Iterable[str], version: str) -> None:
        self._settle(node_id)
        for name in names:
            self.tracker.acked(node_id, name, version)
            self._refresh_name(node_id, name)

    def nacked(self, node_id: str, names: Iterable[str], version: str, detail: str) -> None:
        self._settle(node_id)
        for name in names:
            self.tracker.nacked(node_id, name, version, detail)
            self._refresh_name(node_id, name)

    def cleared(self, node_id: str, name: str) -> None:
        """The proxy accepted the current version of ``name`` after rejecting earlier
        ones (a remote module fetched at last): its rejections of it are forgotten."""
        self._settle(node_id)
        self.tracker.clear_rejection(node_id, name)
        self._refresh_name(node_id, name)

    def forget_proxy(self, node_id: str) -> None:
        """The proxy is gone: it counts nowhere any more, and its rejections are forgotten."""
        self._queued.pop(node_id, None)
        self.tracker.forget_proxy(node_id)
        self._last.pop(node_id, None)
        by_name = self._by_name.pop(node_id, {})
        for offer in self._by_key.pop(node_id, {}).values():
            self._drop(node_id, offer, by_name)

    # --- reading -----------------------------------------------------------------------

    def counts(self, key: ResourceKey) -> DeliveryCounts:
        self._settle_all()
        counter = self._counts.get(key)
        if counter is None:
            return DeliveryCounts()
        return DeliveryCounts(
            running=counter[DeliveryState.RUNNING],
            rejected=counter[DeliveryState.REJECTED],
            pending=counter[DeliveryState.PENDING],
        )

    def deliveries(
        self,
        key: ResourceKey,
        explain: Callable[[ProxyDelivery, str], ProxyDelivery] | None = None,
    ) -> tuple[ProxyDelivery, ...]:
        """How every proxy offered the extension is doing, by node id (built on demand);
        ``explain`` may add to each proxy's delivery, given its ECDS resource name."""
        self._settle_all()
        members = self._members.get(key, {})
        found = []
        for node_id in sorted(members):
            offer = members[node_id]
            delivery = self.tracker.state(node_id, offer.name, offer.version)
            found.append(delivery if explain is None else explain(delivery, offer.name))
        return tuple(found)

    def state(self, node_id: str, key: ResourceKey) -> DeliveryState | None:
        self._settle(node_id)
        offer = self._by_key.get(node_id, {}).get(key)
        return None if offer is None else offer.state

    # --- internals ---------------------------------------------------------------------

    def _refresh_name(self, node_id: str, name: str) -> None:
        by_name = self._by_name.get(node_id)
        offer = None if by_name is None else by_name.get(name)
        if offer is not None:
            self._refresh(node_id, offer)

    def _refresh(self, node_id: str, offer: _Offer) -> None:
        state = self.tracker.phase(node_id, offer.name, offer.version)
        if state is not offer.state:
            self._count(offer.key, offer.state, -1)
            self._count(offer.key, state, +1)
            offer.state = state

    def _drop(self, node_id: str, offer: _Offer, by_name: dict[str, _Offer]) -> None:
        if by_name.get(offer.name) is offer:
            del by_name[offer.name]
        members = self._members.get(offer.key)
        if members is not None and members.get(node_id) is offer:
            del members[node_id]
            if not members:
                del self._members[offer.key]
        self._count(offer.key, offer.state, -1)

    def _count(self, key: ResourceKey, state: DeliveryState, delta: int) -> None:
        counter = self._counts.get(key)
        if counter is None:
            counter = self._counts[key] = dict.fromkeys(DeliveryState, 0)
        counter[state] += delta
        if delta < 0 and not any(counter.values()):
            del self._counts[key]


_NOTHING: frozenset[ResourceKey] = frozenset()


def _same_names(
    last: Mapping[ResourceKey, tuple[str, str]], versions: Mapping[ResourceKey, tuple[str, str]]
) -> bool:
    """Whether two offers name the same extensions with the same resource names."""
    return last.keys() == versions.keys() and all(
        last[key][0] == name for key, (name, _) in versions.items()
    )
