"""ServiceMeshExtension, maistra.io/v1alpha1 and maistra.io/v1, and the conversion between them.

v1 is the canonical form inside meshext (as it is Kubernetes' storage version). A
v1alpha1 document is converted on load; its config string is kept as well, so the
module receives exactly the text the user wrote. On a cluster the string survives
storage as v1 in an annotation (:data:`CONFIG_TEXT_ANNOTATION`), so reading it back as
v1alpha1, and the module, get it byte for byte.

The comparison of kept text and stored object (:func:`kept_config_text`) is written
here rather than taken from a library because it has to follow the API server's own
JSON rules (64-bit integers, doubles), which no JSON library models.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator

from meshext.api.base import SpecModel
from meshext.api.kube_values import check_int32, check_labels
from meshext.api.meta import ObjectMeta, ResourceKey
from meshext.api.phase import Phase
from meshext.images.reference import ReferenceKind, parse_image_reference

GROUP = "maistra.io"
KIND = "ServiceMeshExtension"
V1ALPHA1 = f"{GROUP}/v1alpha1"
V1 = f"{GROUP}/v1"
RAW_V1ALPHA1_CONFIG = "raw_v1alpha1_config"
CONFIG_TEXT_ANNOTATION = "meshext.io/v1alpha1-config"
"""On a stored (v1) object: the v1alpha1 config string exactly as written, when the v1
``config`` object alone cannot give it back (see :func:`convert_document`)."""

PullPolicy = Literal["Always", "IfNotPresent"]


class LocalObjectReference(SpecModel):
    name: str


class WorkloadSelector(SpecModel):
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _labels_are_valid(cls, value: dict[str, str]) -> dict[str, str]:
        check_labels(value)
        return value


class _SpecCommon(SpecModel):
    image: str
    image_pull_policy: PullPolicy | None = None
    image_pull_secrets: tuple[LocalObjectReference, ...] = ()
    workload_selector: WorkloadSelector | None = None
    phase: Phase | None = None
    priority: int | None = None

    @field_validator("image")
    @classmethod
    def _image_has_tag_or_digest(cls, value: str) -> str:
        if parse_image_reference(value).kind is ReferenceKind.HTTP:
            raise ValueError("http(s) module URLs are a WasmPlugin feature; use an image")
        return value

    @field_validator("phase", mode="before")
    @classmethod
    def _phase_is_known(cls, value: object) -> object:
        if isinstance(value, str):
            return Phase.parse(value)
        return value

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_is_integer(cls, value: object) -> object:
        if isinstance(value, bool) or (value is not None and not isinstance(value, int)):
            raise ValueError(f"priority must be an integer, got {value!r}")
        return check_int32(value, "priority") if isinstance(value, int) else value


class ExtensionSpecV1Alpha1(_SpecCommon):
    config: str | None = None

    @field_validator("config", mode="before")
    @classmethod
    def _config_is_string(cls, value: object) -> object:
        if value is not None and not isinstance(value, str):
            raise ValueError(
                "in maistra.io/v1alpha1 config is a string handed to the extension as is; "
                "quote it, or use maistra.io/v1 for an object"
            )
        return value


class ExtensionSpecV1(_SpecCommon):
    config: dict[str, Any] | None = None

    @field_validator("config", mode="before")
    @classmethod
    def _config_is_object(cls, value: object) -> object:
        if value is not None and not isinstance(value, dict):
            raise ValueError(
                f"in maistra.io/v1 config is an object, got {type(value).__name__}; "
                "use maistra.io/v1alpha1 for a plain string"
            )
        return value


class DeploymentStatus(SpecModel):
    ready: bool = False
    container_sha256: str | None = None
    sha256: str | None = None
    url: str | None = None
    message: str | None = None
    signer: str | None = None
    """Who signed the running image and how, when signatures are checked: the trusted
    key or certificate identity, then the kind (``…, cosign signature``,
    ``…, sigstore bundle``, ``…, detached signature``)."""


class ExtensionStatus(SpecModel):
    phase: Phase | None = None
    priority: int | None = None
    observed_generation: int | None = None
    deployment: DeploymentStatus = Field(default_factory=DeploymentStatus)


class ServiceMeshExtensionV1Alpha1Document(SpecModel):
    """The wire shape of a maistra.io/v1alpha1 document, before conversion to v1."""

    metadata: ObjectMeta
    spec: ExtensionSpecV1Alpha1
    status: ExtensionStatus | None = None


class ServiceMeshExtension(SpecModel):
    """A ServiceMeshExtension in canonical (v1) form.

    ``served_version`` records the API version the user wrote, and ``config_text`` the
    verbatim v1alpha1 config string, when there was one.
    """

    metadata: ObjectMeta
    spec: ExtensionSpecV1
    status: ExtensionStatus | None = None
    served_version: str = V1
    config_text: str | None = None

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(KIND, self.metadata.namespace, self.metadata.name)

    def module_config(self) -> str:
        """The bytes handed to the module's ``proxy_on_configure``, as Maistra did.

        v1alpha1: the string verbatim (also when stored as v1 with the string kept in
        :data:`CONFIG_TEXT_ANNOTATION`). v1: the object as compact JSON with sorted keys
        (deterministic), except that an object holding only ``raw_v1alpha1_config``
        hands over that string.
        """
        if self.config_text is not None:
            return self.config_text
        return config_object_to_text(self.spec.config)


def config_text_to_object(text: str | None) -> dict[str, Any] | None:
    """v1alpha1 → v1: parse the string as a JSON object, else wrap it in ``raw_v1alpha1_config``.

    The wrapper is unambiguous: a JSON object that itself looks like the wrapper (only
    the key ``raw_v1alpha1_config``, holding a string) is wrapped too, so the way back
    cannot mistake it for a wrapped plain string. Numbers JSON allows but the API server
    cannot store (``NaN``, infinities, beyond a double) make the text a plain string.
    """
    if text is None:
        return None
    parsed = _parse_storable_json(text)
    if isinstance(parsed, dict) and not _is_wrapper(parsed):
        return parsed
    return {RAW_V1ALPHA1_CONFIG: text}


def config_object_to_text(config: dict[str, Any] | None) -> str:
    """v1 → v1alpha1: the wrapped string, else the object as compact JSON with sorted keys."""
    if config is None:
        return ""
    if _is_wrapper(config):
        return str(config[RAW_V1ALPHA1_CONFIG])
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def _is_wrapper(config: dict[str, Any]) -> bool:
    return set(config) == {RAW_V1ALPHA1_CONFIG} and isinstance(config[RAW_V1ALPHA1_CONFIG], str)


class _NotStorable(ValueError):
    pass


def _refuse_constant(name: str) -> float:
    raise _NotStorable(f"{name} is not JSON the API server stores")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotStorable(f"{text} is beyond a double")
    return value


def _bounded_int(text: str) -> int:
    value = int(text)
    _finite_float(text)
    return value


def _parse_storable_json(text: str) -> object:
    """``text`` as JSON if the API server can store its value, else ``None``."""
    try:
        return json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except (ValueError, RecursionError):
        return None


def kept_config_text(annotations: Mapping[str, str] | None, config: object) -> str | None:
    """The v1alpha1 config text kept in :data:`CONFIG_TEXT_ANNOTATION`, if it still says
    what ``config`` (the v1 object as stored) says; ``None`` when absent or stale.

    A client of v1 may have changed ``config`` since the text was kept; then the text
    no longer applies. "Says the same" is judged as the API server stores JSON:
    integers beyond 64 bits and decimals as doubles, invalid UTF-16 as U+FFFD.
    """
    text = (annotations or {}).get(CONFIG_TEXT_ANNOTATION)
    if not isinstance(text, str) or not isinstance(config, dict):
        return None
    if _same_stored_json(config_text_to_object(text), config):
        return text
    return None


def _needs_keeping(text: str) -> bool:
    """Whether the v1 object loses something of ``text`` (order, spelling, duplicates)."""
    return config_object_to_text(config_text_to_object(text)) != text


_INT64 = range(-(2**63), 2**63)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _same_stored_json(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        left = {_stored_string(k): v for k, v in a.items()}
        right = {_stored_string(k): v for k, v in b.items()}
        return left.keys() == right.keys() and all(
            _same_stored_json(left[k], right[k]) for k in left
        )
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_stored_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        if isinstance(a, int) and isinstance(b, int) and a in _INT64 and b in _INT64:
            return a == b
        return float(a) == float(b)
    if isinstance(a, str) and isinstance(b, str):
        return _stored_string(a) == _stored_string(b)
    return a is None and b is None


def _stored_string(value: str) -> str:
    return _LONE_SURROGATE.sub("\ufffd", value)


def spec_v1alpha1_to_v1(spec: ExtensionSpecV1Alpha1) -> ExtensionSpecV1:
    fields = spec.model_dump(exclude={"config"})
    return ExtensionSpecV1.model_validate({**fields, "config": config_text_to_object(spec.config)})


def spec_v1_to_v1alpha1(spec: ExtensionSpecV1) -> ExtensionSpecV1Alpha1:
    fields = spec.model_dump(exclude={"config"})
    text = None if spec.config is None else config_object_to_text(spec.config)
    return ExtensionSpecV1Alpha1.model_validate({**fields, "config": text})


def convert_document(document: dict[str, Any], to_version: str) -> dict[str, Any]:
    """Convert a whole ServiceMeshExtension document (as the API server sends it) between
    versions; status passes through, only ``spec.config`` changes shape.

    Without loss: where the v1 object cannot hold a v1alpha1 config string exactly
    (key order, number spelling, duplicate keys, white space), the string is kept in
    the annotation :data:`CONFIG_TEXT_ANNOTATION` of the v1 object, and converting
    back returns it (unless a v1 client changed ``config`` since). A v1alpha1 reader
    never sees that annotation.
    """
    if to_version not in (V1, V1ALPHA1):
        raise ValueError(f"cannot convert ServiceMeshExtension to {to_version!r}")
    from_version = document.get("apiVersion")
    converted = dict(document)
    converted["apiVersion"] = to_version
    if from_version == to_version:
        return converted
    spec = document.get("spec")
    spec = dict(spec) if isinstance(spec, Mapping) else None
    config = spec.get("config") if spec is not None else None
    annotations = _annotations(document)
    kept = annotations.pop(CONFIG_TEXT_ANNOTATION, None)
    if spec is not None and to_version == V1 and isinstance(config, str):
        if _needs_keeping(config):
            annotations[CONFIG_TEXT_ANNOTATION] = config
        converted["spec"] = {**spec, "config": config_text_to_object(config)}
    elif spec is not None and to_version == V1ALPHA1 and isinstance(config, dict):
        text = kept_config_text(
            {CONFIG_TEXT_ANNOTATION: kept} if kept is not None else None, config
        )
        converted["spec"] = {
            **spec,
            "config": config_object_to_text(config) if text is None else text,
        }
    if kept is not None or CONFIG_TEXT_ANNOTATION in annotations:
        converted["metadata"] = _with_annotations(document, annotations)
    return converted


def _annotations(document: Mapping[str, Any]) -> dict[str, str]:
    meta = document.get("metadata")
    found = meta.get("annotations") if isinstance(meta, Mapping) else None
    return dict(found) if isinstance(found, Mapping) else {}


def _with_annotations(document: Mapping[str, Any], annotations: dict[str, str]) -> dict[str, Any]:
    meta = document.get("metadata")
    new_meta = dict(meta) if isinstance(meta, Mapping) else {}
    if annotations:
        new_meta["annotations"] = annotations
    else:
        new_meta.pop("annotations", None)
    return new_meta


def status_to_dict(status: ExtensionStatus) -> dict[str, Any]:
    """The status as written to the API server (camelCase, empty fields left out)."""
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)
