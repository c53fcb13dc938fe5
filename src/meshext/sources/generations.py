"""Generations for resources read from a folder, where no API server keeps them.

An API server raises ``metadata.generation`` whenever a resource's spec changes, and
status reports it back as ``observedGeneration`` so a reader can tell whether status
is about the spec they wrote. A manifest in a folder usually carries no generation
(it reads as 1), so without help status would say 1 after every edit. This tracker
plays the API server's part for a folder source: a resource keeps its generation
while its spec stays the same, and gets the next one when the spec changes; metadata
and status edits do not count, as with Kubernetes. A generation written in the file
is taken as it is when first seen, and as a floor whenever it is edited. Generations live as long as the tracker (one ``serve``
process); a restarted server starts again from the files.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from meshext.api.decode import Resource
from meshext.api.meta import ResourceKey
from meshext.sources.folder import LoadedResource, LoadResult

__all__ = ["GenerationTracker"]


class GenerationTracker:
    """Stamps every loaded resource with a generation that advances on spec edits."""

    def __init__(self) -> None:
        self._seen: dict[ResourceKey, tuple[str, int, int]] = {}
        """key -> (spec digest, generation written in the file, generation given)"""

    def stamp(self, result: LoadResult) -> LoadResult:
        """``result`` with each resource's generation set; forgets removed resources."""
        seen: dict[ResourceKey, tuple[str, int, int]] = {}
        stamped: list[LoadedResource] = []
        for loaded in result.resources:
            resource = loaded.resource
            digest = _spec_digest(resource)
            declared = resource.metadata.generation
            previous = self._seen.get(loaded.key)
            if previous is None:
                generation = declared
            else:
                old_digest, old_declared, old_generation = previous
                changed = digest != old_digest
                floor = declared if declared != old_declared else 0
                generation = max(floor, old_generation + 1 if changed else old_generation)
            seen[loaded.key] = (digest, declared, generation)
            stamped.append(replace(loaded, resource=_with_generation(resource, generation)))
        self._seen = seen
        return LoadResult(resources=stamped, errors=list(result.errors))


def _spec_digest(resource: Resource) -> str:
    return hashlib.sha256(resource.spec.model_dump_json().encode()).hexdigest()


def _with_generation(resource: Resource, generation: int) -> Resource:
    if resource.metadata.generation == generation:
        return resource
    metadata = resource.metadata.model_copy(update={"generation": generation})
    return resource.model_copy(update={"metadata": metadata})
