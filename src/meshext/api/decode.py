"""Turn Kubernetes-style documents into typed resources, with errors a user can act on.

Every error names where the document came from, the resource (kind, namespace,
name, as far as they could be read) and the field, e.g.::

    quickstart/ext.yaml (document 2) ServiceMeshExtension istio-system/bad: spec.phase:
    unknown phase 'Early'; expected one of PreAuthN, ...
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from meshext.api import controlplane, extension, wasmplugin
from meshext.api.controlplane import ServiceMeshControlPlane, ServiceMeshMemberRoll
from meshext.api.extension import (
    ServiceMeshExtension,
    ServiceMeshExtensionV1Alpha1Document,
    spec_v1alpha1_to_v1,
)
from meshext.api.meta import DEFAULT_NAMESPACE, ResourceKey, SourceLocation
from meshext.api.wasmplugin import WasmPlugin
from meshext.errors import MeshextError

Resource = ServiceMeshControlPlane | ServiceMeshMemberRoll | ServiceMeshExtension | WasmPlugin


@dataclass(frozen=True)
class ResourceError:
    """One problem with one document."""

    message: str
    field: str = ""
    key: ResourceKey | None = None
    location: SourceLocation | None = None

    def __str__(self) -> str:
        parts = [str(p) for p in (self.location, self.key) if p is not None]
        head = " ".join(parts)
        body = f"{self.field}: {self.message}" if self.field else self.message
        return f"{head}: {body}" if head else body


class DecodeError(MeshextError):
    """A document of a kind meshext owns is invalid; ``errors`` lists every problem."""

    def __init__(self, errors: list[ResourceError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


def _decode_smcp(doc: Mapping[str, Any]) -> Resource:
    return ServiceMeshControlPlane.model_validate(_without_status(doc))


def _decode_smmr(doc: Mapping[str, Any]) -> Resource:
    roll = ServiceMeshMemberRoll.model_validate(_without_status(doc))
    if roll.metadata.name != controlplane.MEMBER_ROLL_NAME:
        raise _field_error(
            "metadata.name",
            f"a member roll must be named {controlplane.MEMBER_ROLL_NAME!r}, "
            f"got {roll.metadata.name!r}",
        )
    return roll


def _decode_sme_v1(doc: Mapping[str, Any]) -> Resource:
    sme = ServiceMeshExtension.model_validate(
        {**_without_status(doc), "served_version": extension.V1}
    )
    # Stored from a v1alpha1 write: the module still receives the text as written.
    kept = extension.kept_config_text(sme.metadata.annotations, sme.spec.config)
    return sme.model_copy(update={"config_text": kept}) if kept is not None else sme


def _decode_sme_v1alpha1(doc: Mapping[str, Any]) -> Resource:
    wire = ServiceMeshExtensionV1Alpha1Document.model_validate(_without_status(doc))
    return ServiceMeshExtension(
        metadata=wire.metadata,
        spec=spec_v1alpha1_to_v1(wire.spec),
        served_version=extension.V1ALPHA1,
        config_text=wire.spec.config,
    )


def _decode_wasmplugin(doc: Mapping[str, Any]) -> Resource:
    return WasmPlugin.model_validate(_without_status(doc))


_DECODERS: dict[tuple[str, str], Callable[[Mapping[str, Any]], Resource]] = {
    (controlplane.SMCP_API_VERSION, controlplane.SMCP_KIND): _decode_smcp,
    (controlplane.SMMR_API_VERSION, controlplane.SMMR_KIND): _decode_smmr,
    (extension.V1, extension.KIND): _decode_sme_v1,
    (extension.V1ALPHA1, extension.KIND): _decode_sme_v1alpha1,
    (wasmplugin.API_VERSION, wasmplugin.KIND): _decode_wasmplugin,
    ("extensions.istio.io/v1beta1", wasmplugin.KIND): _decode_wasmplugin,
    ("extensions.istio.io/v1", wasmplugin.KIND): _decode_wasmplugin,
}
OWNED_KINDS = frozenset(kind for _, kind in _DECODERS)


def decode(document: object, location: SourceLocation | None = None) -> Resource | None:
    """The typed resource in ``document``; ``None`` for kinds meshext does not own.

    Raises :class:`DecodeError` for an owned kind that is invalid.
    """
    if not isinstance(document, Mapping):
        raise DecodeError([ResourceError("expected a mapping at the top level", location=location)])
    kind = document.get("kind")
    api_version = document.get("apiVersion")
    if not isinstance(kind, str) or kind not in OWNED_KINDS:
        return None
    key = _best_effort_key(kind, document)
    decoder = _DECODERS.get((str(api_version), kind))
    if decoder is None:
        versions = sorted(v for v, k in _DECODERS if k == kind)
        raise DecodeError(
            [
                ResourceError(
                    f"unsupported apiVersion {api_version!r} for {kind}; expected one of {', '.join(versions)}",
                    field="apiVersion",
                    key=key,
                    location=location,
                )
            ]
        )
    try:
        return decoder(document)
    except ValidationError as exc:
        raise DecodeError(
            [
                ResourceError(
                    _message(err), field=_field_path(err["loc"]), key=key, location=location
                )
                for err in exc.errors()
            ]
        ) from exc
    except _FieldError as exc:
        raise DecodeError([ResourceError(exc.message, exc.field, key, location)]) from exc


class _FieldError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _field_error(field: str, message: str) -> _FieldError:
    return _FieldError(field, message)


def _without_status(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in ("status", "apiVersion", "kind")}


def _best_effort_key(kind: str, doc: Mapping[str, Any]) -> ResourceKey:
    meta = doc.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    name = meta.get("name")
    namespace = meta.get("namespace")
    return ResourceKey(
        kind,
        namespace if isinstance(namespace, str) else DEFAULT_NAMESPACE,
        name if isinstance(name, str) else "<unnamed>",
    )


_WIRE_NAMES = {
    "image_pull_policy": "imagePullPolicy",
    "image_pull_secrets": "imagePullSecrets",
    "workload_selector": "workloadSelector",
    "tech_preview": "techPreview",
    "wasm_extensions": "wasmExtensions",
}


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
            continue
        if part in ("function-after", "function-before") or "[" in part:
            continue
        wire = _WIRE_NAMES.get(part, part)
        path += f".{wire}" if path else wire
    return path


def _message(err: Any) -> str:
    msg = str(err["msg"])
    if err["type"] == "missing":
        return "required field is missing"
    if err["type"] == "extra_forbidden":
        return "unknown field (check its spelling)"
    return msg.removeprefix("Value error, ")
