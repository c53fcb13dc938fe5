"""The resources generated for one proxy, and how they go on the wire."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from meshext.xds import types as xds_types
from meshext.xds.snapshot import pack

__all__ = [
    "CLUSTER_TYPE_URL",
    "EXTENSION_CONFIG_TYPE_URL",
    "LISTENER_TYPE_URL",
    "EnvoyResources",
    "pack",
    "serialize",
]

# The xDS type URLs, defined once in meshext.xds.types.
LISTENER_TYPE_URL: Final = xds_types.LISTENER
CLUSTER_TYPE_URL: Final = xds_types.CLUSTER
EXTENSION_CONFIG_TYPE_URL: Final = xds_types.EXTENSION_CONFIG


@dataclass(frozen=True)
class EnvoyResources:
    """A proxy's listeners, clusters and extension configs (ECDS), as protobuf messages.

    Each collection is sorted by resource name, so iterating or serializing it gives the
    same result for the same inputs. The messages are owned by this object: copy one
    before changing it.
    """

    listeners: tuple[Any, ...]
    """``envoy.config.listener.v3.Listener`` messages."""
    clusters: tuple[Any, ...]
    """``envoy.config.cluster.v3.Cluster`` messages."""
    extension_configs: Mapping[str, Any]
    """``envoy.config.core.v3.TypedExtensionConfig`` messages by ECDS resource name."""

    def by_type(self) -> dict[str, dict[str, Any]]:
        """Every resource by type URL, then by name (what an xDS snapshot holds)."""
        return {
            CLUSTER_TYPE_URL: {c.name: c for c in self.clusters},
            EXTENSION_CONFIG_TYPE_URL: dict(self.extension_configs),
            LISTENER_TYPE_URL: {lst.name: lst for lst in self.listeners},
        }

    def serialized(self) -> dict[str, dict[str, bytes]]:
        """Every resource's deterministic wire bytes, by type URL and name."""
        return {
            type_url: {name: serialize(message) for name, message in resources.items()}
            for type_url, resources in self.by_type().items()
        }

    def digest(self) -> str:
        """A sha256 of every resource: equal digests mean nothing changed."""
        hasher = hashlib.sha256()
        for type_url, resources in sorted(self.serialized().items()):
            for name, data in sorted(resources.items()):
                for part in (type_url, name):
                    hasher.update(part.encode())
                    hasher.update(b"\0")
                hasher.update(len(data).to_bytes(8, "big"))
                hasher.update(data)
        return hasher.hexdigest()


def serialize(message: Any) -> bytes:
    """Deterministic wire bytes of a protobuf message (map entries sorted)."""
    data: bytes = message.SerializeToString(deterministic=True)
    return data
