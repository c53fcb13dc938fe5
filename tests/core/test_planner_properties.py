"""Properties of the planner over generated meshes, extensions and workloads.

- The tenant boundary: a workload never receives an extension from another namespace,
  except from the control-plane namespace of its own mesh.
- Determinism: the plan is a function of the inputs' content, not of their order.
- Order: phase order, then priority descending, always hold; every extension is
  either applied or skipped, exactly once.
- Planning without explanations (what the server does on each change) applies
  exactly what the explained plan applies.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from meshext.api.meta import ResourceKey
from meshext.api.phase import Phase
from meshext.mesh.extension import Extension
from meshext.mesh.planner import plan_workload
from meshext.mesh.resolution import ImageFormat, Resolution, ResolvedModule
from meshext.mesh.topology import Topology, build_topology
from meshext.mesh.workload import Workload
from tests.core.support import control_plane, member_roll

NAMESPACES = ["cp-a", "cp-b", "team-1", "team-2", "team-3", "outside"]
LABEL_KEYS = ["app", "version", "tier"]
LABEL_VALUES = ["x", "y"]

labels = st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=3)

MODULE = ResolvedModule(
    sha256="a" * 64,
    path="/m.wasm",
    size=1,
    image_digest=None,
    image_format=ImageFormat.LOCAL_FILE,
)


@st.composite
def topologies(
    draw: st.DrawFn, members: tuple[str, ...] = ("team-1", "team-2", "team-3")
) -> Topology:
    """Up to two meshes whose rolls list namespaces of ``members``; a namespace listed by
    both rolls, or a control-plane namespace listed by the other, belongs to no mesh."""
    planes = draw(st.lists(st.sampled_from(["cp-a", "cp-b"]), unique=True, max_size=2))
    rolls = []
    for plane in planes:
        chosen = draw(st.lists(st.sampled_from(members), unique=True, max_size=4))
        rolls.append(member_roll(chosen, plane))
    enabled = draw(st.lists(st.booleans(), min_size=len(planes), max_size=len(planes)))
    return build_topology(
        [control_plane(p, enabled=e) for p, e in zip(planes, enabled, strict=True)], rolls
    )


@st.composite
def extensions(draw: st.DrawFn) -> list[Extension]:
    keys = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["ServiceMeshExtension", "WasmPlugin"]),
                st.sampled_from(NAMESPACES),
                st.sampled_from(["a", "b", "c", "d"]),
            ),
            unique=True,
            max_size=12,
        )
    )
    return [
        Extension(
            key=ResourceKey(kind, namespace, name),
            generation=1,
            image=draw(st.sampled_from(["r.io/a:1", "r.io/b:1"])),
            selector=draw(labels),
            config="",
            phase=draw(st.sampled_from(list(Phase))),
            priority=draw(st.integers(-3, 3)),
        )
        for kind, namespace, name in keys
    ]


workloads = st.builds(Workload, namespace=st.sampled_from(NAMESPACES), labels=labels)


def ready_for(exts: list[Extension]) -> dict[ResourceKey, Resolution]:
    return {e.key: Resolution.ready(MODULE) for e in exts}


@settings(max_examples=400)
@given(topologies(), extensions(), workloads)
def test_a_workload_never_receives_an_extension_from_another_tenant(
    topo: Topology, exts: list[Extension], workload: Workload
) -> None:
    plan = plan_workload(topo, exts, ready_for(exts), workload)
    mesh = topo.mesh_of(workload.namespace)
    for planned in plan.applied:
        assert mesh is not None
        assert mesh.extensions_enabled
        assert planned.key.namespace in (workload.namespace, mesh.namespace)
        assert topo.mesh_of(planned.key.namespace) == mesh
        assert workload.matches(planned.extension.selector)


@settings(max_examples=300)
@given(topologies(), extensions(), workloads, st.randoms(use_true_random=False))
def test_shuffling_the_input_changes_nothing(
    topo: Topology, exts: list[Extension], workload: Workload, rnd: random.Random
) -> None:
    shuffled = list(exts)
    rnd.shuffle(shuffled)
    resolutions = ready_for(exts)
    assert plan_workload(topo, exts, resolutions, workload) == plan_workload(
        topo, shuffled, resolutions, workload
    )


@settings(max_examples=300)
@given(topologies(), extensions(), workloads)
def test_phase_order_then_priority_order_always_hold(
    topo: Topology, exts: list[Extension], workload: Workload
) -> None:
    plan = plan_workload(topo, exts, ready_for(exts), workload)
    ranks = [(p.phase.rank, -p.priority) for p in plan.applied]
    assert ranks == sorted(ranks)


@settings(max_examples=300)
@given(topologies(), extensions(), workloads)
def test_every_extension_is_applied_or_skipped_exactly_once(
    topo: Topology, exts: list[Extension], workload: Workload
) -> None:
    plan = plan_workload(topo, exts, ready_for(exts), workload)
    seen = [p.key for p in plan.applied] + [s.key for s in plan.skipped]
    assert sorted(seen) == sorted(e.key for e in exts)


@settings(max_examples=200)
@given(topologies(), extensions(), workloads)
def test_the_order_is_total_no_two_applied_extensions_tie(
    topo: Topology, exts: list[Extension], workload: Workload
) -> None:
    plan = plan_workload(topo, exts, ready_for(exts), workload)
    sort_keys = [p.sort_key() for p in plan.applied]
    assert len(set(sort_keys)) == len(sort_keys)


@settings(max_examples=500)
@given(
    st.one_of(topologies(), topologies(members=tuple(NAMESPACES))),
    extensions(),
    workloads,
    st.data(),
    st.booleans(),
)
def test_a_plan_without_explanations_applies_exactly_what_the_explained_plan_applies(
    topo: Topology,
    exts: list[Extension],
    workload: Workload,
    data: st.DataObject,
    offline: bool,
) -> None:
    ready = data.draw(st.sets(st.integers(0, len(exts) - 1)) if exts else st.just(set()))
    resolutions = ready_for([exts[i] for i in sorted(ready)])
    explained = plan_workload(topo, exts, resolutions, workload, offline=offline)
    quick = plan_workload(topo, exts, resolutions, workload, offline=offline, explain=False)
    assert quick.applied == explained.applied
    assert quick.skipped == ()
    assert quick.workload == explained.workload
