"""``manifest.yaml``: the metadata file at the root of a Maistra extension image.

It names the module inside the image and gives default phase and priority for
extensions that do not set their own, and the root id the module registers its root
context under (``rootId``) for extensions that do not set one.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import yaml
from pydantic import Field, ValidationError, field_validator

from meshext.api import safe_yaml
from meshext.api.base import SpecModel
from meshext.api.kube_values import INT32_MAX, INT32_MIN
from meshext.api.phase import Phase
from meshext.errors import MeshextError

MANIFEST_PATH = "manifest.yaml"


class ManifestError(MeshextError):
    """``manifest.yaml`` is missing, unreadable, or invalid."""


class ExtensionManifest(SpecModel):
    schema_version: int = Field(alias="schemaVersion")
    name: str
    description: str = ""
    version: str = ""
    phase: Phase | None = None
    priority: int | None = Field(default=None, ge=INT32_MIN, le=INT32_MAX)
    root_id: str | None = None
    module: str

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, value: int) -> int:
        if value != 1:
            raise ValueError(f"unsupported schemaVersion {value}; meshext reads schemaVersion 1")
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int | float) else value

    @field_validator("phase", mode="before")
    @classmethod
    def _phase_is_known(cls, value: object) -> object:
        return Phase.parse(value) if isinstance(value, str) else value

    @field_validator("module")
    @classmethod
    def _module_is_inside_image(cls, value: str) -> str:
        path = PurePosixPath(value)
        if not value or ".." in path.parts or not str(path).strip("/"):
            raise ValueError(f"module {value!r} must be a file path inside the image")
        return value

    @property
    def module_path(self) -> str:
        """The module's path relative to the image root, without a leading ``/``."""
        return str(PurePosixPath(self.module)).lstrip("/")


_MANIFEST_YAML_LIMITS = safe_yaml.YamlLimits(
    max_bytes=1 << 20, max_documents=1, max_nodes=10_000, max_file_nodes=10_000
)


def parse_manifest(data: bytes, source: str = MANIFEST_PATH) -> ExtensionManifest:
    """Parse and validate ``manifest.yaml``; errors name ``source`` and the field."""
    try:
        document = safe_yaml.load_one(data, _MANIFEST_YAML_LIMITS)
    except safe_yaml.UnsafeYamlError as exc:
        raise ManifestError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise ManifestError(f"{source}: expected a mapping at the top level")
    try:
        return ExtensionManifest.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ManifestError(f"{source}: {problems}") from exc


def render_manifest(manifest: ExtensionManifest) -> bytes:
    """The YAML text of ``manifest`` as written into images meshext builds."""
    document = manifest.model_dump(mode="json", by_alias=True, exclude_none=True)
    for optional in ("description", "version"):
        if document.get(optional) == "":
            del document[optional]  # an empty field says nothing; leave it out
    return yaml.safe_dump(document, sort_keys=False).encode()
