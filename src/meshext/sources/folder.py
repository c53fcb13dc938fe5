"""Load a folder of Kubernetes-style YAML manifests (multi-document, nested folders).

Kinds meshext does not own are skipped. A broken document of an owned kind, or a
second resource with the same kind, namespace and name, is reported and the rest
still load, so one typo never hides every other extension. Files are read with the
bounds of :mod:`meshext.api.safe_yaml` and :mod:`meshext.sources.manifest_scan`;
entries named like manifests that are not regular files are reported.

Every load reads every file, but with :class:`DecodedFiles` only the files whose
bytes changed since the last load are parsed and decoded again: an edit of one
manifest in a folder of 500 costs that one file's parsing, not 500 (parsing with the
bounded YAML loader is most of a load).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshext.api import safe_yaml
from meshext.api.decode import DecodeError, Resource, ResourceError, decode
from meshext.api.extension import ServiceMeshExtension
from meshext.api.meta import ResourceKey, SourceLocation
from meshext.api.wasmplugin import WasmPlugin
from meshext.images.reference import parse_image_reference
from meshext.sources.manifest_scan import (
    YAML_SUFFIXES,
    UnreadableManifest,
    read_manifest,
    scan_manifests,
)

__all__ = [
    "YAML_SUFFIXES",
    "DecodedFiles",
    "LoadResult",
    "LoadedResource",
    "load_folder",
    "manifest_files",
]


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


_Entry = tuple[Resource, SourceLocation] | ResourceError
"""A resource decoded from one document of a file (local images not yet resolved), or
an error of the file or of one of its documents."""


class DecodedFiles:
    """What each manifest's bytes decoded to, kept from one load to the next.

    An entry is used only for the very bytes it was decoded from (and the same
    bounds); only the files of the latest load are kept. Not for concurrent loads.
    """

    def __init__(self) -> None:
        self._files: dict[Path, tuple[bytes, safe_yaml.YamlLimits, tuple[_Entry, ...]]] = {}

    def get(
        self, path: Path, data: bytes, limits: safe_yaml.YamlLimits
    ) -> tuple[_Entry, ...] | None:
        kept = self._files.get(path)
        if kept is None or kept[1] != limits or kept[0] != data:
            return None
        return kept[2]

    def put(
        self, path: Path, data: bytes, limits: safe_yaml.YamlLimits, entries: tuple[_Entry, ...]
    ) -> None:
        self._files[path] = (data, limits, entries)

    def keep_only(self, paths: Iterable[Path]) -> None:
        wanted = set(paths)
        for path in [path for path in self._files if path not in wanted]:
            del self._files[path]

    def __len__(self) -> int:
        return len(self._files)


def manifest_files(root: Path) -> list[Path]:
    """Every regular YAML file below ``root`` (or ``root`` itself), in a stable order."""
    return list(scan_manifests(root).files)


def load_folder(
    root: Path,
    limits: safe_yaml.YamlLimits = safe_yaml.DEFAULT_LIMITS,
    *,
    decoded: DecodedFiles | None = None,
) -> LoadResult:
    """Load every owned resource below ``root``; see the module docstring for the rules.

    ``decoded``: what earlier loads decoded, reused for files whose bytes are unchanged
    (and updated with this load's files)."""
    result = LoadResult()
    if not root.exists():
        result.errors.append(ResourceError(f"{root}: no such file or folder"))
        return result
    seen: dict[ResourceKey, SourceLocation] = {}
    scan = scan_manifests(root)
    for problem in scan.problems:
        result.errors.append(
            ResourceError(problem.message, location=SourceLocation(str(problem.path)))
        )
    for path in scan.files:
        for entry in _file_entries(path, limits, decoded):
            if isinstance(entry, ResourceError):
                result.errors.append(entry)
                continue
            resource, location = entry
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
    if decoded is not None:
        decoded.keep_only(scan.files)
    return result


def _file_entries(
    path: Path, limits: safe_yaml.YamlLimits, decoded: DecodedFiles | None
) -> tuple[_Entry, ...]:
    """What ``path`` holds, decoded again only when its bytes are new to ``decoded``."""
    try:
        data = read_manifest(path, limits.max_bytes)
    except UnreadableManifest as exc:
        return (ResourceError(str(exc), location=SourceLocation(str(path))),)
    if decoded is not None:
        kept = decoded.get(path, data, limits)
        if kept is not None:
            return kept
    entries = tuple(_decode_file(path, data, limits))
    if decoded is not None:
        decoded.put(path, data, limits, entries)
    return entries


def _decode_file(path: Path, data: bytes, limits: safe_yaml.YamlLimits) -> Iterator[_Entry]:
    errors: list[ResourceError] = []
    for location, document in _documents(path, data, errors, limits):
        yield from errors
        errors.clear()
        try:
            resource = decode(document, location)
        except DecodeError as exc:
            yield from exc.errors
            continue
        except (RecursionError, MemoryError, ValueError, TypeError) as exc:
            # the bounds above should leave nothing for these; if one still comes,
            # it is this document's error, not the end of the load
            yield ResourceError(f"cannot be decoded: {type(exc).__name__}", location=location)
            continue
        if resource is not None:
            yield resource, location
    yield from errors


def _documents(
    path: Path, data: bytes, errors: list[ResourceError], limits: safe_yaml.YamlLimits
) -> Iterator[tuple[SourceLocation, Any]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        errors.append(
            ResourceError(
                f"not UTF-8 text (byte {exc.start}); not read", location=SourceLocation(str(path))
            )
        )
        return
    try:
        for index, document in enumerate(safe_yaml.load_all(text, limits), start=1):
            if document is not None:
                yield SourceLocation(str(path), index), document
    except safe_yaml.UnsafeYamlError as exc:
        errors.append(
            ResourceError(
                f"{exc}; later documents in this file were not read",
                location=SourceLocation(str(path), exc.document),
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
