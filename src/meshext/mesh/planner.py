"""The planner: which extensions run on a workload, in what order, and why the others do not.

A pure function of its inputs. The tenant boundary lives here and only here: an
extension reaches a workload of namespace N only if it is in N itself or in the
control-plane namespace of N's mesh.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from meshext.api.meta import ResourceKey
from meshext.api.phase import Phase
from meshext.mesh.extension import Extension
from meshext.mesh.resolution import Resolution, ResolutionState, ResolvedModule
from meshext.mesh.rootid import effective_root_id
from meshext.mesh.targets import target_mismatch
from meshext.mesh.topology import Topology
from meshext.mesh.workload import Workload

DEFAULT_PRIORITY = 0
"""Priority when neither the resource nor the image's manifest gives one."""


class SkipReason(StrEnum):
    WORKLOAD_NOT_IN_MESH = "WorkloadNotInMesh"
    EXTENSION_NOT_IN_MESH = "ExtensionNotInMesh"
    OTHER_MESH = "OtherMesh"
    EXTENSIONS_DISABLED = "ExtensionsDisabled"
    OTHER_NAMESPACE = "OtherNamespace"
    SELECTOR_MISMATCH = "SelectorMismatch"
    TARGET_MISMATCH = "TargetMismatch"
    NOT_READY = "NotReady"
    NO_PHASE = "NoPhase"


@dataclass(frozen=True)
class PlannedExtension:
    """An extension that runs on the workload, with its resolved phase and priority.

    ``module`` is ``None`` only in an offline plan (images not resolved).
    """

    extension: Extension
    phase: Phase
    priority: int
    module: ResolvedModule | None

    @property
    def key(self) -> ResourceKey:
        return self.extension.key

    @property
    def root_id(self) -> str:
        """The root id proxies configure (see :func:`meshext.mesh.rootid.effective_root_id`)."""
        manifest = self.module.manifest if self.module is not None else None
        return effective_root_id(self.extension.root_id, manifest)

    def sort_key(self) -> tuple[int, int, str, str, str, str]:
        ext = self.extension
        return (self.phase.rank, -self.priority, ext.name, ext.image, ext.namespace, ext.key.kind)


@dataclass(frozen=True)
class SkippedExtension:
    extension: Extension
    reason: SkipReason
    detail: str

    @property
    def key(self) -> ResourceKey:
        return self.extension.key


@dataclass(frozen=True)
class WorkloadPlan:
    workload: Workload
    applied: tuple[PlannedExtension, ...]
    skipped: tuple[SkippedExtension, ...]

    def by_phase(self) -> dict[Phase, list[PlannedExtension]]:
        grouped: dict[Phase, list[PlannedExtension]] = {}
        for planned in self.applied:
            grouped.setdefault(planned.phase, []).append(planned)
        return grouped


def plan_workload(
    topology: Topology,
    extensions: Iterable[Extension],
    resolutions: Mapping[ResourceKey, Resolution],
    workload: Workload,
    *,
    offline: bool = False,
    explain: bool = True,
) -> WorkloadPlan:
    """Plan ``workload``.

    ``resolutions`` holds each extension's image resolution; a missing entry means
    pending. With ``offline=True`` unresolved images are not a reason to skip: an
    extension whose spec gives its phase is planned without a module, so its place
    can be shown before any image is pulled.

    With ``explain=False`` the plan's ``skipped`` is empty and only the extensions
    that could reach the workload are judged: those of its own namespace and of its
    mesh's control-plane namespace (every other one is skipped whatever it says). The
    ``applied`` part is the same; a server planning every workload on each change
    needs nothing else.
    """
    if not explain:
        extensions = _candidates(topology, extensions, workload)
    applied: list[PlannedExtension] = []
    skipped: list[SkippedExtension] = []
    for ext in sorted(extensions, key=lambda e: e.key):
        outcome = _decide(topology, ext, resolutions.get(ext.key), workload, offline)
        if isinstance(outcome, PlannedExtension):
            applied.append(outcome)
        elif explain:
            skipped.append(outcome)
    applied.sort(key=PlannedExtension.sort_key)
    return WorkloadPlan(workload, tuple(applied), tuple(skipped))


