"""Errors of Envoy resource generation.

``EnvoyConfigError``
 ├── ``NodeMetadataError``   a proxy's node metadata is missing a key or holds a bad value
 └── ``GenerationError``     a plan cannot be turned into Envoy resources for a proxy

Both are permanent (``retryable`` is ``False``): the same inputs fail the same way
until the proxy's bootstrap or meshext's configuration changes.
"""

from __future__ import annotations

from meshext.errors import MeshextError


class EnvoyConfigError(MeshextError):
    """Envoy configuration cannot be produced from the inputs given."""

    retryable: bool = False


class NodeMetadataError(EnvoyConfigError):
    """The ``Node`` a proxy sent lacks a metadata key meshext needs, or holds a bad value.

    ``node_id`` and ``key`` name the proxy and the metadata key (``key`` is ``None``
    when the problem is the node id itself).
    """

    def __init__(self, node_id: str, key: str | None, problem: str) -> None:
        where = f"node {node_id!r}" if node_id else "node (empty id)"
        what = f"metadata {key}: " if key else ""
        super().__init__(f"{where}: {what}{problem}")
        self.node_id = node_id
        self.key = key
        self.problem = problem


class GenerationError(EnvoyConfigError):
    """A workload plan cannot be turned into Envoy resources for a proxy."""
