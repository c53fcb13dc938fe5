"""istiod's inbound HTTP chain for a workload, made runnable by upstream Envoy.

istiod writes for istio-proxy and its agent, so three things stand between its
output and an upstream Envoy; this module handles each the way the agent or the
missing build would, and changes nothing else in the chain:

* istio-proxy's own filters (``istio.metadata_exchange``, ``istio.stats``,
  ``istio.alpn``) are not compiled into upstream Envoy: they are removed (they
  exchange peer metadata and record metrics; no extension depends on them);
* wasm filters arrive through ECDS with the module as a URL only the agent fetches
  (cluster ``_``): each ``config_discovery`` filter is replaced by its ECDS config
  with the code rewritten to the local file of that sha256, as the agent does;
* the chain is taken from the ``virtualInbound`` listener, which relies on
  iptables (original destination) and the agent's SDS certificates: the plaintext
  chain of the Service's port becomes the only chain of a listener on a loopback
  port, and its route's cluster points at the application.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import duration_pb2

from tests.kube.istio_proxy import HCM, ProxyConfig, Workload

ISTIO_PROXY_ONLY = frozenset({"istio.metadata_exchange", "istio.stats", "istio.alpn"})


def _address(port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port)
    )


def _local_wasm(config: ProxyConfig, resource: str, modules: Mapping[str, Path]) -> Any:
    wasm = wasm_pb2.Wasm()
    config.extensions[resource].typed_config.Unpack(wasm)
    code = wasm.config.vm_config.code
    module = modules[code.remote.sha256]
    code.ClearField("remote")
    code.local.filename = str(module)
    return wasm


def inbound_chain_for_upstream(
    config: ProxyConfig, port: int, modules: Mapping[str, Path]
) -> tuple[listener_components_pb2.FilterChain, list[str]]:
    """The plaintext inbound HTTP chain of ``port``, and the clusters its routes use."""
    source = config.listeners["virtualInbound"]
    matching = [
        c
        for c in source.filter_chains
        if c.filter_chain_match.destination_port.value == port
        and not c.HasField("transport_socket")
        and any(f.name == HCM for f in c.filters)
    ]
    assert matching, f"no plaintext HTTP chain for port {port}"
    chain = listener_components_pb2.FilterChain()
    chain.CopyFrom(matching[0])
    chain.ClearField("filter_chain_match")
    kept = [f for f in chain.filters if f.name not in ISTIO_PROXY_ONLY]
    del chain.filters[:]
    chain.filters.extend(kept)
    clusters: list[str] = []
    for network_filter in chain.filters:
        if network_filter.name != HCM:
            continue
        manager = hcm_pb2.HttpConnectionManager()
        network_filter.typed_config.Unpack(manager)
        filters = []
        for http_filter in manager.http_filters:
            if http_filter.name in ISTIO_PROXY_ONLY:
                continue
            if http_filter.HasField("config_discovery"):
                inline = hcm_pb2.HttpFilter(name=http_filter.name)
                inline.typed_config.Pack(_local_wasm(config, http_filter.name, modules))
                filters.append(inline)
            else:
                filters.append(http_filter)
        del manager.http_filters[:]
        manager.http_filters.extend(filters)
        for host in manager.route_config.virtual_hosts:
            clusters.extend(r.route.cluster for r in host.routes if r.route.cluster)
        network_filter.typed_config.Pack(manager)
    return chain, sorted(set(clusters))


def upstream_bootstrap(
    config: ProxyConfig,
    workload: Workload,
    *,
    service_port: int,
    listen_port: int,
    app_port: int,
    modules: Mapping[str, Path],
) -> bytes:
    """A binary bootstrap serving istiod's inbound chain on ``listen_port``.

    Binary, because istiod's configs name extensions (request id, tracing, ...) whose
    Python descriptors are not loaded here; Envoy reads a ``.pb`` bootstrap as is.
    """
    chain, clusters = inbound_chain_for_upstream(config, service_port, modules)
    bootstrap = bootstrap_pb2.Bootstrap()
    bootstrap.node.CopyFrom(workload.node())
    listener = bootstrap.static_resources.listeners.add()
    listener.name = "istiod-inbound"
    listener.address.CopyFrom(_address(listen_port))
    listener.filter_chains.append(chain)
    for name in clusters:
        cluster = bootstrap.static_resources.clusters.add()
        cluster.name = name
        cluster.type = cluster_pb2.Cluster.STATIC
        cluster.connect_timeout.CopyFrom(duration_pb2.Duration(seconds=5))
        cluster.load_assignment.cluster_name = name
        endpoint = cluster.load_assignment.endpoints.add().lb_endpoints.add()
        endpoint.endpoint.CopyFrom(endpoint_components_pb2.Endpoint(address=_address(app_port)))
    serialized: bytes = bootstrap.SerializeToString()
    return serialized
