"""Which traffic of a proxy an extension sees: direction, port, and filter layer.

A proxy has several listeners (:class:`Side`): a sidecar one inbound listener per
port it serves and one outbound listener per upstream its application calls; a
gateway one listener per port. The planner decides *whether* an extension runs on a
workload; :func:`extensions_on` then picks, per listener, the extensions whose
:class:`TrafficMatch` selects that listener's traffic, keeping the plan's order.

Directions follow Istio's ``WorkloadMode``: ``CLIENT`` is outbound traffic and, on a
gateway, the gateway's own listeners (Istio treats a gateway as a client of the
services behind it); ``SERVER`` is inbound traffic of a sidecar only;
``CLIENT_AND_SERVER`` (and an unset mode) is all of it. A ServiceMeshExtension keeps
Maistra's meaning: inbound listeners of sidecars and gateway listeners, never outbound.

Ports: for inbound traffic the port the proxy serves; for outbound traffic the port
of the destination (the upstream the application calls); for a gateway the port it
listens on. No ports means every port.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"
    GATEWAY = "gateway"


class FilterLayer(StrEnum):
    """Where an extension's filter sits: in the HTTP filter chain, or as a network filter."""

    HTTP = "HTTP"
    NETWORK = "NETWORK"


CLIENT: frozenset[Direction] = frozenset({Direction.OUTBOUND, Direction.GATEWAY})
SERVER: frozenset[Direction] = frozenset({Direction.INBOUND})
CLIENT_AND_SERVER: frozenset[Direction] = CLIENT | SERVER
MAISTRA: frozenset[Direction] = frozenset({Direction.INBOUND, Direction.GATEWAY})
"""Where a ServiceMeshExtension runs."""


@dataclass(frozen=True)
class Side:
    """One listener of a proxy: its direction and the port traffic is matched on.

    ``port`` ``None`` stands for any port of that direction (to explain a workload
    without naming a port): port restrictions are then not applied.
    """

    direction: Direction
    port: int | None

    def __str__(self) -> str:
        port = "any port" if self.port is None else f"port {self.port}"
        return f"{self.direction.value} {port}"


@dataclass(frozen=True)
class TrafficSelector:
    """Traffic in one of ``directions`` and, when ``ports`` is not empty, to one of them."""

    directions: frozenset[Direction] = CLIENT_AND_SERVER
    ports: frozenset[int] = frozenset()

    def selects(self, side: Side) -> bool:
        if side.direction not in self.directions:
            return False
        return not self.ports or side.port is None or side.port in self.ports


@dataclass(frozen=True)
class TrafficMatch:
    """An extension's traffic selectors; traffic matching any of them runs it."""

    selectors: tuple[TrafficSelector, ...] = (TrafficSelector(),)

    def selects(self, side: Side) -> bool:
        return any(s.selects(side) for s in self.selectors)

    def describe(self) -> str:
        """A short human text, e.g. ``outbound,gateway ports 80,443``."""
        parts = []
        for selector in self.selectors:
            text = ",".join(sorted(d.value for d in selector.directions))
            if selector.ports:
                text += " ports " + ",".join(str(p) for p in sorted(selector.ports))
            parts.append(text)
        return " or ".join(parts)


ALL_TRAFFIC = TrafficMatch()
MAISTRA_TRAFFIC = TrafficMatch((TrafficSelector(MAISTRA),))


def sides_of(direction: Direction, ports: Iterable[int]) -> tuple[Side, ...]:
    return tuple(Side(direction, port) for port in ports)
