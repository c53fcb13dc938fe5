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


@dataclass
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
    _entries: dict[tuple[str, str], _Entry] = field(default_factory=dict)

    def offered(self, node_id: str, name: str, version: str, message: Any) -> None:
        """The proxy's snapshot now holds ``version`` (``message``) of resource ``name``."""
        offers = self._entries.setdefault((node_id, name), _Entry()).offers
        offers.pop(version, None)
        offers[version] = message
        while len(offers) > _OFFERS_KEPT:
            del offers[next(iter(offers))]

    def acked(self, node_id: str, name: str, version: str) -> None:
        entry = self._entries.setdefault((node_id, name), _Entry())
        entry.acked_version = version
        entry.acked_message = entry.offers.get(version, entry.acked_message)
        if entry.rejected_version == version:
            entry.rejected_version = None
            entry.rejection = ""

    def nacked(self, node_id: str, name: str, version: str, detail: str) -> None:
        entry = self._entries.setdefault((node_id, name), _Entry())
        entry.rejected_version = version
        entry.rejection = detail

    def is_rejected(self, node_id: str, name: str, version: str) -> bool:
        entry = self._entries.get((node_id, name))
        return entry is not None and entry.rejected_version == version

    def last_accepted(self, node_id: str, name: str) -> Any:
        """The message of the last version the proxy accepted, ``None`` if none."""
        entry = self._entries.get((node_id, name))
        return None if entry is None else entry.acked_message

    def forget_proxy(self, node_id: str) -> None:
        for key in [k for k in self._entries if k[0] == node_id]:
            del self._entries[key]

    def retain(self, node_id: str, names: set[str]) -> None:
        """Forget resources the proxy no longer has (the extension was removed).

        A pending rejection is kept, so a rejected version is not offered again while
        the extension is left out because of it.
        """
        for key in [k for k in self._entries if k[0] == node_id and k[1] not in names]:
            if self._entries[key].rejected_version is None:
                del self._entries[key]

    def state(self, node_id: str, name: str, version: str) -> ProxyDelivery:
        """How ``version`` of ``name`` is doing on the proxy."""
        entry = self._entries.get((node_id, name), _Entry())
        if entry.rejected_version == version:
            running = entry.acked_version
            suffix = f"; still running version {running}" if running else ""
            return ProxyDelivery(
                node_id, DeliveryState.REJECTED, version, running, entry.rejection + suffix
            )
        if entry.acked_version == version:
            return ProxyDelivery(node_id, DeliveryState.RUNNING, version, version)
        return ProxyDelivery(node_id, DeliveryState.PENDING, version, entry.acked_version)
