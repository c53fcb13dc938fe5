"""Traffic selection in a real Envoy: outbound listeners, several inbound ports, L4 filters."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from meshext.api.phase import Phase
from meshext.envoy.files import ConfigDirectory
from meshext.envoy.node import HostPort, Outbound, ProxyInfo
from meshext.envoy.resources import EnvoyResources
from meshext.envoy.sidecar import proxy_resources
from meshext.envoy.wasm import ModuleDelivery
from meshext.mesh import traffic
from meshext.mesh.planner import PlannedExtension
from meshext.mesh.traffic import FilterLayer, TrafficMatch, TrafficSelector
from tests.envoy.harness import EchoApp, EnvoyProxy, eventually, headers_named
from tests.envoy.support import example_module, plan, planned, proxy
from tests.network import free_port

pytestmark = pytest.mark.e2e

DELIVERY = ModuleDelivery()


def plugin(
    name: str,
    example: str,
    config: str,
    *,
    directions: frozenset[traffic.Direction] = traffic.CLIENT_AND_SERVER,
    ports: frozenset[int] = frozenset(),
    layer: FilterLayer = FilterLayer.HTTP,
) -> PlannedExtension:
    base = planned(
        name,
        kind="WasmPlugin",
        phase=Phase.POST_STATS,
        config=config,
        module=example_module(example),
    )
    ext = dataclasses.replace(
        base.extension, traffic=TrafficMatch((TrafficSelector(directions, ports),)), layer=layer
    )
    return dataclasses.replace(base, extension=ext)


def header(
    name: str,
    value: str,
    *,
    directions: frozenset[traffic.Direction] = traffic.CLIENT_AND_SERVER,
    ports: frozenset[int] = frozenset(),
) -> PlannedExtension:
    config = f'{{"name": "x-{name}", "value": "{value}"}}'
    return plugin(name, "header-append", config, directions=directions, ports=ports)


def sidecar(app: EchoApp, *, extra_ports: int = 0, upstream: EchoApp | None = None) -> ProxyInfo:
    port = free_port()
    info = proxy(port=port, app=HostPort("127.0.0.1", app.port), node_id=f"sidecar~web.apps~{port}")
    outbound = (Outbound(free_port(), HostPort("127.0.0.1", upstream.port)),) if upstream else ()
    return dataclasses.replace(
        info,
        extra_inbound_ports=tuple(free_port() for _ in range(extra_ports)),
        outbound=outbound,
    )


def resources_for(
    info: ProxyInfo, extensions: list[PlannedExtension], workdir: Path
) -> EnvoyResources:
    return proxy_resources(
        info,
        plan(extensions, info.workload),
        DELIVERY,
        config_source=ConfigDirectory(str(workdir / "xds")),
    )


async def echo_at(envoy: EnvoyProxy, port: int) -> dict[str, object]:
    """A request to one of the proxy's ports, retried until that listener is up."""

    async def probe() -> dict[str, object] | None:
        response = await envoy.client.get(f"http://127.0.0.1:{port}/get")
        return response.json() if response.status_code == 200 else None

    echoed = await eventually(probe, lambda r: r is not None, f"an answer on port {port}")
    assert echoed is not None
    return echoed


async def test_a_client_extension_changes_requests_the_app_sends_out_and_only_those(
    examples: Path, app: EchoApp, tmp_path: Path
) -> None:
    async with EchoApp() as upstream:
        info = sidecar(app, upstream=upstream)
        extensions = [
            header("client", "out", directions=traffic.CLIENT),
            header("server", "in", directions=traffic.SERVER),
            header("both", "any"),
        ]
        async with EnvoyProxy(tmp_path, info, resources_for(info, extensions, tmp_path)) as envoy:
            sent = await echo_at(envoy, info.outbound[0].port)
            received = await echo_at(envoy, info.inbound_port)
    assert upstream.requests >= 1
    assert headers_named(sent, "x-client") == ["out"]
    assert headers_named(sent, "x-both") == ["any"]
    assert headers_named(sent, "x-server") == []
    assert headers_named(received, "x-server") == ["in"]
    assert headers_named(received, "x-both") == ["any"]
    assert headers_named(received, "x-client") == []


async def test_a_port_matched_extension_runs_on_its_inbound_port_only(
    examples: Path, app: EchoApp, tmp_path: Path
) -> None:
    info = sidecar(app, extra_ports=1)
    (second,) = info.extra_inbound_ports
    extensions = [header("port-bound", "yes", ports=frozenset({second}))]
    async with EnvoyProxy(tmp_path, info, resources_for(info, extensions, tmp_path)) as envoy:
        on_second = await echo_at(envoy, second)
        on_first = await echo_at(envoy, info.inbound_port)
    assert headers_named(on_second, "x-port-bound") == ["yes"]
    assert headers_named(on_first, "x-port-bound") == []


async def test_a_network_extension_sees_the_bytes_of_each_connection(
    examples: Path, app: EchoApp, tmp_path: Path
) -> None:
    info = sidecar(app)
    counter = plugin("bytes", "byte-counter", "edge_bytes", layer=FilterLayer.NETWORK)
    async with EnvoyProxy(tmp_path, info, resources_for(info, [counter], tmp_path)) as envoy:
        await echo_at(envoy, info.inbound_port)
        # A raw TCP exchange: the filter counts bytes whatever the protocol carries.
        reader, writer = await asyncio.open_connection("127.0.0.1", info.inbound_port)
        request = b"GET /raw HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        writer.write(request)
        await writer.drain()
        answer = await reader.read()
        writer.close()
        await writer.wait_closed()
        sent = await envoy.wait_for_stat(
            "wasmcustom.edge_bytes.downstream_bytes", lambda v: v >= len(request)
        )
        returned = await envoy.wait_for_stat(
            "wasmcustom.edge_bytes.upstream_bytes", lambda v: v >= len(answer)
        )
        connections = await envoy.wait_for_stat(
            "wasmcustom.edge_bytes.connections", lambda v: v >= 2
        )
    assert answer.startswith(b"HTTP/1.1 200")
    assert sent >= len(request)
    assert returned >= len(answer)
    assert connections >= 2
