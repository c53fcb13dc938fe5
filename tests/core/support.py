"""Builders for core tests: resources and extensions with little ceremony."""

from __future__ import annotations

from collections.abc import Mapping

from meshext.api.controlplane import ServiceMeshControlPlane, ServiceMeshMemberRoll
from meshext.api.meta import ResourceKey
from meshext.api.phase import Phase
from meshext.mesh.extension import Extension
from meshext.mesh.topology import Topology, build_topology

CONTROL_PLANE_NS = "istio-system"


def control_plane(
    namespace: str = CONTROL_PLANE_NS, *, enabled: bool = True
) -> ServiceMeshControlPlane:
    return ServiceMeshControlPlane.model_validate(
        {
            "metadata": {"name": "basic", "namespace": namespace},
            "spec": {"techPreview": {"wasmExtensions": {"enabled": enabled}}},
        }
    )


def member_roll(members: list[str], namespace: str = CONTROL_PLANE_NS) -> ServiceMeshMemberRoll:
    return ServiceMeshMemberRoll.model_validate(
        {"metadata": {"name": "default", "namespace": namespace}, "spec": {"members": members}}
    )


def topology(members: list[str], *, enabled: bool = True) -> Topology:
    return build_topology([control_plane(enabled=enabled)], [member_roll(members)])


def extension(
    namespace: str,
    name: str,
    *,
    phase: Phase | None = Phase.POST_AUTHZ,
    priority: int | None = 0,
    selector: Mapping[str, str] | None = None,
    image: str = "quay.io/ext/a:1",
    kind: str = "ServiceMeshExtension",
) -> Extension:
    return Extension(
        key=ResourceKey(kind, namespace, name),
        generation=1,
        image=image,
        selector=dict(selector or {}),
        config="",
        phase=phase,
        priority=priority,
    )
