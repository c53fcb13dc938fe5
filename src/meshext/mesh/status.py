"""The status meshext reports for an extension, as a pure function of what it knows.

The Maistra fields come first: the resolved phase and priority, the generation seen,
and ``deployment`` (ready, module sha256, image digest, module URL, or a message on
failure, with the other deployment fields cleared). A ready deployment carries a
message when what runs is not what the resource asks for yet (a changed image that
is still being resolved, or could not be). Which proxies run or rejected
the extension is added by the server, which alone knows the proxies.
"""

from __future__ import annotations

from collections.abc import Callable

from meshext.api.extension import DeploymentStatus, ExtensionStatus
from meshext.mesh.extension import Extension
from meshext.mesh.planner import DEFAULT_PRIORITY
from meshext.mesh.resolution import Resolution, ResolutionState
from meshext.mesh.topology import Topology


def extension_status(
    extension: Extension,
    resolution: Resolution | None,
    module_url: Callable[[str], str | None],
    topology: Topology | None = None,
) -> ExtensionStatus:
    """Status of ``extension`` given its image ``resolution`` (``None``: not tried yet).

    ``module_url`` maps a module sha256 to the URL proxies fetch it from (``None``
    when proxies read it from a local file). With ``topology``, an extension outside
    every mesh, or in a mesh whose control plane has extensions disabled, is reported
    not ready with the reason, whatever its image.
    """
    if topology is not None:
        reason = scope_problem(extension, topology)
        if reason:
            return _not_ready(extension, reason)
    if resolution is None or resolution.state is ResolutionState.PENDING:
        message = resolution.message if resolution else "image not resolved yet"
        return _not_ready(extension, message)
    if resolution.state is ResolutionState.FAILED or resolution.module is None:
        return _not_ready(extension, resolution.message or "image could not be resolved")
    module = resolution.module
    manifest = module.manifest
    phase = extension.phase or (manifest.phase if manifest else None)
    priority = extension.priority
    if priority is None:
        priority = (
            manifest.priority if manifest and manifest.priority is not None else DEFAULT_PRIORITY
        )
    if phase is None:
        return _not_ready(
            extension, "no phase: set spec.phase or add phase to the image's manifest.yaml"
        )
    return ExtensionStatus(
        phase=phase,
        priority=priority,
        observed_generation=extension.generation,
        deployment=DeploymentStatus(
            ready=True,
            container_sha256=module.image_digest,
            sha256=module.sha256,
            url=module_url(module.sha256),
            signer=module.signer,
            message=resolution.message or None,
        ),
    )


def scope_problem(extension: Extension, topology: Topology) -> str | None:
    """Why ``extension`` can apply to no workload at all, or ``None`` when it can."""
    mesh = topology.mesh_of(extension.namespace)
    if mesh is None:
        return (
            f"namespace {extension.namespace!r} is not part of any mesh: it is neither a "
            "control-plane namespace nor listed in a ServiceMeshMemberRoll"
        )
    if not mesh.extensions_enabled:
        plane = mesh.control_plane.metadata
        return (
            f"extensions are disabled: ServiceMeshControlPlane {plane.namespace}/{plane.name} "
            "does not set spec.techPreview.wasmExtensions.enabled: true"
        )
    return None


def _not_ready(extension: Extension, message: str) -> ExtensionStatus:
    return ExtensionStatus(
        phase=extension.phase,
        priority=extension.priority,
        observed_generation=extension.generation,
        deployment=DeploymentStatus(ready=False, message=message),
    )
