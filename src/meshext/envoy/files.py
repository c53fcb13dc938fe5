"""xDS from files: the same resources, delivered by files Envoy watches instead of ADS.

A proxy whose bootstrap points ``lds_config``/``cds_config`` at files (see
:func:`~meshext.envoy.bootstrap.sidecar_bootstrap` with a :class:`ConfigDirectory`),
and whose extension filters point their ``config_discovery`` at files (see
:func:`~meshext.envoy.sidecar.proxy_resources` with ``config_source``), runs without
an xDS server. Envoy reloads a file when a new one is moved over it, exactly as if
the server had pushed it; :func:`config_files` renders the contents and the caller
writes each to a temporary name and renames it into place.

Layout under the directory::

    listeners.json                   DiscoveryResponse of every Listener
    clusters.json                    DiscoveryResponse of every Cluster
    extensions/<ECDS name>.json      DiscoveryResponse of one TypedExtensionConfig
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Final

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

from meshext.envoy.resources import (
    CLUSTER_TYPE_URL,
    EXTENSION_CONFIG_TYPE_URL,
    LISTENER_TYPE_URL,
    EnvoyResources,
    pack,
)

LISTENERS_FILE: Final = "listeners.json"
CLUSTERS_FILE: Final = "clusters.json"
EXTENSIONS_DIR: Final = "extensions"


@dataclass(frozen=True)
class ConfigDirectory:
    """A directory of xDS files for one proxy."""

    path: str

    @property
    def listeners_path(self) -> str:
        return str(PurePath(self.path, LISTENERS_FILE))

    @property
    def clusters_path(self) -> str:
        return str(PurePath(self.path, CLUSTERS_FILE))

    def extension_config_path(self, name: str) -> str:
        """The file holding the ECDS resource ``name``."""
        return str(PurePath(self.path, EXTENSIONS_DIR, f"{name}.json"))


def discovery_response(type_url: str, resources: Iterable[Any]) -> Any:
    """A ``DiscoveryResponse`` of ``resources``, versioned by their content."""
    packed = [pack(resource) for resource in resources]
    digest = hashlib.sha256()
    for item in packed:
        digest.update(item.SerializeToString(deterministic=True))
    return discovery_pb2.DiscoveryResponse(
        version_info=digest.hexdigest()[:16], type_url=type_url, resources=packed
    )


def to_json(message: Any) -> str:
    """Deterministic JSON text of a protobuf message (sorted keys, proto field names)."""
    text: str = json_format.MessageToJson(
        message, preserving_proto_field_name=True, sort_keys=True, indent=1
    )
    return text + "\n"


def config_files(resources: EnvoyResources, directory: ConfigDirectory) -> dict[str, str]:
    """Every file of ``directory`` for ``resources``: path → JSON text."""
    files = {
        directory.listeners_path: to_json(
            discovery_response(LISTENER_TYPE_URL, resources.listeners)
        ),
        directory.clusters_path: to_json(discovery_response(CLUSTER_TYPE_URL, resources.clusters)),
    }
    for name, config in resources.extension_configs.items():
        files[directory.extension_config_path(name)] = to_json(
            discovery_response(EXTENSION_CONFIG_TYPE_URL, [config])
        )
    return files