def _candidates(
    topology: Topology, extensions: Iterable[Extension], workload: Workload
) -> list[Extension]:
    """The extensions that :func:`_decide` may apply to ``workload``: in the workload's
    namespace or in its mesh's control-plane namespace (none outside a mesh)."""
    mesh = topology.mesh_of(workload.namespace)
    if mesh is None:
        return []
    reachable = (workload.namespace, mesh.namespace)
    return [e for e in extensions if e.namespace in reachable]


def _decide(
    topology: Topology,
    ext: Extension,
    resolution: Resolution | None,
    workload: Workload,
    offline: bool,
) -> PlannedExtension | SkippedExtension:
    def skip(reason: SkipReason, detail: str) -> SkippedExtension:
        return SkippedExtension(ext, reason, detail)

    mesh = topology.mesh_of(workload.namespace)
    if mesh is None:
        return skip(
            SkipReason.WORKLOAD_NOT_IN_MESH,
            f"namespace {workload.namespace!r} is not a control-plane namespace "
            "nor listed in a ServiceMeshMemberRoll",
        )
    ext_mesh = topology.mesh_of(ext.namespace)
    if ext_mesh is None:
        return skip(
            SkipReason.EXTENSION_NOT_IN_MESH,
            f"namespace {ext.namespace!r} is not a control-plane namespace "
            "nor listed in a ServiceMeshMemberRoll; its extensions are ignored",
        )
    if ext_mesh.namespace != mesh.namespace:
        return skip(
            SkipReason.OTHER_MESH,
            f"belongs to the mesh of {ext_mesh.namespace!r}, the workload to {mesh.namespace!r}",
        )
    if not mesh.extensions_enabled:
        return skip(
            SkipReason.EXTENSIONS_DISABLED,
            f"ServiceMeshControlPlane {mesh.namespace}/{mesh.control_plane.metadata.name} "
            "does not set spec.techPreview.wasmExtensions.enabled: true",
        )
    if ext.namespace not in (mesh.namespace, workload.namespace):
        return skip(
            SkipReason.OTHER_NAMESPACE,
            f"applies only to workloads in {ext.namespace!r}; only extensions in the "
            f"control-plane namespace {mesh.namespace!r} apply mesh-wide",
        )
    if not workload.matches(ext.selector):
        wanted = ",".join(f"{k}={v}" for k, v in sorted(ext.selector.items()))
        return skip(SkipReason.SELECTOR_MISMATCH, f"workload labels do not include {wanted}")
    if ext.targets:
        mismatch = target_mismatch(ext, workload, mesh.namespace)
        if mismatch is not None:
            return skip(SkipReason.TARGET_MISMATCH, mismatch)
    module: ResolvedModule | None = None
    if resolution is not None and resolution.state is ResolutionState.READY:
        module = resolution.module
    elif not offline or (resolution is not None and resolution.state is ResolutionState.FAILED):
        message = resolution.message if resolution is not None else "image not resolved yet"
        return skip(SkipReason.NOT_READY, message)
    manifest = module.manifest if module is not None else None
    phase = ext.phase or (manifest.phase if manifest else None)
    if phase is None:
        detail = (
            "no phase in the spec and the image's manifest.yaml gives none"
            if module is not None
            else "no phase in the spec; it comes from the image's manifest.yaml, not resolved yet"
        )
        return skip(SkipReason.NOT_READY if module is None else SkipReason.NO_PHASE, detail)
    priority = ext.priority
    if priority is None and manifest is not None:
        priority = manifest.priority
    if priority is None and module is None:
        return skip(
            SkipReason.NOT_READY,
            "no priority in the spec; it comes from the image's manifest.yaml, not resolved yet",
        )
    return PlannedExtension(ext, phase, DEFAULT_PRIORITY if priority is None else priority, module)
