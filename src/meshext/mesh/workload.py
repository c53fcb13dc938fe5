"""Workloads: what a proxy tells meshext about the application it fronts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class ProxyKind(StrEnum):
    SIDECAR = "sidecar"
    GATEWAY = "gateway"


@dataclass(frozen=True)
class Workload:
    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict)
    kind: ProxyKind = ProxyKind.SIDECAR
    name: str = ""

    def matches(self, selector: Mapping[str, str]) -> bool:
        """Subset match, as Istio's Gateway selector: every pair must be present."""
        return all(self.labels.get(k) == v for k, v in selector.items())
