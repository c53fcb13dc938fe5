"""From loaded resources to the mesh model the planner reads: topology and extensions."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meshext.api.controlplane import ServiceMeshControlPlane, ServiceMeshMemberRoll
from meshext.api.decode import Resource, ResourceError
from meshext.api.extension import ServiceMeshExtension
from meshext.api.wasmplugin import WasmPlugin
from meshext.mesh.extension import Extension, from_service_mesh_extension, from_wasm_plugin
from meshext.mesh.topology import Topology, build_topology


@dataclass(frozen=True)
class MeshModel:
    topology: Topology
    extensions: tuple[Extension, ...]

    @property
    def errors(self) -> tuple[ResourceError, ...]:
        return self.topology.errors


def build_model(resources: Iterable[Resource]) -> MeshModel:
    planes: list[ServiceMeshControlPlane] = []
    rolls: list[ServiceMeshMemberRoll] = []
    extensions: list[Extension] = []
    for resource in resources:
        if isinstance(resource, ServiceMeshControlPlane):
            planes.append(resource)
        elif isinstance(resource, ServiceMeshMemberRoll):
            rolls.append(resource)
        elif isinstance(resource, ServiceMeshExtension):
            extensions.append(from_service_mesh_extension(resource))
        elif isinstance(resource, WasmPlugin):
            extensions.append(from_wasm_plugin(resource))
    extensions.sort(key=lambda e: e.key)
    return MeshModel(build_topology(planes, rolls), tuple(extensions))
