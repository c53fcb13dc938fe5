"""WasmPlugin targetRefs: a plugin attached to a Gateway runs on that Gateway's proxies only."""

from __future__ import annotations

import dataclasses

from meshext.mesh.extension import GATEWAY_CLASS_LABEL, GATEWAY_NAME_LABEL, Extension, Target
from meshext.mesh.planner import SkipReason, WorkloadPlan, plan_workload
from meshext.mesh.workload import ProxyKind, Workload
from tests.core.support import CONTROL_PLANE_NS, extension, topology

NS = "bookinfo"


def targeted(*targets: Target, namespace: str = NS) -> Extension:
    base = extension(namespace, "plugin", kind="WasmPlugin")
    return dataclasses.replace(base, targets=targets)


def plan_for(ext: Extension, workload: Workload) -> WorkloadPlan:
    return plan_workload(topology([NS]), [ext], {}, workload, offline=True)


def gateway(name: str, namespace: str = NS, **labels: str) -> Workload:
    return Workload(namespace, {GATEWAY_NAME_LABEL: name, **labels}, ProxyKind.GATEWAY, "gw")


def test_a_gateway_target_selects_the_proxies_of_that_gateway() -> None:
    ext = targeted(Target("Gateway", "edge"))
    assert [p.key for p in plan_for(ext, gateway("edge")).applied] == [ext.key]


def test_a_gateway_target_skips_other_gateways_and_sidecars_with_the_reason() -> None:
    ext = targeted(Target("Gateway", "edge"))
    (other,) = plan_for(ext, gateway("internal")).skipped
    assert other.reason is SkipReason.TARGET_MISMATCH
    assert "is not 'edge'" in other.detail
    sidecar = Workload(NS, {GATEWAY_NAME_LABEL: "edge"}, ProxyKind.SIDECAR, "web")
    (skipped,) = plan_for(ext, sidecar).skipped
    assert "this is a sidecar" in skipped.detail


def test_a_service_target_applies_nowhere_since_istio_runs_it_on_waypoints_only() -> None:
    ext = targeted(Target("Service", "web"))
    (skipped,) = plan_for(ext, Workload(NS, {"app": "web"})).skipped
    assert skipped.reason is SkipReason.TARGET_MISMATCH
    assert "waypoint" in skipped.detail


def test_any_matching_target_is_enough() -> None:
    ext = targeted(Target("Service", "web"), Target("Gateway", "edge"))
    assert plan_for(ext, gateway("edge")).applied


def test_a_gateway_class_target_applies_only_from_the_control_plane_namespace() -> None:
    labels = {GATEWAY_CLASS_LABEL: "istio"}
    from_root = targeted(Target("GatewayClass", "istio"), namespace=CONTROL_PLANE_NS)
    assert plan_for(from_root, gateway("edge", **labels)).applied
    from_member = targeted(Target("GatewayClass", "istio"))
    (skipped,) = plan_for(from_member, gateway("edge", **labels)).skipped
    assert "control-plane namespace" in skipped.detail
