"""Istio's WasmPlugin (extensions.istio.io/v1alpha1), the successor API of ServiceMeshExtension.

meshext accepts it beside ServiceMeshExtension and places both in one filter chain;
see :mod:`meshext.mesh.extension` for how its four phases map onto Maistra's six.

Every field of Istio's schema is known here (a test compares with Istio's CRD), so a
misspelt field is an error rather than a silently ignored one. What each means:

- ``selector`` *or* ``targetRefs`` (never both): labels of the workloads, or the
  Gateway API ``Gateway`` (its proxies carry the label
  ``gateway.networking.k8s.io/gateway-name``) or ``Service`` the plugin attaches to, in
  the plugin's own namespace. Istio applies ``Service`` targets on waypoint proxies only;
  meshext runs none, so such a plugin is accepted and reported as applying nowhere.
- ``match``: traffic selectors (direction and ports); traffic matching any runs the plugin.
- ``type``: ``HTTP`` (default) or ``NETWORK`` (an L4 filter seeing the raw bytes).
- ``url``: ``oci://`` (or no scheme), ``file://`` or ``http(s)://``; meshext fetches
  every module itself into its verified cache.
- ``verificationKey``: hidden in Istio's documentation and unimplemented there; refused
  when set, since a key that verifies nothing would mislead.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final, Literal

from pydantic import Field, field_validator, model_validator

from meshext.api.base import SpecModel
from meshext.api.kube_values import check_int32
from meshext.api.meta import ObjectMeta, ResourceKey
from meshext.images.reference import parse_image_reference, parse_module_url

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


class WorkloadMode(StrEnum):
    """Traffic direction: ``CLIENT`` is outbound, ``SERVER`` inbound."""

    UNDEFINED = "UNDEFINED"
    CLIENT = "CLIENT"
    SERVER = "SERVER"
    CLIENT_AND_SERVER = "CLIENT_AND_SERVER"


class PluginType(StrEnum):
    UNSPECIFIED = "UNSPECIFIED_PLUGIN_TYPE"
    HTTP = "HTTP"
    NETWORK = "NETWORK"


class PortSelector(SpecModel):
    number: int = Field(ge=1, le=65535)


class TrafficSelector(SpecModel):
    mode: WorkloadMode = WorkloadMode.UNDEFINED
    ports: tuple[PortSelector, ...] = ()


GATEWAY_API_GROUP = "gateway.networking.k8s.io"
TARGET_KINDS: Final = {
    "Gateway": (GATEWAY_API_GROUP,),
    "GatewayClass": (GATEWAY_API_GROUP,),
    "Service": ("", "core"),
    "ServiceEntry": ("networking.istio.io",),
}


class PolicyTargetReference(SpecModel):
    group: str = ""
    kind: str
    name: str = Field(min_length=1)
    namespace: str = ""

    @model_validator(mode="after")
    def _kind_is_supported(self) -> PolicyTargetReference:
        groups = TARGET_KINDS.get(self.kind)
        if groups is None:
            raise ValueError(
                f"kind {self.kind!r} is not a target Istio supports; expected one of "
                + ", ".join(TARGET_KINDS)
            )
        if self.group not in groups:
            raise ValueError(
                f"a {self.kind} target has group {' or '.join(repr(g) for g in groups)}, "
                f"got {self.group!r}"
            )
        return self


class EnvValue(SpecModel):
    name: str
    value_from: Literal["INLINE", "HOST"] = "INLINE"
    value: str = ""

    @model_validator(mode="after")
    def _host_has_no_value(self) -> EnvValue:
        if self.value_from == "HOST" and self.value:
            raise ValueError("value may only be set when valueFrom is INLINE")
        return self


class VmConfig(SpecModel):
    env: tuple[EnvValue, ...] = ()


class WasmPluginSpec(SpecModel):
    selector: LabelSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: tuple[PolicyTargetReference, ...] = Field(default=(), max_length=16)
    url: str = Field(min_length=1)
    sha256: str | None = None
    image_pull_policy: Literal["UNSPECIFIED_POLICY", "IfNotPresent", "Always"] = (
        "UNSPECIFIED_POLICY"
    )
    image_pull_secret: str | None = Field(default=None, min_length=1, max_length=253)
    verification_key: str | None = None
    plugin_config: dict[str, Any] | None = None
    plugin_name: str | None = Field(default=None, min_length=1, max_length=256)
    phase: PluginPhase = PluginPhase.UNSPECIFIED
    priority: int | None = None
    fail_strategy: FailStrategy = FailStrategy.FAIL_CLOSE
    vm_config: VmConfig | None = None
    match: tuple[TrafficSelector, ...] = ()
    type: PluginType = PluginType.UNSPECIFIED

    @field_validator("url")
    @classmethod
    def _url_is_supported(cls, value: str) -> str:
        image_url_to_reference(value)
        return value

    @field_validator("priority")
    @classmethod
    def _priority_is_int32(cls, value: int | None) -> int | None:
        """Istio's ``priority`` is an ``Int32Value``."""
        return None if value is None else check_int32(value, "priority")

    @field_validator("sha256")
    @classmethod
    def _sha256_is_hex(cls, value: str | None) -> str | None:
        if value == "":
            return None
        if value is not None and (
            len(value) != 64 or any(c not in "0123456789abcdef" for c in value)
        ):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return value

    @field_validator("verification_key")
    @classmethod
    def _no_verification_key(cls, value: str | None) -> str | None:
        if value:
            raise ValueError(
                "verificationKey is not implemented (by Istio either); "
                "pin the module with sha256 instead"
            )
        return None

    @model_validator(mode="after")
    def _selector_or_targets(self) -> WasmPluginSpec:
        if sum(bool(x) for x in (self.selector, self.target_ref, self.target_refs)) > 1:
            raise ValueError("only one of targetRefs or selector can be set")
        return self

    @property
    def targets(self) -> tuple[PolicyTargetReference, ...]:
        """``targetRefs``, or the older single ``targetRef``."""
        return self.target_refs or ((self.target_ref,) if self.target_ref else ())

    @property
    def plugin_type(self) -> PluginType:
        """``HTTP`` unless ``NETWORK`` was asked for (Istio's default)."""
        return PluginType.NETWORK if self.type is PluginType.NETWORK else PluginType.HTTP


class WasmPlugin(SpecModel):
    metadata: ObjectMeta
    spec: WasmPluginSpec

    @model_validator(mode="after")
    def _targets_in_own_namespace(self) -> WasmPlugin:
        for target in self.spec.targets:
            if target.namespace and target.namespace != self.metadata.namespace:
                raise ValueError(
                    f"spec.targetRefs: {target.kind} {target.namespace}/{target.name} is in "
                    f"another namespace; a WasmPlugin targets resources of its own namespace"
                )
        return self

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(KIND, self.metadata.namespace, self.metadata.name)


def image_url_to_reference(url: str) -> str:
    """The meshext image reference for a WasmPlugin ``url``.

    ``oci://`` (or no scheme) is a registry image; a missing tag means ``latest``, as
    in Istio. ``file://`` is a module on the proxy's host. ``http(s)://`` stays as it
    is: meshext downloads it into its verified cache (:mod:`meshext.images.http_module`)
    and serves it from there like every other module.
    """
    if url.startswith(("http://", "https://")):
        return parse_module_url(url)
    if url.startswith("file://"):
        return f"file:{url.removeprefix('file://')}"
    text = url.removeprefix("oci://")
    try:
        parse_image_reference(text)
    except ValueError:
        text = f"{text}:latest"
        parse_image_reference(text)
    return text
