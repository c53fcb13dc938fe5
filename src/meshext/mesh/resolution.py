"""What the planner learns about an extension's image: its module, digests and defaults.

Resolution is done elsewhere (the image puller); the planner only reads its outcome,
keyed by extension, through a plain mapping, so planning stays a pure function.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from meshext.api.manifest import ExtensionManifest
from meshext.api.meta import ResourceKey
from meshext.mesh.extension import Extension


class ImageFormat(StrEnum):
    """How the module was packed in its image (see :mod:`meshext.images.formats`)."""

    MAISTRA = "maistra"
    ISTIO_COMPAT = "istio-compat"
    WASM_ARTIFACT = "wasm-artifact"
    CNCF_ARTIFACT = "cncf-wasm-artifact"
    LOCAL_FILE = "local-file"
    HTTP_MODULE = "http-module"
    """A plain ``.wasm`` downloaded from an ``http(s)://`` URL."""


@dataclass(frozen=True)
class ResolvedModule:
    """A verified module on local disk, ready to serve to proxies.

    ``sha256`` is the hash of the ``.wasm`` bytes (what Envoy checks);
    ``image_digest`` the manifest digest of the image it came from (Maistra's
    ``containerSha256``), ``None`` for a plain local file.
    """

    sha256: str
    path: str
    size: int
    image_digest: str | None
    image_format: ImageFormat
    manifest: ExtensionManifest | None = None
    abi_versions: tuple[str, ...] = ()
    signer: str | None = None
    """The trusted key whose signature was verified, when a signature policy is on."""


class ResolutionState(StrEnum):
    PENDING = "Pending"
    READY = "Ready"
    FAILED = "Failed"


@dataclass(frozen=True)
class Resolution:
    state: ResolutionState
    module: ResolvedModule | None = None
    message: str = ""
    retryable: bool = False
    keep_previous: bool = False
    """A failure that must not take away a module resolved (and accepted) before."""

    @classmethod
    def ready(cls, module: ResolvedModule) -> Resolution:
        return cls(ResolutionState.READY, module)

    @classmethod
    def failed(
        cls, message: str, *, retryable: bool = False, keep_previous: bool = False
    ) -> Resolution:
        return cls(
            ResolutionState.FAILED,
            message=message,
            retryable=retryable,
            keep_previous=keep_previous,
        )

    @classmethod
    def pending(cls, message: str = "image not resolved yet") -> Resolution:
        return cls(ResolutionState.PENDING, message=message)


PENDING = Resolution.pending()

Resolutions = Mapping[ResourceKey, Resolution]
"""The outcome of resolving each extension's image, by extension."""


class ModuleResolver(Protocol):
    """Resolves an extension's image to a module; implemented by the image puller."""

    async def resolve(self, extension: Extension) -> Resolution: ...

    def forget(self, key: ResourceKey) -> None:
        """The extension is gone: its module need not be kept for it any more."""
        ...


@runtime_checkable
class JudgingResolver(Protocol):
    """A resolver whose outcome depends on more than the extension's image and pull
    settings: on Kubernetes, the signature policy and keys of the extension's mesh
    and namespace (:mod:`meshext.kube.scoped_resolution`)."""

    def judged_by(self, extension: Extension) -> tuple[object, ...]:
        """What, besides the extension, its resolution is made under; the image is
        resolved again when this changes."""
        ...


class PullSecretStore(Protocol):
    """Looks up image pull secrets; only ever in the extension's own namespace."""

    async def get(self, namespace: str, name: str) -> bytes | None:
        """The ``.dockerconfigjson`` bytes of Secret ``namespace/name``, or ``None``."""
        ...
