"""Small resources, snapshots and requests for the protocol tests (no Envoy involved).

Resources are named ``a``, ``b``, ...; their content is a short string, so two
resources with the same name and content have the same version.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import extension_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import wrappers_pb2

from meshext.xds import types
from meshext.xds.snapshot import Snapshot, pack

NODE = "node-1"


def resource(type_url: str, name: str, content: str) -> Any:
    """A message of ``type_url`` named ``name`` whose content is ``content``."""
    if type_url == types.LISTENER:
        return listener_pb2.Listener(name=name, stat_prefix=content)
    if type_url == types.CLUSTER:
        return cluster_pb2.Cluster(name=name, alt_stat_name=content)
    if type_url == types.EXTENSION_CONFIG:
        return extension_pb2.TypedExtensionConfig(
            name=name, typed_config=pack(wrappers_pb2.StringValue(value=content))
        )
    raise ValueError(type_url)


def snapshot(spec: Mapping[str, Mapping[str, str]]) -> Snapshot:
    """Snapshot from type URL → name → content."""
    return Snapshot.build(
        {
            type_url: [
                resource(type_url, name, content) for name, content in sorted(by_name.items())
            ]
            for type_url, by_name in spec.items()
        }
    )


def sotw_request(
    type_url: str,
    names: Iterable[str] = (),
    *,
    version: str = "",
    nonce: str = "",
    error: str | None = None,
    node: str | None = NODE,
) -> Any:
    request = discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=list(names), version_info=version, response_nonce=nonce
    )
    if node is not None:
        request.node.id = node
    if error is not None:
        request.error_detail.message = error
    return request


def delta_request(
    type_url: str,
    subscribe: Iterable[str] = (),
    unsubscribe: Iterable[str] = (),
    *,
    initial: Mapping[str, str] | None = None,
    nonce: str = "",
    error: str | None = None,
    node: str | None = NODE,
) -> Any:
    request = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=list(subscribe),
        resource_names_unsubscribe=list(unsubscribe),
        initial_resource_versions=dict(initial or {}),
        response_nonce=nonce,
    )
    if node is not None:
        request.node.id = node
    if error is not None:
        request.error_detail.message = error
    return request


def contents(message: Any) -> dict[str, str]:
    """Name → content of the resources in a DiscoveryResponse or DeltaDiscoveryResponse."""
    delta = message.DESCRIPTOR.name == "DeltaDiscoveryResponse"
    found: dict[str, str] = {}
    for entry in message.resources:
        found.update(_decode(entry.resource if delta else entry))
    return found


def _decode(packed: Any) -> dict[str, str]:
    if packed.type_url == types.LISTENER:
        listener = listener_pb2.Listener()
        packed.Unpack(listener)
        return {listener.name: listener.stat_prefix}
    if packed.type_url == types.CLUSTER:
        cluster = cluster_pb2.Cluster()
        packed.Unpack(cluster)
        return {cluster.name: cluster.alt_stat_name}
    config = extension_pb2.TypedExtensionConfig()
    packed.Unpack(config)
    value = wrappers_pb2.StringValue()
    config.typed_config.Unpack(value)
    return {config.name: value.value}
