"""Istio's WasmPlugin (extensions.istio.io/v1alpha1), the successor API of ServiceMeshExtension.

meshext accepts it beside ServiceMeshExtension and places both in one filter chain;
see :mod:`meshext.mesh.extension` for how its four phases map onto Maistra's six.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, field_validator

from meshext.api.base import SpecModel
from meshext.api.meta import ObjectMeta, ResourceKey
from meshext.images.reference import parse_image_reference

KIND = "WasmPlugin"
API_VERSION = "extensions.istio.io/v1alpha1"


class PluginPhase(StrEnum):
    UNSPECIFIED = "UNSPECIFIED_PHASE"
    AUTHN = "AUTHN"
    AUTHZ = "AUTHZ"
    STATS = "STATS"


class FailStrategy(StrEnum):
    FAIL_CLOSE = "FAIL_CLOSE"
    FAIL_OPEN = "FAIL_OPEN"
    FAIL_RELOAD = "FAIL_RELOAD"


class LabelSelector(SpecModel):
    match_labels: dict[str, str] = Field(default_factory=dict)


class EnvValue(SpecModel):
    name: str
    value_from: Literal["INLINE", "HOST"] = "INLINE"
    value: str = ""


class VmConfig(SpecModel):
    env: tuple[EnvValue, ...] = ()


class WasmPluginSpec(SpecModel):
    selector: LabelSelector | None = None
    url: str
    sha256: str | None = None
    image_pull_policy: Literal["UNSPECIFIED_POLICY", "IfNotPresent", "Always"] = (
        "UNSPECIFIED_POLICY"
    )
    image_pull_secret: str | None = None
    plugin_config: dict[str, Any] | None = None
    plugin_name: str | None = None
    phase: PluginPhase = PluginPhase.UNSPECIFIED
    priority: int | None = None
    fail_strategy: FailStrategy = FailStrategy.FAIL_CLOSE
    vm_config: VmConfig | None = None
    type: Literal["HTTP", "UNSPECIFIED_PLUGIN_TYPE"] = "UNSPECIFIED_PLUGIN_TYPE"

    @field_validator("url")
    @classmethod
    def _url_is_supported(cls, value: str) -> str:
        image_url_to_reference(value)
        return value

    @field_validator("sha256")
    @classmethod
    def _sha256_is_hex(cls, value: str | None) -> str | None:
        if value is not None and (
            len(value) != 64 or any(c not in "0123456789abcdef" for c in value)
        ):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return value


class WasmPlugin(SpecModel):
    metadata: ObjectMeta
    spec: WasmPluginSpec

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(KIND, self.metadata.namespace, self.metadata.name)


def image_url_to_reference(url: str) -> str:
    """The meshext image reference for a WasmPlugin ``url``.

    ``oci://`` (or no scheme) is a registry image; a missing tag means ``latest``, as
    in Istio. ``file://`` is a module on the proxy's host. Remote ``http(s)://`` modules
    are refused: meshext serves every module itself, verified, from its own cache.
    """
    if url.startswith(("http://", "https://")):
        raise ValueError(
            "http(s) module URLs are not supported; publish the module as an OCI image"
        )
    if url.startswith("file://"):
        return f"file:{url.removeprefix('file://')}"
    text = url.removeprefix("oci://")
    try:
        parse_image_reference(text)
    except ValueError:
        text = f"{text}:latest"
        parse_image_reference(text)
    return text
