"""ServiceMeshExtension, maistra.io/v1alpha1 and maistra.io/v1, and the conversion between them.

v1 is the canonical form inside meshext (as it is Kubernetes' storage version). A
v1alpha1 document is converted on load; its config string is kept as well, so the
module receives exactly the text the user wrote.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, field_validator

from meshext.api.base import SpecModel
from meshext.api.kube_values import check_int32, check_labels
from meshext.api.meta import ObjectMeta, ResourceKey
from meshext.api.phase import Phase
from meshext.images.reference import parse_image_reference

GROUP = "maistra.io"
KIND = "ServiceMeshExtension"
V1ALPHA1 = f"{GROUP}/v1alpha1"
V1 = f"{GROUP}/v1"
RAW_V1ALPHA1_CONFIG = "raw_v1alpha1_config"

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
        parse_image_reference(value)
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

        v1alpha1: the string verbatim. v1: the object as compact JSON with sorted keys
        (deterministic), except that an object holding only ``raw_v1alpha1_config``
        hands over that string.
        """
        if self.config_text is not None:
            return self.config_text
        return config_object_to_text(self.spec.config)


def config_text_to_object(text: str | None) -> dict[str, Any] | None:
    """v1alpha1 → v1: parse the string as a JSON object, else wrap it in ``raw_v1alpha1_config``."""
    if text is None:
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return {RAW_V1ALPHA1_CONFIG: text}
    if isinstance(parsed, dict):
        return parsed
    return {RAW_V1ALPHA1_CONFIG: text}


def config_object_to_text(config: dict[str, Any] | None) -> str:
    """v1 → v1alpha1: the ``raw_v1alpha1_config`` string if present, else the object as JSON."""
    if config is None:
        return ""
    raw = config.get(RAW_V1ALPHA1_CONFIG)
    if isinstance(raw, str):
        return raw
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def spec_v1alpha1_to_v1(spec: ExtensionSpecV1Alpha1) -> ExtensionSpecV1:
    fields = spec.model_dump(exclude={"config"})
    return ExtensionSpecV1.model_validate({**fields, "config": config_text_to_object(spec.config)})


def spec_v1_to_v1alpha1(spec: ExtensionSpecV1) -> ExtensionSpecV1Alpha1:
    fields = spec.model_dump(exclude={"config"})
    text = None if spec.config is None else config_object_to_text(spec.config)
    return ExtensionSpecV1Alpha1.model_validate({**fields, "config": text})


def convert_document(document: dict[str, Any], to_version: str) -> dict[str, Any]:
    """Convert a whole ServiceMeshExtension document (as the API server sends it) between
    versions; metadata and status pass through, only ``spec.config`` changes shape."""
    if to_version not in (V1, V1ALPHA1):
        raise ValueError(f"cannot convert ServiceMeshExtension to {to_version!r}")
    from_version = document.get("apiVersion")
    converted = dict(document)
    converted["apiVersion"] = to_version
    spec = document.get("spec")
    if from_version == to_version or not isinstance(spec, dict) or "config" not in spec:
        return converted
    new_spec = dict(spec)
    if to_version == V1:
        config = spec["config"]
        new_spec["config"] = config_text_to_object(config) if isinstance(config, str) else config
    else:
        config = spec["config"]
        new_spec["config"] = config_object_to_text(config) if isinstance(config, dict) else config
    converted["spec"] = new_spec
    return converted


def status_to_dict(status: ExtensionStatus) -> dict[str, Any]:
    """The status as written to the API server (camelCase, empty fields left out)."""
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)
