"""Extensions built with real proxy-wasm SDKs (Go, AssemblyScript), deployed through
ServiceMeshExtensions into real Envoy sidecars, in both module delivery modes.

A combination that cannot start (a wrong root id, a configuration the module
refuses) never reaches a proxy: status says why in the module's words, and the
workload keeps answering with its other extensions."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshext.envoy.node import DeliveryMode
from meshext.server.delivery import DeliveryState
from tests.documents import sme_document
from tests.sdk_examples import AS_ROOT_ID, sdk_module
from tests.server.mesh import Mesh, Sidecar, running_mesh

pytestmark = pytest.mark.e2e

HTTPBIN = {"app": "httpbin"}
DELIVERIES = [DeliveryMode.LOCAL, DeliveryMode.REMOTE]


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path) as running:
        running.control_plane()
        yield running


def extension(
    name: str, module: str, config: object, *, root_id: str | None = None, priority: int = 10
) -> str:
    annotations = {"meshext.io/root-id": root_id} if root_id is not None else None
    document = sme_document(
        name,
        "bookinfo",
        f"file:{sdk_module(module)}",
        version="v1alpha1" if isinstance(config, str) else "v1",
        config=config,
        annotations=annotations,
        priority=priority,
    )
    return json.dumps(document)


async def received(sidecar: Sidecar) -> dict[str, str]:
    """The headers the app received, or the status when the request failed."""
    response = await sidecar.get("/")
    if response.status_code != 200:
        return {"status": str(response.status_code)}
    return {k.lower(): v for k, v in response.json()["headers"]}


@pytest.mark.parametrize("delivery", DELIVERIES)
async def test_go_and_assemblyscript_extensions_run_in_envoy(
    mesh: Mesh, delivery: DeliveryMode
) -> None:
    mesh.write("go.yaml", extension("go", "go-header-append", {"name": "x-go", "value": "gopher"}))
    mesh.write("as.yaml", extension("as", "as-header-append", "assembled", root_id=AS_ROOT_ID))
    sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN, delivery=delivery)
    headers = await mesh.until(
        lambda: received(sidecar),
        lambda h: h.get("x-go") == "gopher" and h.get("x-as-header-append") == "assembled",
        "both SDK extensions' headers at the app",
    )
    assert "status" not in headers
    await mesh.until_running("go")
    await mesh.until_running("as")


@pytest.mark.parametrize("delivery", DELIVERIES)
async def test_a_wrong_root_id_is_named_in_status_and_never_reaches_the_proxy(
    mesh: Mesh, delivery: DeliveryMode
) -> None:
    mesh.write("go.yaml", extension("go", "go-header-append", {"name": "x-go", "value": "gopher"}))
    mesh.write("as.yaml", extension("as", "as-header-append", "assembled"))  # root id ""
    sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN, delivery=delivery)
    await mesh.until(lambda: received(sidecar), lambda h: h.get("x-go") == "gopher", "x-go")
    report = mesh.report("as")
    message = report.status.deployment.message or ""
    assert not report.status.deployment.ready
    assert "ServiceMeshExtension bookinfo/as failed its pre-flight" in message
    assert "Missing root context factory for root id" in message
    assert "meshext.io/root-id" in message
    assert all(p.state is not DeliveryState.RUNNING for p in report.proxies)
    headers = await received(sidecar)
    assert "status" not in headers
    assert "x-as-header-append" not in headers

    mesh.write("as.yaml", extension("as", "as-header-append", "assembled", root_id=AS_ROOT_ID))
    await mesh.until(
        lambda: received(sidecar),
        lambda h: h.get("x-as-header-append") == "assembled",
        "the fixed extension's header",
    )
    assert mesh.report("as").status.deployment.ready


@pytest.mark.parametrize("delivery", DELIVERIES)
async def test_a_configuration_the_module_refuses_keeps_the_last_good_one_running(
    mesh: Mesh, delivery: DeliveryMode
) -> None:
    mesh.write("go.yaml", extension("go", "go-header-append", {"name": "x-go", "value": "one"}))
    sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN, delivery=delivery)
    await mesh.until(lambda: received(sidecar), lambda h: h.get("x-go") == "one", "x-go: one")
    await mesh.until_running("go")

    mesh.write("go.yaml", extension("go", "go-header-append", "not json"))

    async def message() -> str:
        return mesh.report("go").status.deployment.message or ""

    said = await mesh.until(message, lambda m: "failed its pre-flight" in m, "the refusal")
    assert "critical: invalid configuration format" in said
    headers = await received(sidecar)
    assert headers.get("x-go") == "one"
