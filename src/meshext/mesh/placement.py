"""Where each phase sits among the mesh's own HTTP filters (the anchors).

Walking the chain, each anchor first takes every phase up to and including its
``through`` phase that is not placed yet, then itself, then its ``after`` phase.
Phase order therefore always holds, whatever anchors a chain has or lacks; with no
anchors at all the phases come out in order before the router.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from meshext.api.phase import PHASE_ORDER, Phase

JWT_AUTHN = "envoy.filters.http.jwt_authn"
ISTIO_AUTHN = "istio_authn"
RBAC = "envoy.filters.http.rbac"
ISTIO_STATS = "istio.stats"
ROUTER = "envoy.filters.http.router"


@dataclass(frozen=True)
class Anchor:
    through: Phase
    after: Phase | None = None


ANCHORS: Mapping[str, Anchor] = {
    JWT_AUTHN: Anchor(through=Phase.PRE_AUTHN),
    ISTIO_AUTHN: Anchor(through=Phase.PRE_AUTHN, after=Phase.POST_AUTHN),
    RBAC: Anchor(through=Phase.PRE_AUTHZ, after=Phase.POST_AUTHZ),
    ISTIO_STATS: Anchor(through=Phase.PRE_STATS, after=Phase.POST_STATS),
    ROUTER: Anchor(through=Phase.POST_STATS),
}

T = TypeVar("T")


def place_phases(chain: Sequence[str], by_phase: Mapping[Phase, Sequence[T]]) -> list[str | T]:
    """The chain with each phase's extensions (already in order) inserted at its place.

    Filters that are not anchors keep their position. Phases left over when the
    chain ends (a chain without a router) are appended in phase order.
    """
    placed: set[Phase] = set()
    out: list[str | T] = []

    def emit(phase: Phase) -> None:
        if phase not in placed:
            placed.add(phase)
            out.extend(by_phase.get(phase, ()))

    for name in chain:
        anchor = ANCHORS.get(name)
        if anchor is None:
            out.append(name)
            continue
        for phase in PHASE_ORDER[: anchor.through.rank + 1]:
            emit(phase)
        out.append(name)
        if anchor.after is not None:
            for phase in PHASE_ORDER[: anchor.after.rank + 1]:
                emit(phase)
    for phase in PHASE_ORDER:
        emit(phase)
    return out
