"""`meshext serve` with Istio WasmPlugins: outbound, network filters and gateways over ADS."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from meshext.images.config import RegistryConfig
from meshext.images.http_module import HttpModulePolicy
from meshext.mesh.extension import GATEWAY_NAME_LABEL
from meshext.mesh.workload import ProxyKind
from meshext.quickstart.echo import start_echo_app
from meshext.server.modules import start_module_server
from tests.envoy.support import build_examples
from tests.network import free_port
from tests.server.mesh import Mesh, running_mesh, serve_options

pytestmark = pytest.mark.e2e

WEB = {"app": "web"}
PLUGIN_HEADERS = frozenset({"x-client", "x-server", "x-both", "x-edge-only", "x-everywhere"})


def wasm_plugin(name: str, module: str, config: Mapping[str, Any], **spec: Any) -> str:
    body = {"url": f"file://{build_examples() / (module + '.wasm')}", "pluginConfig": dict(config)}
    document = {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": name, "namespace": "bookinfo"},
        "spec": {**body, **spec},
    }
    return json.dumps(document)


def static_module_app(module: bytes) -> web.Application:
    """A plain web server holding one module, as a user's HTTP(S) module host would."""

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=module, content_type="application/wasm")

    app = web.Application()
    app.router.add_get("/header-append.wasm", serve)
    return app


def tag(name: str, **spec: Any) -> str:
    return wasm_plugin(name, "header-append", {"name": f"x-{name}", "value": "on"}, **spec)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path) as running:
        running.control_plane()
        yield running


async def headers_at(url: str) -> list[str]:
    """The plugins' header names the app behind ``url`` received (empty while not answering)."""
    async with httpx.AsyncClient(timeout=10) as client:
        try:
            response = await client.get(url)
        except httpx.HTTPError:
            return []
    if response.status_code != 200:
        return []
    return sorted(k.lower() for k, _ in response.json()["headers"] if k.lower() in PLUGIN_HEADERS)


async def test_client_plugins_patch_what_the_app_sends_and_server_plugins_what_it_receives(
    mesh: Mesh,
) -> None:
    mesh.write(
        "plugins.yaml",
        tag("client", match=[{"mode": "CLIENT"}]),
        tag("server", match=[{"mode": "SERVER"}]),
        tag("both"),
    )
    upstream = await start_echo_app()
    try:
        out_port = free_port()
        sidecar = await mesh.sidecar(
            "web", "bookinfo", WEB, outbound=(f"{out_port}=127.0.0.1:{upstream.port}",)
        )
        sent = await mesh.until(
            lambda: headers_at(f"http://127.0.0.1:{out_port}/"),
            lambda h: h == ["x-both", "x-client"],
            "the CLIENT plugins on what the app sends",
        )
        received = await mesh.until(
            lambda: headers_at(sidecar.url + "/"),
            lambda h: h == ["x-both", "x-server"],
            "the SERVER plugins on what the app receives",
        )
    finally:
        await upstream.stop()
    assert sent == ["x-both", "x-client"]
    assert received == ["x-both", "x-server"]


async def test_a_network_plugin_delivered_over_ads_counts_the_bytes_of_connections(
    mesh: Mesh,
) -> None:
    mesh.write(
        "plugins.yaml", wasm_plugin("bytes", "byte-counter", {"name": "web_bytes"}, type="NETWORK")
    )
    sidecar = await mesh.sidecar("web", "bookinfo", WEB)
    await mesh.until_running("bytes")

    async def downstream_bytes() -> int:
        await sidecar.get("/")
        return (await sidecar.envoy.stats()).get("wasmcustom.web_bytes.downstream_bytes", 0)

    counted = await mesh.until(downstream_bytes, lambda n: n > 0, "bytes counted")
    assert counted > 0


async def test_a_plugin_targeting_a_gateway_runs_on_that_gateways_proxies_only(
    mesh: Mesh,
) -> None:
    edge = {"gateway.networking.k8s.io/gateway-name": "edge"}
    assert GATEWAY_NAME_LABEL in edge
    mesh.write(
        "plugins.yaml",
        tag(
            "edge-only",
            targetRefs=[{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"}],
        ),
        tag("everywhere"),
    )
    gateway = await mesh.sidecar("edge", "bookinfo", edge, kind=ProxyKind.GATEWAY)
    other = await mesh.sidecar(
        "internal", "bookinfo", {GATEWAY_NAME_LABEL: "internal"}, kind=ProxyKind.GATEWAY
    )
    sidecar = await mesh.sidecar("web", "bookinfo", WEB)
    on_edge = await mesh.until(
        lambda: headers_at(gateway.url + "/"),
        lambda h: h == ["x-edge-only", "x-everywhere"],
        "both plugins on the edge gateway",
    )
    on_other = await mesh.until(
        lambda: headers_at(other.url + "/"), lambda h: h == ["x-everywhere"], "one on the other"
    )
    on_sidecar = await mesh.until(
        lambda: headers_at(sidecar.url + "/"), lambda h: h == ["x-everywhere"], "one on the sidecar"
    )
    assert on_edge == ["x-edge-only", "x-everywhere"]
    assert on_other == on_sidecar == ["x-everywhere"]


async def test_a_client_plugin_on_a_sidecar_without_outbound_listeners_stays_off_harmlessly(
    mesh: Mesh,
) -> None:
    mesh.write("plugins.yaml", tag("client", match=[{"mode": "CLIENT"}]), tag("both"))
    sidecar = await mesh.sidecar("web", "bookinfo", WEB)
    received = await mesh.until(
        lambda: headers_at(sidecar.url + "/"), lambda h: h == ["x-both"], "the plugin for all"
    )
    await mesh.until_running("both")
    assert received == ["x-both"]
    assert mesh.report("client").proxies == ()


async def test_an_http_module_runs_when_its_sha256_matches_and_is_refused_clearly_when_not(
    tmp_path: Path,
) -> None:
    module = (build_examples() / "header-append.wasm").read_bytes()
    sha = hashlib.sha256(module).hexdigest()
    server = await start_module_server(static_module_app(module), "127.0.0.1", 0)
    url = f"{server.base_url}/header-append.wasm"
    options = dataclasses.replace(
        serve_options(tmp_path),
        registry=RegistryConfig(http_modules=HttpModulePolicy(allow_loopback=True)),
    )
    try:
        async with running_mesh(tmp_path, options) as mesh:
            mesh.control_plane()
            mesh.write(
                "plugins.yaml",
                wasm_plugin(
                    "pinned",
                    "header-append",
                    {"name": "x-both", "value": "on"},
                    url=url,
                    sha256=sha,
                ),
                wasm_plugin(
                    "wrong",
                    "header-append",
                    {"name": "x-client", "value": "on"},
                    url=url,
                    sha256="0" * 64,
                ),
            )
            sidecar = await mesh.sidecar("web", "bookinfo", WEB)
            received = await mesh.until(
                lambda: headers_at(sidecar.url + "/"),
                lambda h: h == ["x-both"],
                "the pinned module",
            )
            wrong = mesh.report("wrong").status.deployment
    finally:
        await server.stop()
    assert received == ["x-both"]
    assert not wrong.ready
    assert wrong.message is not None
    assert f"the module's sha256 is {sha}, spec.sha256 says {'0' * 64}; refused" in wrong.message
