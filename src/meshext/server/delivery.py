"""Which proxy runs which version of each extension, learned from ACKs and NACKs.

Every extension reaches a proxy as its own ECDS resource, one per xDS response, so a
proxy's verdict names exactly one extension. The tracker keeps, per proxy and
resource, the version sent, the last version the proxy accepted (with the message,
so it can be sent again) and the last rejection. It does no I/O.

Isolation follows from it: a rejected version is never offered to that proxy again.
If the proxy accepted an earlier version, that version stays (Envoy keeps serving it,
and meshext keeps sending it); if it never accepted one, the extension is left out
of that proxy's chain, like an extension whose image is not ready, so the rest of the
chain and every other proxy go on unaffected. A new version (the user changed the
extension or its image) is offered again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class DeliveryState(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    REJECTED = "Rejected"


_OFFERS_KEPT = 4


@dataclass(slots=True)
class _Entry:
    offers: dict[str, Any] = field(default_factory=dict)
    acked_version: str | None = None
    acked_message: Any = None
    rejected_version: str | None = None
    rejection: str = ""


@dataclass(frozen=True)
class ProxyDelivery:
    """One extension on one proxy, for status and admin views."""

    proxy: str
    state: DeliveryState
    version: str | None
    running_version: str | None
    message: str = ""


@dataclass
class DeliveryTracker:
    _entries: dict[str, dict[str, _Entry]] = field(default_factory=dict)
    """Per proxy, per resource name."""
    _rejecting: dict[str, set[str]] = field(default_factory=dict)
    """Per proxy, the resources with a standing rejection (kept to answer ``rejects`` fast)."""

    def _entry(self, node_id: str, name: str) -> _Entry:
        # (get before creating: an ACK finds its entry, and builds nothing)
        entries = self._entries.get(node_id)
        if entries is None:
            entries = self._entries[node_id] = {}
        entry = entries.get(name)
        if entry is None:
            entry = entries[name] = _Entry()
        return entry

    def _find(self, node_id: str, name: str) -> _Entry | None:
        entries = self._entries.get(node_id)
        return None if entries is None else entries.get(name)

    def rejects(self, node_id: str) -> bool:
        """Whether the proxy has rejected a version it has not accepted since."""
        return bool(self._rejecting.get(node_id))

    def offered(self, node_id: str, name: str, version: str, message: Any) -> None:
        """The proxy's snapshot now holds ``version`` (``message``) of resource ``name``."""
        offers = self._entry(node_id, name).offers
        offers.pop(version, None)
        offers[version] = message
        while len(offers) > _OFFERS_KEPT:
            del offers[next(iter(offers))]

    def acked(self, node_id: str, name: str, version: str) -> None:
        entry = self._entry(node_id, name)
        entry.acked_version = version
        entry.acked_message = entry.offers.get(version, entry.acked_message)
        if entry.rejected_version == version:
            self._drop_rejection(node_id, name, entry)

    def nacked(self, node_id: str, name: str, version: str, detail: str) -> None:
        entry = self._entry(node_id, name)
        entry.rejected_version = version
        entry.rejection = detail
        self._rejecting.setdefault(node_id, set()).add(name)

    def clear_rejection(self, node_id: str, name: str) -> None:
        """The proxy runs the current version of ``name``: an earlier rejection (of
        another fetch attempt of the same module) no longer stands."""
        entry = self._find(node_id, name)
        if entry is not None and entry.rejected_version is not None:
            self._drop_rejection(node_id, name, entry)

    def _drop_rejection(self, node_id: str, name: str, entry: _Entry) -> None:
        entry.rejected_version = None
        entry.rejection = ""
        names = self._rejecting.get(node_id, set())
        names.discard(name)
        if not names:
            self._rejecting.pop(node_id, None)

    def is_rejected(self, node_id: str, name: str, version: str) -> bool:
        entry = self._find(node_id, name)
        return entry is not None and entry.rejected_version == version

    def last_accepted(self, node_id: str, name: str) -> Any:
        """The message of the last version the proxy accepted, ``None`` if none."""
        entry = self._find(node_id, name)
        return None if entry is None else entry.acked_message

    def forget_proxy(self, node_id: str) -> None:
        self._entries.pop(node_id, None)
        self._rejecting.pop(node_id, None)

    def retain(self, node_id: str, names: set[str]) -> None:
        """Forget resources the proxy no longer has (the extension was removed).

        A pending rejection is kept, so a rejected version is not offered again while
        the extension is left out because of it.
        """
        entries = self._entries.get(node_id, {})
        for name in [
            n for n, e in entries.items() if n not in names and e.rejected_version is None
        ]:
            del entries[name]

    def phase(self, node_id: str, name: str, version: str) -> DeliveryState:
        """The state alone of :meth:`state` (cheaper: nothing is built)."""
        entry = self._find(node_id, name)
        if entry is None:
            return DeliveryState.PENDING
        if entry.rejected_version == version:
            return DeliveryState.REJECTED
        if entry.acked_version == version:
            return DeliveryState.RUNNING
        return DeliveryState.PENDING

    def state(self, node_id: str, name: str, version: str) -> ProxyDelivery:
        """How ``version`` of ``name`` is doing on the proxy."""
        entry = self._find(node_id, name) or _Entry()
        if entry.rejected_version == version:
            running = entry.acked_version
            suffix = f"; still running version {running}" if running else ""
            return ProxyDelivery(
                node_id, DeliveryState.REJECTED, version, running, entry.rejection + suffix
            )
        if entry.acked_version == version:
            return ProxyDelivery(node_id, DeliveryState.RUNNING, version, version)
        message = f"an earlier offer was rejected: {entry.rejection}" if entry.rejection else ""
        return ProxyDelivery(node_id, DeliveryState.PENDING, version, entry.acked_version, message)
