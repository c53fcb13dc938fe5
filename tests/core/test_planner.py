"""Which extensions apply to a workload, and the reason for each one that does not."""

from __future__ import annotations

from meshext.api.controlplane import ServiceMeshControlPlane
from meshext.api.manifest import ExtensionManifest
from meshext.api.meta import ResourceKey
from meshext.api.phase import Phase
from meshext.mesh.planner import SkipReason, WorkloadPlan, plan_workload
from meshext.mesh.resolution import ImageFormat, Resolution, ResolvedModule
from meshext.mesh.topology import Topology, build_topology
from meshext.mesh.workload import ProxyKind, Workload
from tests.core.support import CONTROL_PLANE_NS, control_plane, extension, member_roll, topology

HTTPBIN = Workload("bookinfo", {"app": "httpbin", "version": "v1"})


def module(phase: Phase | None = None, priority: int | None = None) -> ResolvedModule:
    manifest = ExtensionManifest.model_validate(
        {"schemaVersion": 1, "name": "m", "module": "m.wasm", "phase": phase, "priority": priority}
    )
    return ResolvedModule(
        sha256="0" * 64,
        path="/cache/m.wasm",
        size=10,
        image_digest="sha256:" + "1" * 64,
        image_format=ImageFormat.MAISTRA,
        manifest=manifest,
    )


def ready(*keys: ResourceKey, mod: ResolvedModule | None = None) -> dict[ResourceKey, Resolution]:
    return {k: Resolution.ready(mod or module()) for k in keys}


def reasons(plan: WorkloadPlan) -> dict[str, SkipReason]:
    return {s.key.name: s.reason for s in plan.skipped}


def test_control_plane_extension_applies_to_every_matching_workload_of_the_mesh() -> None:
    ext = extension(CONTROL_PLANE_NS, "global", selector={"app": "httpbin"})
    plan = plan_workload(topology(["bookinfo"]), [ext], ready(ext.key), HTTPBIN)
    assert [p.key for p in plan.applied] == [ext.key]


def test_member_namespace_extension_applies_only_in_its_own_namespace() -> None:
    local = extension("bookinfo", "local")
    other = extension("payments", "theirs")
    topo = topology(["bookinfo", "payments"])
    plan = plan_workload(topo, [local, other], ready(local.key, other.key), HTTPBIN)
    assert [p.key.name for p in plan.applied] == ["local"]
    assert reasons(plan) == {"theirs": SkipReason.OTHER_NAMESPACE}


def test_extension_in_a_namespace_outside_the_mesh_is_ignored() -> None:
    ext = extension("sandbox", "x")
    plan = plan_workload(topology(["bookinfo"]), [ext], ready(ext.key), Workload("sandbox"))
    assert reasons(plan) == {"x": SkipReason.WORKLOAD_NOT_IN_MESH}
    plan = plan_workload(topology(["bookinfo"]), [ext], ready(ext.key), HTTPBIN)
    assert reasons(plan) == {"x": SkipReason.EXTENSION_NOT_IN_MESH}


def test_disabled_extensions_on_the_control_plane_apply_nothing() -> None:
    ext = extension(CONTROL_PLANE_NS, "global")
    plan = plan_workload(topology(["bookinfo"], enabled=False), [ext], ready(ext.key), HTTPBIN)
    assert reasons(plan) == {"global": SkipReason.EXTENSIONS_DISABLED}
    assert "wasmExtensions.enabled" in plan.skipped[0].detail


def test_absent_tech_preview_means_disabled() -> None:
    plane = ServiceMeshControlPlane.model_validate(
        {"metadata": {"name": "basic", "namespace": CONTROL_PLANE_NS}}
    )
    assert not plane.extensions_enabled


def test_selector_is_a_subset_match_and_absent_selector_matches_all() -> None:
    subset = extension("bookinfo", "subset", selector={"app": "httpbin"})
    everything = extension("bookinfo", "all")
    mismatch = extension("bookinfo", "mismatch", selector={"app": "httpbin", "version": "v2"})
    keys = (subset.key, everything.key, mismatch.key)
    plan = plan_workload(
        topology(["bookinfo"]), [subset, everything, mismatch], ready(*keys), HTTPBIN
    )
    assert sorted(p.key.name for p in plan.applied) == ["all", "subset"]
    assert reasons(plan) == {"mismatch": SkipReason.SELECTOR_MISMATCH}


