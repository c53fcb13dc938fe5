"""ServiceMeshExtensions rendered as upstream Istio resources: pure functions, no I/O.

Two renderings, chosen per extension by the ``meshext.io/placement`` annotation:

``WasmPlugin`` (default, ``extensions.istio.io/v1alpha1``)
    Istio places the plugin itself, in one of its four slots. Maistra's six phases
    map onto them as users converting by hand did:

    ==========================  =============  ===========================================
    Maistra phase               WasmPlugin     what changes
    ==========================  =============  ===========================================
    PreAuthN                    AUTHN          nothing
    PostAuthN, PreAuthZ         AUTHZ          both share one slot: priority alone orders them
    PostAuthZ, PreStats         STATS          both share one slot: priority alone orders them
    PostStats                   (unspecified)  Istio runs it before its stats filter
    ==========================  =============  ===========================================

    Every WasmPlugin matches ``mode: SERVER`` (sidecar inbound), as Maistra never ran
    extensions on outbound traffic; gateways need the exact placement below.

``EnvoyFilter`` (``meshext.io/placement: exact``, ``networking.istio.io/v1alpha3``)
    The wasm filter is inserted next to Istio's own filters following Maistra's anchor
    table, keeping all six phases apart; the EnvoyFilter ``priority`` (the order
    Istio applies patches in) encodes phase and priority so that extensions sharing
    an anchor come out in Maistra's order:

    =========  =============  ===============================  ======================
    phase      operation      anchor                           needs
    =========  =============  ===============================  ======================
    PreAuthN   INSERT_FIRST   (start of the chain)             nothing
    PostAuthN  INSERT_BEFORE  ``envoy.filters.http.rbac``      an AuthorizationPolicy
    PreAuthZ   INSERT_BEFORE  ``envoy.filters.http.rbac``      an AuthorizationPolicy
    PostAuthZ  INSERT_BEFORE  ``istio.stats``                  telemetry (default on)
    PreStats   INSERT_BEFORE  ``istio.stats``                  telemetry (default on)
    PostStats  INSERT_BEFORE  ``envoy.filters.http.router``    nothing
    =========  =============  ===============================  ======================

    Istio skips a patch whose anchor filter is absent from a proxy's chain (it adds
    ``rbac`` only for workloads with an AuthorizationPolicy, ``jwt_authn`` only with a
    RequestAuthentication), so the anchors are the ones that keep the phase order
    wherever the optional filters are present and are themselves (nearly) always
    there; see ``docs/kubernetes.md``. Envoy fetches the module from meshext's module
    server through Istio's outbound cluster for that Service.

Extensions in the control-plane namespace apply mesh-wide; their rendering goes to
Istio's root namespace. Each rendered object carries ``app.kubernetes.io/managed-by:
meshext``, the ``meshext.io/owner`` annotation naming its ServiceMeshExtension, and
(when both share a namespace) an owner reference to it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlsplit

from meshext.api import extension as sme_api
from meshext.api.extension import ServiceMeshExtension
from meshext.api.phase import Phase
from meshext.api.wasmplugin import PluginPhase
from meshext.mesh.extension import ROOT_ID_ANNOTATION
from meshext.mesh.resolution import ResolvedModule
from meshext.mesh.rootid import effective_root_id
from meshext.server.modules import module_url

WASM_PLUGIN_API_VERSION = "extensions.istio.io/v1alpha1"
ENVOY_FILTER_API_VERSION = "networking.istio.io/v1alpha3"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "meshext"
OWNER_ANNOTATION = "meshext.io/owner"
PLACEMENT_ANNOTATION = "meshext.io/placement"
DEFAULT_ROOT_NAMESPACE = "istio-system"

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

ISTIO_PHASES: Mapping[Phase, PluginPhase] = {
    Phase.PRE_AUTHN: PluginPhase.AUTHN,
    Phase.POST_AUTHN: PluginPhase.AUTHZ,
    Phase.PRE_AUTHZ: PluginPhase.AUTHZ,
    Phase.POST_AUTHZ: PluginPhase.STATS,
    Phase.PRE_STATS: PluginPhase.STATS,
    Phase.POST_STATS: PluginPhase.UNSPECIFIED,
}

HCM = "envoy.filters.network.http_connection_manager"
RBAC = "envoy.filters.http.rbac"
ISTIO_STATS = "istio.stats"
ROUTER = "envoy.filters.http.router"


class Operation(StrEnum):
    INSERT_FIRST = "INSERT_FIRST"
    INSERT_BEFORE = "INSERT_BEFORE"


@dataclass(frozen=True)
class Anchor:
    operation: Operation
    filter: str | None


ANCHORS: Mapping[Phase, Anchor] = {
    Phase.PRE_AUTHN: Anchor(Operation.INSERT_FIRST, None),
    Phase.POST_AUTHN: Anchor(Operation.INSERT_BEFORE, RBAC),
    Phase.PRE_AUTHZ: Anchor(Operation.INSERT_BEFORE, RBAC),
    Phase.POST_AUTHZ: Anchor(Operation.INSERT_BEFORE, ISTIO_STATS),
    Phase.PRE_STATS: Anchor(Operation.INSERT_BEFORE, ISTIO_STATS),
    Phase.POST_STATS: Anchor(Operation.INSERT_BEFORE, ROUTER),
}

# EnvoyFilter priority = phase band + priority: patches are applied lowest first, and
# each INSERT_BEFORE lands after the ones applied before it at the same anchor.
_PHASE_BAND = 2**26
_PRIORITY_LIMIT = 2**25 - 1


class Placement(StrEnum):
    PLUGIN = "plugin"
    EXACT = "exact"


class RenderError(ValueError):
    """The extension cannot be rendered with these options; the message says why."""


@dataclass(frozen=True)
class Note:
    """Where the rendering means something different from what Maistra did."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True)
