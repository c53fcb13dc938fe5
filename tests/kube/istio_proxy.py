"""An xDS client that asks istiod for a workload's configuration, as its proxy would.

istio-proxy's agent opens one ADS stream to istiod (plaintext port 15010 here),
announces the workload in the node id and metadata (namespace, labels, cluster,
IP, Istio version), subscribes to listeners and then to the extension configs
(ECDS) that those listeners name in ``config_discovery``. :func:`fetch_proxy_config`
does the same on a fresh stream and returns what istiod sent, so a test can poll it
until istiod has caught up with a change; no state is kept between calls.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.wasm.v3 import wasm_pb2 as plugin_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, json_format, wrappers_pb2

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
ECDS = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
HCM = "envoy.filters.network.http_connection_manager"
WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
ISTIO_VERSION = "1.31.0"
READ_SECONDS = 60.0


@dataclass(frozen=True)
class Workload:
    """A proxy as istiod sees it: ``sidecar`` (or ``router`` for a gateway) in a namespace."""

    name: str
    namespace: str
    labels: dict[str, str]
    ip: str = "10.1.0.10"
    kind: str = "sidecar"

    def node(self) -> base_pb2.Node:
        node = base_pb2.Node(
            id=f"{self.kind}~{self.ip}~{self.name}.{self.namespace}~{self.namespace}.svc.cluster.local",
            cluster=f"{self.name}.{self.namespace}",
        )
        json_format.ParseDict(
            {
                "NAMESPACE": self.namespace,
                "LABELS": self.labels,
                "CLUSTER_ID": "Kubernetes",
                "ISTIO_VERSION": ISTIO_VERSION,
                "INSTANCE_IPS": self.ip,
                "WORKLOAD_NAME": self.name,
                "INTERCEPTION_MODE": "REDIRECT",
                "SERVICE_ACCOUNT": "default",
            },
            node.metadata,
        )
        return node


@dataclass(frozen=True)
class WasmFilter:
    """A wasm HTTP filter as istiod delivered it through ECDS."""

    resource: str
    name: str
    root_id: str
    url: str
    cluster: str
    sha256: str
    configuration: str
    failure_policy: str
    fail_open: bool


@dataclass(frozen=True)
class HttpChain:
    """One HTTP filter chain of a listener: the filter names in order."""

    listener: str
    chain: str
    filters: tuple[str, ...]


@dataclass(frozen=True)
class ProxyConfig:
    listeners: dict[str, listener_pb2.Listener]
    extensions: dict[str, extension_pb2.TypedExtensionConfig]

    def http_chains(self) -> list[HttpChain]:
        chains = []
        for name, listener in sorted(self.listeners.items()):
            for chain in listener.filter_chains:
                for manager in _managers(chain):
                    names = tuple(f.name for f in manager.http_filters)
                    chains.append(HttpChain(name, chain.name, names))
        return chains

    def wasm(self, resource: str) -> WasmFilter:
        """The wasm filter delivered as the extension config ``resource`` (ECDS)."""
        return _wasm_filter(resource, self.extensions[resource].typed_config)

    def inline_wasm(self, name: str) -> WasmFilter:
        """The first HTTP filter ``name`` configured inline in a listener."""
        for listener in self.listeners.values():
            for chain in listener.filter_chains:
                for manager in _managers(chain):
                    for http_filter in manager.http_filters:
                        if http_filter.name == name:
                            return _wasm_filter(name, http_filter.typed_config)
        raise AssertionError(f"no HTTP filter {name}")


def _wasm_filter(resource: str, typed_config: any_pb2.Any) -> WasmFilter:
    wasm = wasm_pb2.Wasm()
    if not typed_config.Unpack(wasm):
        raise AssertionError(f"{resource} is {typed_config.type_url}, not Wasm")
    config = wasm.config
    remote = config.vm_config.code.remote
    text = wrappers_pb2.StringValue()
    if config.configuration.ByteSize() and not config.configuration.Unpack(text):
        raise AssertionError(f"{resource}: configuration is {config.configuration.type_url}")
    return WasmFilter(
        resource=resource,
        name=config.name,
        root_id=config.root_id,
        url=remote.http_uri.uri,
        cluster=remote.http_uri.cluster,
        sha256=remote.sha256,
        configuration=text.value,
        failure_policy=plugin_pb2.FailurePolicy.Name(config.failure_policy),
        fail_open=config.fail_open,
    )


def _managers(chain: listener_components_pb2.FilterChain) -> list[hcm_pb2.HttpConnectionManager]:
    found = []
    for network_filter in chain.filters:
        if network_filter.name == HCM:
            manager = hcm_pb2.HttpConnectionManager()
            network_filter.typed_config.Unpack(manager)
            found.append(manager)
    return found


def _ecds_names(listeners: dict[str, listener_pb2.Listener]) -> list[str]:
    names: set[str] = set()
    for listener in listeners.values():
        for chain in listener.filter_chains:
            for manager in _managers(chain):
                names.update(f.name for f in manager.http_filters if f.HasField("config_discovery"))
    return sorted(names)


async def _read(call: Any, type_url: str) -> discovery_pb2.DiscoveryResponse:
    while True:
        response: discovery_pb2.DiscoveryResponse = await asyncio.wait_for(
            call.read(), READ_SECONDS
        )
        if response is grpc.aio.EOF:
            raise AssertionError(f"istiod closed the stream before sending {type_url}")
        if response.type_url == type_url:
            return response


async def fetch_proxy_config(address: str, workload: Workload) -> ProxyConfig:
    """Listeners and extension configs istiod sends ``workload`` on a new ADS stream."""
    node = workload.node()
    async with grpc.aio.insecure_channel(address) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        try:
            await call.write(discovery_pb2.DiscoveryRequest(node=node, type_url=LDS))
            response = await _read(call, LDS)
            listeners = {}
            for resource in response.resources:
                listener = listener_pb2.Listener()
                resource.Unpack(listener)
                listeners[listener.name] = listener
            extensions: dict[str, extension_pb2.TypedExtensionConfig] = {}
            names = _ecds_names(listeners)
            if names:
                await call.write(
                    discovery_pb2.DiscoveryRequest(node=node, type_url=ECDS, resource_names=names)
                )
                for resource in (await _read(call, ECDS)).resources:
                    config = extension_pb2.TypedExtensionConfig()
                    resource.Unpack(config)
                    extensions[config.name] = config
            return ProxyConfig(listeners, extensions)
        finally:
            call.cancel()
