"""Envoy resources built by hand for the xDS tests.

A listener with an HTTP connection manager whose only route answers directly
(``direct_response``), HTTP filters whose config comes over ECDS (header_mutation
filters adding a response header), a static cluster, and an extension config Envoy
rejects (a config of a type the filter does not accept).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import extension_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from meshext.xds import types
from meshext.xds.snapshot import Snapshot, pack

HEADER_MUTATION = types.message_type_url(header_mutation_pb2.HeaderMutation())


def header_filter(name: str, header: str, value: str) -> Any:
    """ECDS resource ``name``: a header_mutation filter adding ``header: value`` to responses."""
    mutation = header_mutation_pb2.HeaderMutation()
    append = mutation.mutations.response_mutations.add().append
    append.header.key = header
    append.header.value = value
    return extension_pb2.TypedExtensionConfig(name=name, typed_config=pack(mutation))


def rejected_filter(name: str) -> Any:
    """ECDS resource ``name`` that Envoy NACKs: a router config where header_mutation is due."""
    return extension_pb2.TypedExtensionConfig(name=name, typed_config=pack(router_pb2.Router()))


def listener(name: str, port: int, filters: Iterable[str], body: str = "ok") -> Any:
    """A listener on 127.0.0.1:``port`` running the ECDS ``filters`` then answering ``body``."""
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=name)
    route_config = hcm.route_config
    route_config.name = name
    virtual_host = route_config.virtual_hosts.add(name=name, domains=["*"])
    route = virtual_host.routes.add()
    route.match.prefix = "/"
    route.direct_response.status = 200
    route.direct_response.body.inline_string = body
    for filter_name in filters:
        http_filter = hcm.http_filters.add(name=filter_name)
        http_filter.config_discovery.config_source.ads.SetInParent()
        http_filter.config_discovery.type_urls.append(HEADER_MUTATION)
    hcm.http_filters.add(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))
    result = listener_pb2.Listener(name=name)
    result.address.socket_address.address = "127.0.0.1"
    result.address.socket_address.port_value = port
    result.filter_chains.add().filters.add(
        name="envoy.filters.network.http_connection_manager", typed_config=pack(hcm)
    )
    return result


def cluster(name: str) -> Any:
    """A static cluster with one (unused) endpoint."""
    result = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC)
    result.connect_timeout.seconds = 1
    result.load_assignment.cluster_name = name
    endpoint = result.load_assignment.endpoints.add().lb_endpoints.add().endpoint
    endpoint.address.socket_address.address = "127.0.0.1"
    endpoint.address.socket_address.port_value = 9
    return result


def snapshot(port: int, headers: Mapping[str, str], *, rejected: Iterable[str] = ()) -> Snapshot:
    """Listener ``web`` on ``port`` with one ECDS filter per ``headers`` entry.

    Filter ``ext-<h>`` adds response header ``x-<h>`` with the given value; the names in
    ``rejected`` get a config Envoy refuses instead.
    """
    refused = set(rejected)
    extensions = [
        rejected_filter(f"ext-{key}")
        if key in refused
        else header_filter(f"ext-{key}", f"x-{key}", value)
        for key, value in sorted(headers.items())
    ]
    return Snapshot.build(
        {
            types.CLUSTER: [cluster("backend")],
            types.LISTENER: [listener("web", port, [f"ext-{key}" for key in sorted(headers)])],
            types.EXTENSION_CONFIG: extensions,
        }
    )
