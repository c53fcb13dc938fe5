"""ServiceMeshControlPlane (maistra.io/v2) and ServiceMeshMemberRoll (maistra.io/v1).

meshext reads only a few fields of each; the rest of a control plane's spec belongs to
other tools and is kept untouched.
"""

from __future__ import annotations

from pydantic import Field

from meshext.api.base import LenientModel, SpecModel
from meshext.api.meta import ObjectMeta, ResourceKey

SMCP_KIND = "ServiceMeshControlPlane"
SMCP_API_VERSION = "maistra.io/v2"
SMMR_KIND = "ServiceMeshMemberRoll"
SMMR_API_VERSION = "maistra.io/v1"
MEMBER_ROLL_NAME = "default"


class WasmExtensionsConfig(LenientModel):
    enabled: bool = False
    signature_policy: str | None = None
    """``enforce``, ``warn`` or ``off`` for the images of this mesh's extensions; checked
    by :mod:`meshext.images.trust_scopes` so a typo is reported, not a mesh dropped."""


class TechPreview(LenientModel):
    wasm_extensions: WasmExtensionsConfig = Field(default_factory=WasmExtensionsConfig)


class ControlPlaneSpec(LenientModel):
    tech_preview: TechPreview = Field(default_factory=TechPreview)


class ServiceMeshControlPlane(SpecModel):
    """A control plane; its namespace is the control-plane namespace of its mesh."""

    metadata: ObjectMeta
    spec: ControlPlaneSpec = Field(default_factory=ControlPlaneSpec)

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(SMCP_KIND, self.metadata.namespace, self.metadata.name)

    @property
    def extensions_enabled(self) -> bool:
        """``spec.techPreview.wasmExtensions.enabled``; absent means disabled."""
        return self.spec.tech_preview.wasm_extensions.enabled

    @property
    def signature_policy(self) -> str | None:
        """``spec.techPreview.wasmExtensions.signaturePolicy`` as written; absent is ``None``."""
        return self.spec.tech_preview.wasm_extensions.signature_policy


class MemberRollSpec(SpecModel):
    members: tuple[str, ...] = ()


class ServiceMeshMemberRoll(SpecModel):
    metadata: ObjectMeta
    spec: MemberRollSpec = Field(default_factory=MemberRollSpec)

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(SMMR_KIND, self.metadata.namespace, self.metadata.name)
