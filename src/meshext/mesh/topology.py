"""Which namespaces belong to which mesh.

A mesh is a ServiceMeshControlPlane (its namespace is the control-plane namespace)
plus the members listed by the ServiceMeshMemberRoll named ``default`` in that
namespace. A namespace belongs to at most one mesh; a namespace claimed twice is a
configuration error and belongs to none until it is fixed, so an extension never
leaks into a mesh by accident.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshext.api.controlplane import ServiceMeshControlPlane, ServiceMeshMemberRoll
from meshext.api.decode import ResourceError


@dataclass(frozen=True)
class Mesh:
    control_plane: ServiceMeshControlPlane
    members: frozenset[str]

    @property
    def namespace(self) -> str:
        return self.control_plane.metadata.namespace

    @property
    def extensions_enabled(self) -> bool:
        return self.control_plane.extensions_enabled


@dataclass(frozen=True)
class Topology:
    meshes: Mapping[str, Mesh] = field(default_factory=dict)
    owner: Mapping[str, str] = field(default_factory=dict)
    errors: tuple[ResourceError, ...] = ()

    def mesh_of(self, namespace: str) -> Mesh | None:
        """The mesh ``namespace`` belongs to, as control plane or as member."""
        owner = self.owner.get(namespace)
        return None if owner is None else self.meshes[owner]


def build_topology(
    control_planes: Iterable[ServiceMeshControlPlane],
    member_rolls: Iterable[ServiceMeshMemberRoll],
) -> Topology:
    errors: list[ResourceError] = []
    planes: dict[str, ServiceMeshControlPlane] = {}
    for plane in sorted(control_planes, key=lambda p: (p.metadata.namespace, p.metadata.name)):
        namespace = plane.metadata.namespace
        if namespace in planes:
            errors.append(
                ResourceError(
                    f"namespace {namespace!r} already has control plane "
                    f"{planes[namespace].metadata.name!r}; only one is allowed per namespace, this one is ignored",
                    field="metadata.namespace",
                    key=plane.key,
                )
            )
            continue
        planes[namespace] = plane
    rolls = {r.metadata.namespace: r for r in member_rolls}
    claims: dict[str, set[str]] = {ns: {ns} for ns in planes}
    for namespace, roll in sorted(rolls.items()):
        if namespace not in planes:
            errors.append(
                ResourceError(
                    f"no ServiceMeshControlPlane in namespace {namespace!r}; its members are not part of any mesh",
                    field="metadata.namespace",
                    key=roll.key,
                )
            )
            continue
        for member in roll.spec.members:
            claims.setdefault(member, set()).add(namespace)
    owner: dict[str, str] = {}
    for namespace, claimants in sorted(claims.items()):
        if len(claimants) == 1:
            owner[namespace] = next(iter(claimants))
            continue
        errors.append(
            ResourceError(
                f"namespace {namespace!r} is claimed by the meshes of {', '.join(sorted(claimants))}; "
                "it belongs to none of them until only one claims it",
                field="spec.members",
            )
        )
    meshes = {
        ns: Mesh(plane, frozenset(m for m, o in owner.items() if o == ns and m != ns))
        for ns, plane in planes.items()
    }
    return Topology(meshes=meshes, owner=owner, errors=tuple(errors))
