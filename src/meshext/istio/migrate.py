"""Offline migration: ServiceMeshExtension manifests rewritten as Istio WasmPlugins.

What a user converting by hand did, plus a warning wherever the meaning changes
(see :mod:`meshext.istio.render` for the phase table). Nothing is pulled: a phase or
priority left to the image's ``manifest.yaml`` cannot be known here and is reported.
Other documents pass through unchanged, so a manifest mixing kinds converts in place.

Beyond the per-extension warnings, pairs of extensions whose Maistra phases merge
into one Istio phase are compared: if Istio's order (priority only) differs from
Maistra's (phase, then priority) for two extensions that can reach the same
workloads, the pair is reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from meshext.api.decode import DecodeError, decode
from meshext.api.extension import ServiceMeshExtension
from meshext.api.meta import SourceLocation
from meshext.api.phase import Phase
from meshext.istio.render import (
    DEFAULT_ROOT_NAMESPACE,
    ISTIO_PHASES,
    IstioOptions,
    Note,
    RenderError,
    Resolved,
    render_wasm_plugin,
)


@dataclass(frozen=True)
class MigrationWarning:
    """One change of meaning, tied to the document it concerns."""

    message: str
    location: SourceLocation | None = None
    resource: str = ""

    def __str__(self) -> str:
        head = " ".join(
            p for p in (str(self.location) if self.location else "", self.resource) if p
        )
        return f"{head}: {self.message}" if head else self.message


@dataclass
class Migration:
    documents: list[Any] = field(default_factory=list)
    warnings: list[MigrationWarning] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    converted: int = 0


@dataclass(frozen=True)
class _Converted:
    sme: ServiceMeshExtension
    location: SourceLocation | None


def migrate_documents(
    documents: Iterable[tuple[SourceLocation | None, Any]],
    *,
    control_plane_namespace: str = DEFAULT_ROOT_NAMESPACE,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> Migration:
    """Convert every ServiceMeshExtension among ``documents``; keep the others as they are."""
    result = Migration()
    options = IstioOptions(root_namespace=root_namespace, module_source="oci")
    converted: list[_Converted] = []
    for location, document in documents:
        try:
            resource = decode(document, location)
        except DecodeError as exc:
            result.errors.extend(str(e) for e in exc.errors)
            continue
        if not isinstance(resource, ServiceMeshExtension):
            result.documents.append(document)
            continue
        name = str(resource.key)
        try:
            rendering = render_wasm_plugin(
                resource,
                Resolved(resource.spec.phase, resource.spec.priority),
                control_plane_namespace=control_plane_namespace,
                options=options,
            )
        except RenderError as exc:
            result.errors.append(f"{location} {name}: {exc}" if location else f"{name}: {exc}")
            continue
        result.documents.append(rendering.manifest)
        result.converted += 1
        converted.append(_Converted(resource, location))
        for note in (*_offline_notes(resource), *rendering.notes):
            result.warnings.append(MigrationWarning(str(note), location, name))
        if rendering.namespace != resource.metadata.namespace:
            result.warnings.append(
                MigrationWarning(
                    f"metadata.namespace: mesh-wide extension moved from the control-plane "
                    f"namespace {resource.metadata.namespace!r} to Istio's root namespace "
                    f"{rendering.namespace!r}",
                    location,
                    name,
                )
            )
    result.warnings.extend(_order_changes(converted, control_plane_namespace))
    return result


def _offline_notes(sme: ServiceMeshExtension) -> list[Note]:
    notes = []
    if sme.spec.phase is None:
        notes.append(
            Note(
                "spec.phase",
                "not set: Maistra took it from the image's manifest.yaml, which Istio does not "
                "read; the WasmPlugin gets the unspecified phase - set it explicitly",
            )
        )
    if sme.spec.priority is None:
        notes.append(
            Note(
                "spec.priority",
                "not set: Maistra took it from the image's manifest.yaml, which Istio does not "
                "read; the WasmPlugin gets Istio's default - set it explicitly",
            )
        )
    return notes


def _order_changes(
    converted: Sequence[_Converted], control_plane_namespace: str
) -> list[MigrationWarning]:
    warnings = []
    for a, b in combinations(converted, 2):
        pa, pb = a.sme.spec.phase, b.sme.spec.phase
        if pa is None or pb is None or pa == pb or ISTIO_PHASES[pa] != ISTIO_PHASES[pb]:
            continue
        if not _may_share_workloads(a.sme, b.sme, control_plane_namespace):
            continue
        first, second = (a, b) if pa.rank < pb.rank else (b, a)
        p_first = first.sme.spec.priority or 0
        p_second = second.sme.spec.priority or 0
        if p_first >= p_second:
            continue  # Istio's priority order agrees with Maistra's phase order.
        warnings.append(
            MigrationWarning(
                f"order changes: {first.sme.key} ({_phase(first.sme)}, priority {p_first}) "
                f"ran before {second.sme.key} ({_phase(second.sme)}, priority {p_second}); "
                f"as {ISTIO_PHASES[pa].value} plugins Istio orders them by priority only, so "
                f"{second.sme.metadata.name} now runs first - raise "
                f"{first.sme.metadata.name}'s priority above {p_second} to keep the old order",
                second.location,
                str(second.sme.key),
            )
        )
    return warnings


def _phase(sme: ServiceMeshExtension) -> str:
    phase: Phase | None = sme.spec.phase
    return phase.value if phase else "-"


def _may_share_workloads(
    a: ServiceMeshExtension, b: ServiceMeshExtension, control_plane_namespace: str
) -> bool:
    na, nb = a.metadata.namespace, b.metadata.namespace
    return na == nb or control_plane_namespace in (na, nb)
