"""Each row of the anchor table: where each phase lands relative to the mesh's filters."""

from __future__ import annotations

import pytest

from meshext.api.phase import PHASE_ORDER, Phase
from meshext.mesh.placement import ISTIO_AUTHN, ISTIO_STATS, JWT_AUTHN, RBAC, ROUTER, place_phases

ISTIO_CHAIN = [JWT_AUTHN, ISTIO_AUTHN, RBAC, ISTIO_STATS, ROUTER]
ONE_EACH = {phase: [phase.value] for phase in Phase}


def test_full_istio_chain_places_every_phase_per_the_anchor_table() -> None:
    assert place_phases(ISTIO_CHAIN, ONE_EACH) == [
        "PreAuthN",
        JWT_AUTHN,
        ISTIO_AUTHN,
        "PostAuthN",
        "PreAuthZ",
        RBAC,
        "PostAuthZ",
        "PreStats",
        ISTIO_STATS,
        "PostStats",
        ROUTER,
    ]


@pytest.mark.parametrize(
    ("anchor", "before", "after"),
    [
        (JWT_AUTHN, ["PreAuthN"], []),
        (ISTIO_AUTHN, ["PreAuthN"], ["PostAuthN"]),
        (RBAC, ["PreAuthN", "PostAuthN", "PreAuthZ"], ["PostAuthZ"]),
        (
            ISTIO_STATS,
            ["PreAuthN", "PostAuthN", "PreAuthZ", "PostAuthZ", "PreStats"],
            ["PostStats"],
        ),
    ],
)
def test_each_anchor_takes_its_phases_before_and_after_it(
    anchor: str, before: list[str], after: list[str]
) -> None:
    placed = place_phases([anchor, ROUTER], ONE_EACH)
    i = placed.index(anchor)
    assert placed[:i] == before
    assert placed[i + 1 : i + 1 + len(after)] == after
    assert placed[-1] == ROUTER


def test_router_takes_every_phase_left_in_phase_order() -> None:
    assert place_phases([ROUTER], ONE_EACH) == [*(p.value for p in PHASE_ORDER), ROUTER]


def test_no_mesh_filters_at_all_still_gives_phase_order() -> None:
    assert place_phases([], ONE_EACH) == [p.value for p in PHASE_ORDER]


def test_filters_that_are_not_anchors_keep_their_place() -> None:
    placed = place_phases(["envoy.filters.http.cors", RBAC, ROUTER], {Phase.POST_AUTHZ: ["x"]})
    assert placed == ["envoy.filters.http.cors", RBAC, "x", ROUTER]


def test_extensions_within_a_phase_keep_the_given_order() -> None:
    placed = place_phases([ROUTER], {Phase.PRE_STATS: ["high", "low"]})
    assert placed == ["high", "low", ROUTER]