def test_gateways_receive_extensions_like_sidecars() -> None:
    ext = extension(CONTROL_PLANE_NS, "gw", selector={"istio": "ingressgateway"})
    gateway = Workload(CONTROL_PLANE_NS, {"istio": "ingressgateway"}, ProxyKind.GATEWAY)
    plan = plan_workload(topology(["bookinfo"]), [ext], ready(ext.key), gateway)
    assert [p.key.name for p in plan.applied] == ["gw"]


def test_only_extensions_with_a_ready_module_are_applied() -> None:
    pending = extension("bookinfo", "pending")
    failed = extension("bookinfo", "failed")
    resolutions = {failed.key: Resolution.failed("unauthorized: check imagePullSecrets 'x'")}
    plan = plan_workload(topology(["bookinfo"]), [pending, failed], resolutions, HTTPBIN)
    assert reasons(plan) == {"pending": SkipReason.NOT_READY, "failed": SkipReason.NOT_READY}
    assert any("imagePullSecrets" in s.detail for s in plan.skipped)


def test_phase_and_priority_default_to_the_manifest_and_the_spec_overrides_them() -> None:
    from_manifest = extension("bookinfo", "defaults", phase=None, priority=None)
    overridden = extension("bookinfo", "override", phase=Phase.PRE_AUTHN, priority=7)
    mod = module(Phase.POST_STATS, 42)
    plan = plan_workload(
        topology(["bookinfo"]),
        [from_manifest, overridden],
        ready(from_manifest.key, overridden.key, mod=mod),
        HTTPBIN,
    )
    resolved = {p.key.name: (p.phase, p.priority) for p in plan.applied}
    assert resolved == {"defaults": (Phase.POST_STATS, 42), "override": (Phase.PRE_AUTHN, 7)}


def test_no_phase_anywhere_is_reported_not_guessed() -> None:
    ext = extension("bookinfo", "nophase", phase=None, priority=None)
    plan = plan_workload(topology(["bookinfo"]), [ext], ready(ext.key, mod=module()), HTTPBIN)
    assert reasons(plan) == {"nophase": SkipReason.NO_PHASE}


def test_offline_plan_places_extensions_whose_spec_gives_phase_and_priority() -> None:
    explicit = extension("bookinfo", "explicit", phase=Phase.PRE_STATS, priority=1)
    implicit = extension("bookinfo", "implicit", phase=None, priority=None)
    plan = plan_workload(topology(["bookinfo"]), [explicit, implicit], {}, HTTPBIN, offline=True)
    assert [p.key.name for p in plan.applied] == ["explicit"]
    assert plan.applied[0].module is None
    assert reasons(plan) == {"implicit": SkipReason.NOT_READY}
    assert "manifest.yaml" in plan.skipped[0].detail


def test_order_is_phase_then_priority_descending_then_name_then_image() -> None:
    exts = [
        extension("bookinfo", "b", phase=Phase.POST_STATS, priority=100),
        extension("bookinfo", "a", phase=Phase.PRE_AUTHN, priority=1),
        extension("bookinfo", "c", phase=Phase.PRE_AUTHN, priority=5),
        extension("bookinfo", "d", phase=Phase.PRE_AUTHN, priority=5, image="quay.io/z/z:1"),
        extension(CONTROL_PLANE_NS, "d", phase=Phase.PRE_AUTHN, priority=5, image="quay.io/a/a:1"),
    ]
    plan = plan_workload(topology(["bookinfo"]), exts, ready(*(e.key for e in exts)), HTTPBIN)
    assert [(p.key.namespace, p.key.name) for p in plan.applied] == [
        ("bookinfo", "c"),
        (CONTROL_PLANE_NS, "d"),
        ("bookinfo", "d"),
        ("bookinfo", "a"),
        ("bookinfo", "b"),
    ]


def test_namespace_claimed_by_two_meshes_belongs_to_neither() -> None:
    topo: Topology = build_topology(
        [control_plane("mesh-a"), control_plane("mesh-b")],
        [member_roll(["shared"], "mesh-a"), member_roll(["shared"], "mesh-b")],
    )
    assert topo.mesh_of("shared") is None
    assert any("claimed by the meshes of mesh-a, mesh-b" in e.message for e in topo.errors)


def test_extension_from_another_meshs_control_plane_never_applies() -> None:
    topo = build_topology(
        [control_plane("mesh-a"), control_plane("mesh-b")],
        [member_roll(["team-a"], "mesh-a"), member_roll(["team-b"], "mesh-b")],
    )
    ext = extension("mesh-b", "b-global")
    plan = plan_workload(topo, [ext], ready(ext.key), Workload("team-a"))
    assert reasons(plan) == {"b-global": SkipReason.OTHER_MESH}
