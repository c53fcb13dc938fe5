"""Load a folder of Kubernetes-style YAML manifests (multi-document, nested folders).

Kinds meshext does not own are skipped. A broken document of an owned kind, or a
second resource with the same kind, namespace and name, is reported and the rest
still load, so one typo never hides every other extension.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshext.api.decode import DecodeError, Resource, ResourceError, decode
from meshext.api.extension import ServiceMeshExtension
from meshext.api.meta import ResourceKey, SourceLocation
from meshext.api.wasmplugin import WasmPlugin
from meshext.images.reference import parse_image_reference

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class LoadedResource:
    resource: Resource
    location: SourceLocation

    @property
    def key(self) -> ResourceKey:
        return self.resource.key


@dataclass
class LoadResult:
    resources: list[LoadedResource] = field(default_factory=list)
    errors: list[ResourceError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def manifest_files(root: Path) -> list[Path]:
    """Every YAML file below ``root`` (or ``root`` itself), in a stable order."""
    if root.is_file():
        return [root]
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix in YAML_SUFFIXES and p.is_file() and not _hidden(p.relative_to(root))
    )


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def load_folder(root: Path) -> LoadResult:
    """Load every owned resource below ``root``; see the module docstring for the rules."""
    result = LoadResult()
    if not root.exists():
        result.errors.append(ResourceError(f"{root}: no such file or folder"))
        return result
    seen: dict[ResourceKey, SourceLocation] = {}
    for path in manifest_files(root):
        for location, document in _documents(path, result.errors):
            try:
                resource = decode(document, location)
            except DecodeError as exc:
                result.errors.extend(exc.errors)
                continue
            if resource is None:
                continue
            resource = _with_local_images_resolved(resource, path.parent)
            first = seen.get(resource.key)
            if first is not None:
                result.errors.append(
                    ResourceError(
                        f"duplicate: {resource.key} is already defined at {first}",
                        field="metadata.name",
                        key=resource.key,
                        location=location,
                    )
                )
                continue
            seen[resource.key] = location
            result.resources.append(LoadedResource(resource, location))
    return result


def _documents(path: Path, errors: list[ResourceError]) -> Iterator[tuple[SourceLocation, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        errors.append(ResourceError(f"cannot read: {exc}", location=SourceLocation(str(path))))
        return
    index = 0
    try:
        for index, document in enumerate(yaml.safe_load_all(text), start=1):
            if document is not None:
                yield SourceLocation(str(path), index), document
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        errors.append(
            ResourceError(
                f"YAML syntax error{where}: {problem}; later documents in this file were not read",
                location=SourceLocation(str(path), index + 1),
            )
        )


def _with_local_images_resolved(resource: Resource, base: Path) -> Resource:
    """Relative ``file:`` and ``oci-layout:`` images are relative to the manifest's folder."""
    if isinstance(resource, ServiceMeshExtension):
        ref = parse_image_reference(resource.spec.image)
        if ref.is_local:
            spec = resource.spec.model_copy(update={"image": str(ref.with_base(base))})
            return resource.model_copy(update={"spec": spec})
    if isinstance(resource, WasmPlugin) and resource.spec.url.startswith("file://"):
        path = Path(resource.spec.url.removeprefix("file://"))
        if not path.is_absolute():
            url = f"file://{(base / path).resolve()}"
            return resource.model_copy(
                update={"spec": resource.spec.model_copy(update={"url": url})}
            )
    return resource
