"""Listeners per port and direction, and which extensions each one carries."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.wasm.v3 import wasm_pb2 as network_wasm_pb2

from meshext.api.phase import Phase
from meshext.envoy import names
from meshext.envoy.bootstrap import AdsServer, BootstrapError, sidecar_bootstrap
from meshext.envoy.errors import NodeMetadataError
from meshext.envoy.node import HostPort, Outbound, ProxyInfo, node_metadata, proxy_from_metadata
from meshext.envoy.sidecar import proxy_resources
from meshext.envoy.wasm import NETWORK_WASM_FILTER_TYPE_URL, ModuleDelivery
from meshext.mesh import traffic
from meshext.mesh.planner import PlannedExtension
from meshext.mesh.traffic import FilterLayer, TrafficMatch, TrafficSelector
from meshext.mesh.workload import ProxyKind
from tests.core.test_cli import meshext
from tests.envoy.support import plan, planned, proxy, workload

DELIVERY = ModuleDelivery()
UPSTREAM = HostPort("10.1.2.3", 9080)


def plugin(
    name: str,
    *,
    directions: frozenset[traffic.Direction] = traffic.CLIENT_AND_SERVER,
    ports: frozenset[int] = frozenset(),
    layer: FilterLayer = FilterLayer.HTTP,
    phase: Phase = Phase.POST_STATS,
) -> PlannedExtension:
    base = planned(name, kind="WasmPlugin", phase=phase)
    ext = dataclasses.replace(
        base.extension,
        traffic=TrafficMatch((TrafficSelector(directions, ports),)),
        layer=layer,
    )
    return dataclasses.replace(base, extension=ext)


def sidecar(**changes: Any) -> ProxyInfo:
    return dataclasses.replace(
        proxy(), extra_inbound_ports=(15007,), outbound=(Outbound(15001, UPSTREAM),), **changes
    )


def chains(info: ProxyInfo, extensions: list[PlannedExtension]) -> dict[str, list[str]]:
    """Per listener: its filters, network first, then ``http:`` the HTTP filters."""
    resources = proxy_resources(info, plan(extensions, info.workload), DELIVERY)
    out: dict[str, list[str]] = {}
    for listener in resources.listeners:
        (chain,) = listener.filter_chains
        filters: list[str] = []
        for f in chain.filters:
            if f.name == names.HCM_FILTER:
                hcm = hcm_pb2.HttpConnectionManager()
                assert f.typed_config.Unpack(hcm)
                filters.extend(f"http:{h.name}" for h in hcm.http_filters)
            else:
                filters.append(f.name)
        out[str(listener.name)] = filters
    return out


def ecds(name: str) -> str:
    return f"meshext.wasmplugin.apps.{name}"


def test_a_sidecar_gets_a_listener_per_inbound_port_and_per_outbound_upstream() -> None:
    info = sidecar()
    resources = proxy_resources(info, plan([], info.workload), DELIVERY)
    listeners = {str(lst.name): lst for lst in resources.listeners}
    assert set(listeners) == {
        "meshext.inbound.15006",
        "meshext.inbound.15007",
        "meshext.outbound.15001",
    }
    outbound = listeners["meshext.outbound.15001"]
    assert outbound.address.socket_address.address == "127.0.0.1"
    assert {str(c.name) for c in resources.clusters} == {"meshext.app", "meshext.outbound.15001"}
    (cluster,) = [c for c in resources.clusters if c.name == "meshext.outbound.15001"]
    endpoint = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert (endpoint.socket_address.address, endpoint.socket_address.port_value) == (
        "10.1.2.3",
        9080,
    )


def test_client_extensions_run_outbound_server_extensions_inbound_and_smes_inbound_only() -> None:
    result = chains(
        sidecar(),
        [
            plugin("client", directions=traffic.CLIENT),
            plugin("server", directions=traffic.SERVER),
            plugin("both"),
            planned("maistra", phase=Phase.POST_STATS),
        ],
    )
    inbound = result["meshext.inbound.15006"]
    outbound = result["meshext.outbound.15001"]
    assert f"http:{ecds('server')}" in inbound
    assert f"http:{ecds('both')}" in inbound
    assert f"http:{ecds('client')}" not in inbound
    assert "http:meshext.servicemeshextension.apps.maistra" in inbound
    assert f"http:{ecds('client')}" in outbound
    assert f"http:{ecds('both')}" in outbound
    assert f"http:{ecds('server')}" not in outbound
    assert "http:meshext.servicemeshextension.apps.maistra" not in outbound


def test_outbound_chains_keep_phase_order_and_the_same_anchors() -> None:
    result = chains(
        sidecar(),
        [
            plugin("stats", directions=traffic.CLIENT, phase=Phase.PRE_STATS),
            plugin("authn", directions=traffic.CLIENT, phase=Phase.PRE_AUTHN),
        ],
    )
    assert result["meshext.outbound.15001"] == [
        f"http:{ecds('authn')}",
        "http:envoy.filters.http.jwt_authn",
        "http:envoy.filters.http.rbac",
        f"http:{ecds('stats')}",
        "http:envoy.filters.http.router",
    ]


def test_ports_limit_an_extension_to_the_listeners_of_those_ports() -> None:
    result = chains(
        sidecar(),
        [
            plugin("only-15007", ports=frozenset({15007})),
            plugin("upstream", ports=frozenset({9080})),
        ],
    )
    assert f"http:{ecds('only-15007')}" in result["meshext.inbound.15007"]
    assert f"http:{ecds('only-15007')}" not in result["meshext.inbound.15006"]
    # Outbound traffic is matched on the destination's port.
    assert f"http:{ecds('upstream')}" in result["meshext.outbound.15001"]
    assert f"http:{ecds('upstream')}" not in result["meshext.inbound.15006"]


def test_network_extensions_are_network_filters_before_the_connection_manager_in_phase_order() -> (
    None
):
    info = sidecar()
    extensions = [
        plugin("late", layer=FilterLayer.NETWORK, phase=Phase.POST_STATS),
        plugin("early", layer=FilterLayer.NETWORK, phase=Phase.PRE_AUTHN),
        plugin("http-one"),
    ]
    result = chains(info, extensions)
    inbound = result["meshext.inbound.15006"]
    assert inbound[:2] == [ecds("early"), ecds("late")]
    assert f"http:{ecds('http-one')}" in inbound
    assert f"http:{ecds('late')}" not in inbound
    resources = proxy_resources(info, plan(extensions, info.workload), DELIVERY)
    config = resources.extension_configs[ecds("late")]
    assert config.typed_config.type_url == NETWORK_WASM_FILTER_TYPE_URL
    assert config.typed_config.Unpack(network_wasm_pb2.Wasm())
    listener = next(lst for lst in resources.listeners if lst.name == "meshext.inbound.15006")
    network_filter = listener.filter_chains[0].filters[0]
    assert list(network_filter.config_discovery.type_urls) == [NETWORK_WASM_FILTER_TYPE_URL]


def test_a_gateway_runs_client_extensions_but_not_server_ones() -> None:
    gw = workload(kind=ProxyKind.GATEWAY)
    info = proxy(gw, node_id="gateway~httpbin.apps~15006")
    result = chains(
        info,
        [plugin("client", directions=traffic.CLIENT), plugin("server", directions=traffic.SERVER)],
    )
    assert result == {
        "meshext.gateway.15006": [
            "http:envoy.filters.http.jwt_authn",
            "http:envoy.filters.http.rbac",
            f"http:{ecds('client')}",
            "http:envoy.filters.http.router",
        ]
    }


def test_an_extension_on_no_listener_gets_no_config() -> None:
    info = proxy()
    resources = proxy_resources(
        info, plan([plugin("client", directions=traffic.CLIENT)], info.workload), DELIVERY
    )
    assert resources.extension_configs == {}


def test_ports_and_upstreams_round_trip_through_node_metadata() -> None:
    metadata = node_metadata(
        namespace="apps",
        labels={},
        workload_name="web",
        kind=ProxyKind.SIDECAR,
        inbound_port=8080,
        app=HostPort("127.0.0.1", 80),
        extra_inbound_ports=(8081,),
        outbound=(Outbound(15001, UPSTREAM),),
    )
    info = proxy_from_metadata("sidecar~web.apps~8080", metadata)
    assert info.inbound_ports == (8080, 8081)
    assert info.outbound == (Outbound(15001, UPSTREAM),)


def test_an_outbound_port_that_is_also_inbound_is_an_error_naming_the_key() -> None:
    metadata = {
        "NAMESPACE": "apps",
        "INBOUND_PORT": "8080",
        "APP_ADDRESS": "127.0.0.1:80",
        "OUTBOUND": "8080=10.1.2.3:80",
    }
    with pytest.raises(NodeMetadataError) as caught:
        proxy_from_metadata("sidecar~web.apps~8080", metadata)
    assert caught.value.key == "OUTBOUND"


def test_bootstrap_writes_extra_ports_and_outbound_listeners_and_refuses_them_on_gateways() -> None:
    common: dict[str, Any] = {
        "name": "web",
        "namespace": "apps",
        "labels": {},
        "listen": 8080,
        "app": "127.0.0.1:80",
        "xds": AdsServer(HostPort("127.0.0.1", 15010)),
        "admin_port": 15000,
    }
    document = sidecar_bootstrap(**common, extra_ports=(8081,), outbound=("15001=10.1.2.3:9080",))
    metadata = document["node"]["metadata"]
    assert metadata["INBOUND_PORTS"] == "8080,8081"
    assert metadata["OUTBOUND"] == "15001=10.1.2.3:9080"
    with pytest.raises(BootstrapError, match="outbound: a gateway"):
        sidecar_bootstrap(**common, kind=ProxyKind.GATEWAY, outbound=("15001=10.1.2.3:9080",))
    with pytest.raises(BootstrapError, match=r"outbound: .*not PORT=HOST:PORT"):
        sidecar_bootstrap(**common, outbound=("10.1.2.3:9080",))
    with pytest.raises(BootstrapError, match="already in use"):
        sidecar_bootstrap(**common, outbound=("8080=10.1.2.3:9080",))


def test_host_env_vars_become_host_env_keys_and_get_a_vm_of_their_own() -> None:
    info = proxy()
    plain = plugin("plain")
    with_host = plugin("with-host")
    with_host = dataclasses.replace(
        with_host,
        module=plain.module,
        extension=dataclasses.replace(with_host.extension, host_env=("POD_NAME",)),
    )
    resources = proxy_resources(info, plan([plain, with_host], info.workload), DELIVERY)
    configs = {}
    for name in (ecds("plain"), ecds("with-host")):
        wasm = http_wasm_pb2.Wasm()
        assert resources.extension_configs[name].typed_config.Unpack(wasm)
        configs[name] = wasm.config.vm_config
    host_vm = configs[ecds("with-host")]
    assert list(host_vm.environment_variables.host_env_keys) == ["POD_NAME"]
    assert host_vm.vm_id != configs[ecds("plain")].vm_id


def test_extra_listen_ports_share_the_first_ones_address() -> None:
    common: dict[str, Any] = {
        "name": "web",
        "namespace": "apps",
        "labels": {},
        "listen": "127.0.0.1:8080",
        "app": "127.0.0.1:80",
        "xds": AdsServer(HostPort("127.0.0.1", 15010)),
        "admin_port": 15000,
    }
    document = sidecar_bootstrap(**common, extra_ports=("8081", "127.0.0.1:8082"))
    assert document["node"]["metadata"]["INBOUND_PORTS"] == "8080,8081,8082"
    with pytest.raises(BootstrapError, match="binds the first one's address"):
        sidecar_bootstrap(**common, extra_ports=("10.0.0.1:8081",))
    with pytest.raises(BootstrapError, match="given twice"):
        sidecar_bootstrap(**common, extra_ports=("8080",))


def test_the_bootstrap_command_takes_repeated_listen_and_outbound_options() -> None:
    done = meshext(
        "bootstrap", "--name", "web", "-n", "apps", "--listen", "8080", "--listen", "8081",
        "--outbound", "15001=10.1.2.3:9080", "--outbound", "15002=db.apps:5432",
        "--app", "127.0.0.1:80", "-o", "json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    metadata = json.loads(done.stdout)["node"]["metadata"]
    assert metadata["INBOUND_PORTS"] == "8080,8081"
    assert metadata["OUTBOUND"] == "15001=10.1.2.3:9080,15002=db.apps:5432"
    refused = meshext(
        "bootstrap", "--name", "gw", "-n", "apps", "--listen", "8080", "--gateway",
        "--outbound", "15001=10.1.2.3:9080", "--app", "127.0.0.1:80",
    )  # fmt: skip
    assert refused.returncode == 2
    assert "outbound: a gateway has no outbound listeners" in refused.stderr