class IstioOptions:
    """How extensions become Istio resources.

    ``module_base_url`` is where proxies reach meshext's module server (for example
    ``http://meshext.meshext-system.svc:8080``); ``module_source="oci"`` hands Istio
    the image reference instead, for Istio's agent to pull itself (the image must
    then hold ``/plugin.wasm``). ``module_cluster`` is the Envoy cluster for that
    server in exact placement (default: Istio's outbound cluster of the URL's host).
    """

    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    module_base_url: str | None = None
    module_source: Literal["http", "oci"] = "http"
    module_cluster: str | None = None
    fetch_timeout: str = "30s"


@dataclass(frozen=True)
class Resolved:
    """What resolving the image taught: the phase and priority in effect, and the module
    (``None`` offline, when nothing was pulled)."""

    phase: Phase | None
    priority: int | None
    module: ResolvedModule | None = None


@dataclass(frozen=True)
class Rendering:
    manifest: dict[str, Any]
    notes: tuple[Note, ...] = ()

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def namespace(self) -> str:
        return str(self.manifest["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])


def placement_of(sme: ServiceMeshExtension) -> Placement:
    value = sme.metadata.annotations.get(PLACEMENT_ANNOTATION, Placement.PLUGIN.value)
    try:
        return Placement(value)
    except ValueError:
        raise RenderError(
            f"metadata.annotations[{PLACEMENT_ANNOTATION}]: unknown value {value!r}; "
            f"expected {Placement.PLUGIN.value!r} (WasmPlugin) or {Placement.EXACT.value!r} "
            "(EnvoyFilter)"
        ) from None


def target_namespace(sme: ServiceMeshExtension, control_plane_namespace: str, root: str) -> str:
    """Mesh-wide extensions (control-plane namespace) go to Istio's root namespace."""
    namespace = sme.metadata.namespace
    return root if namespace == control_plane_namespace else namespace


def root_id(sme: ServiceMeshExtension, module: ResolvedModule | None = None) -> str:
    """The root id the module is configured with: :mod:`meshext.mesh.rootid`'s rule."""
    manifest = module.manifest if module is not None else None
    return effective_root_id(sme.metadata.annotations.get(ROOT_ID_ANNOTATION), manifest)


def istio_cluster_name(base_url: str) -> str:
    """Istio's outbound cluster for the Service in ``base_url``
    (``outbound|<port>||<name>.<namespace>.svc.cluster.local``)."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if not host:
        raise RenderError(f"module URL {base_url!r} has no host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    labels = host.split(".")
    if len(labels) == 2:
        host = f"{host}.svc.cluster.local"
    elif labels[-1] == "svc":
        host = f"{host}.cluster.local"
    return f"outbound|{port}||{host}"


def render(
    sme: ServiceMeshExtension,
    resolved: Resolved,
    *,
    control_plane_namespace: str,
    options: IstioOptions,
) -> Rendering:
    """The Istio resource for ``sme``, per its placement annotation."""
    if placement_of(sme) is Placement.EXACT:
        return render_envoy_filter(
            sme, resolved, control_plane_namespace=control_plane_namespace, options=options
        )
    return render_wasm_plugin(
        sme, resolved, control_plane_namespace=control_plane_namespace, options=options
    )


# --------------------------------------------------------------------------- WasmPlugin


def render_wasm_plugin(
    sme: ServiceMeshExtension,
    resolved: Resolved,
    *,
    control_plane_namespace: str,
    options: IstioOptions,
) -> Rendering:
    notes: list[Note] = []
    spec: dict[str, Any] = {}
    selector = sme.spec.workload_selector.labels if sme.spec.workload_selector else {}
    if selector:
        spec["selector"] = {"matchLabels": dict(sorted(selector.items()))}
    module = resolved.module
    if options.module_source == "http":
        if module is None or options.module_base_url is None:
            raise RenderError(
                "serving the module over HTTP needs the resolved module and the module server's URL"
            )
        spec["url"] = module_url(options.module_base_url, module.sha256)
        spec["sha256"] = module.sha256
    else:
        spec["url"] = oci_url(sme.spec.image)
        digest = module.image_digest if module is not None else None
        if digest:
            spec["sha256"] = digest.removeprefix("sha256:")
        notes.append(
            Note(
                "spec.image",
                "Istio takes the module from /plugin.wasm in the image (or a wasm artifact "
                "layer), not from the path named in manifest.yaml; rebuild the image unless "
                "it already has /plugin.wasm (Maistra 2.2 images do)",
            )
        )
        if sme.spec.image_pull_policy:
            spec["imagePullPolicy"] = sme.spec.image_pull_policy
        secrets = [s.name for s in sme.spec.image_pull_secrets]
        if secrets:
            spec["imagePullSecret"] = secrets[0]
        if len(secrets) > 1:
            notes.append(
                Note(
                    "spec.imagePullSecrets",
                    f"WasmPlugin takes one pull secret: kept {secrets[0]!r}, dropped "
                    f"{', '.join(repr(s) for s in secrets[1:])}",
                )
            )
    config = sme.spec.config
    if config is not None:
        spec["pluginConfig"] = config
        if set(config) == {sme_api.RAW_V1ALPHA1_CONFIG}:
            notes.append(
                Note(
                    "spec.config",
                    "the v1alpha1 config string is not a JSON object: the module now receives "
                    f'{{"{sme_api.RAW_V1ALPHA1_CONFIG}": "..."}} instead of the bare string '
                    "(use meshext.io/placement: exact to pass the string unchanged)",
                )
            )
    plugin_name = root_id(sme, resolved.module)
    if plugin_name:  # Istio requires a non-empty pluginName; absent means root id ""
        spec["pluginName"] = plugin_name
    phase_note = _phase_note(resolved.phase)
    if resolved.phase is not None:
        istio_phase = ISTIO_PHASES[resolved.phase]
        if istio_phase is not PluginPhase.UNSPECIFIED:
            spec["phase"] = istio_phase.value
    if phase_note is not None:
        notes.append(phase_note)
    if resolved.priority is not None:
        priority = min(max(resolved.priority, INT32_MIN), INT32_MAX)
        if priority != resolved.priority:
            notes.append(
                Note(
                    "spec.priority",
                    f"{resolved.priority} is outside Istio's 32-bit range; using {priority}",
                )
            )
        spec["priority"] = priority
    spec["failStrategy"] = "FAIL_CLOSE"
    spec["type"] = "HTTP"
    spec["match"] = [dict(m) for m in SIDECAR_INBOUND_MATCH]
    notes.append(GATEWAY_NOTE)
    namespace = target_namespace(sme, control_plane_namespace, options.root_namespace)
    manifest = {
        "apiVersion": WASM_PLUGIN_API_VERSION,
        "kind": "WasmPlugin",
        "metadata": _metadata(sme, namespace),
        "spec": spec,
    }
    return Rendering(manifest, tuple(notes))


# Maistra ran an extension on the sidecar's inbound traffic, never on what the workload
# sends out. A WasmPlugin without ``match`` runs in both directions; ``mode: SERVER``
# keeps it to inbound listeners. Istio counts gateway listeners as CLIENT traffic, so
# no one WasmPlugin can cover sidecar inbound and gateways without also covering
# sidecar outbound: gateways are reached through exact placement instead.
SIDECAR_INBOUND_MATCH: tuple[Mapping[str, str], ...] = ({"mode": "SERVER"},)
GATEWAY_NOTE = Note(
    "spec.match",
    "the WasmPlugin runs on sidecar inbound traffic only (mode SERVER); Istio treats "
    "gateway listeners as client traffic, so gateways no longer run this extension: "
    "use meshext.io/placement: exact (EnvoyFilter) for gateways",
)


def oci_url(image: str) -> str:
    """The WasmPlugin ``url`` of a ServiceMeshExtension ``spec.image``."""
    if image.startswith("file:"):
        return f"file://{image.removeprefix('file:')}"
    if image.startswith("oci-layout:"):
        raise RenderError(
            f"spec.image {image!r} is an OCI layout on this host; Istio cannot pull it: "
            "push it to a registry first"
        )
    return f"oci://{image}"


def _phase_note(phase: Phase | None) -> Note | None:
    if phase in (Phase.POST_AUTHN, Phase.PRE_AUTHZ):
        return Note(
            "spec.phase",
            f"{phase} becomes AUTHZ, shared by PostAuthN and PreAuthZ: Istio orders the two "
            "by priority only, no longer PostAuthN first",
        )
    if phase in (Phase.POST_AUTHZ, Phase.PRE_STATS):
        return Note(
            "spec.phase",
            f"{phase} becomes STATS, shared by PostAuthZ and PreStats: Istio orders the two "
            "by priority only, no longer PostAuthZ first",
        )
    if phase is Phase.POST_STATS:
        return Note(
            "spec.phase",
            "PostStats becomes the unspecified phase: Istio runs such plugins after its "
            "STATS plugins but before its own stats filter, not after it",
        )
    return None


# --------------------------------------------------------------------------- EnvoyFilter


def render_envoy_filter(
    sme: ServiceMeshExtension,
    resolved: Resolved,
    *,
    control_plane_namespace: str,
    options: IstioOptions,
) -> Rendering:
    module = resolved.module
    if module is None or options.module_base_url is None:
        raise RenderError(
            "exact placement has Envoy fetch the module from meshext's module server; "
            "it needs the resolved module and the module server's URL"
        )
    if resolved.phase is None:
        raise RenderError("no phase: set spec.phase or add phase to the image's manifest.yaml")
    phase = resolved.phase
    priority = resolved.priority or 0
    anchor = ANCHORS[phase]
    cluster = options.module_cluster or istio_cluster_name(options.module_base_url)
    namespace = target_namespace(sme, control_plane_namespace, options.root_namespace)
    filter_name = f"meshext.{sme.metadata.namespace}.{sme.metadata.name}"
    value = {
        "name": filter_name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": sme.metadata.name,
                "root_id": root_id(sme, module),
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {
                        "remote": {
                            "http_uri": {
                                "uri": module_url(options.module_base_url, module.sha256),
                                "cluster": cluster,
                                "timeout": options.fetch_timeout,
                            },
                            "sha256": module.sha256,
                            "retry_policy": {"num_retries": 2},
                        }
                    },
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": sme.module_config(),
                },
                "fail_open": False,
            },
        },
    }
    patches = []
    for context in ("SIDECAR_INBOUND", "GATEWAY"):
        filter_match: dict[str, Any] = {"name": HCM}
        if anchor.filter is not None:
            filter_match["subFilter"] = {"name": anchor.filter}
        patches.append(
            {
                "applyTo": "HTTP_FILTER",
                "match": {
                    "context": context,
                    "listener": {"filterChain": {"filter": filter_match}},
                },
                "patch": {"operation": anchor.operation.value, "value": value},
            }
        )
    spec: dict[str, Any] = {}
    selector = sme.spec.workload_selector.labels if sme.spec.workload_selector else {}
    if selector:
        spec["workloadSelector"] = {"labels": dict(sorted(selector.items()))}
    spec["priority"] = envoy_filter_priority(phase, priority)
    spec["configPatches"] = patches
    notes: list[Note] = []
    if abs(priority) > _PRIORITY_LIMIT:
        notes.append(
            Note(
                "spec.priority",
                f"{priority} is beyond ±{_PRIORITY_LIMIT}; extensions beyond that range at the "
                "same anchor keep their phase order but may tie",
            )
        )
    manifest = {
        "apiVersion": ENVOY_FILTER_API_VERSION,
        "kind": "EnvoyFilter",
        "metadata": _metadata(sme, namespace),
        "spec": spec,
    }
    return Rendering(manifest, tuple(notes))


def envoy_filter_priority(phase: Phase, priority: int) -> int:
    """The EnvoyFilter ``priority`` putting ``phase``/``priority`` in Maistra's order.

    Istio applies patches from the lowest priority up. For ``INSERT_BEFORE`` a later
    patch lands after earlier ones at the same anchor, so earlier phases and higher
    Maistra priorities must be applied first; for ``INSERT_FIRST`` a later patch lands
    before the earlier ones, so the order flips.
    """
    clamped = min(max(priority, -_PRIORITY_LIMIT), _PRIORITY_LIMIT)
    if ANCHORS[phase].operation is Operation.INSERT_FIRST:
        return phase.rank * _PHASE_BAND + clamped
    return phase.rank * _PHASE_BAND - clamped


# --------------------------------------------------------------------------- shared


def _metadata(sme: ServiceMeshExtension, namespace: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": sme.metadata.name,
        "namespace": namespace,
        "labels": {MANAGED_BY_LABEL: MANAGED_BY},
        "annotations": {OWNER_ANNOTATION: f"{sme.metadata.namespace}/{sme.metadata.name}"},
    }
    if namespace == sme.metadata.namespace and sme.metadata.uid:
        # Owner references cannot cross namespaces; meshext deletes the others itself.
        meta["ownerReferences"] = [
            {
                "apiVersion": sme_api.V1,
                "kind": sme_api.KIND,
                "name": sme.metadata.name,
                "uid": sme.metadata.uid,
                "controller": True,
            }
        ]
    return meta


def canonical(manifest: Mapping[str, Any]) -> str:
    """Stable text of a manifest, for comparing desired and actual objects."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"))
