"""`meshext serve` end to end: a config folder in, extensions running in real Envoy sidecars."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from meshext.mesh.workload import ProxyKind
from tests.server.mesh import Mesh, running_mesh, sme

pytestmark = pytest.mark.e2e

HTTPBIN = {"app": "httpbin", "version": "v1"}


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path) as running:
        running.control_plane()
        yield running


async def test_an_extension_in_the_folder_appends_its_header_at_the_app(mesh: Mesh) -> None:
    mesh.write(
        "a.yaml",
        sme(
            "istio-system",
            "header-append",
            "header-append",
            config="test",
            api_version="maistra.io/v1alpha1",
            selector={"app": "httpbin"},
        ),
    )
    sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN)
    await mesh.until(sidecar.appended, lambda h: h == ["test"], "the header at the app")
    report = await mesh.until_running("header-append")
    assert report.status.deployment.ready
    assert report.status.deployment.sha256 is not None


async def test_editing_config_changes_the_header_in_place_without_failing_requests(
    mesh: Mesh,
) -> None:
    mesh.write("a.yaml", sme("bookinfo", "tag", "header-append", config={"value": "one"}))
    sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN)
    await mesh.until(sidecar.appended, lambda h: h == ["one"], "the first header value")
    before = await sidecar.envoy.stats()

    failures: list[str] = []
    seen: set[str] = set()
    stop = asyncio.Event()

    async def load() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while not stop.is_set():
                response = await client.get(sidecar.url + "/")
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                    continue
                values = [v for k, v in response.json()["headers"] if k == "x-header-append"]
                seen.update(values)

    loader = asyncio.create_task(load())
    mesh.write("a.yaml", sme("bookinfo", "tag", "header-append", config={"value": "two"}))
    await mesh.until(sidecar.appended, lambda h: h == ["two"], "the edited header value")
    stop.set()
    await loader

    after = await sidecar.envoy.stats()
    assert failures == []
    assert seen == {"one", "two"}
    # The change travelled as ECDS only: the listener was neither modified nor drained.
    assert (
        after["listener_manager.listener_modified"] == before["listener_manager.listener_modified"]
    )
    assert after.get("listener_manager.total_listeners_draining", 0) == 0


async def test_status_observed_generation_follows_spec_edits_of_the_folder(mesh: Mesh) -> None:
    async def observed() -> int | None:
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.get(mesh.running.admin_url + "/api/v1/extensions")
            response.raise_for_status()
        for item in response.json()["extensions"]:
            if item["name"] == "tag":
                generation: int | None = item["status"].get("observedGeneration")
                return generation
        return None

    mesh.write("a.yaml", sme("bookinfo", "tag", "header-append", config={"value": "one"}))
    sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN)
    await mesh.until(sidecar.appended, lambda h: h == ["one"], "the first header value")
    assert await observed() == 1

    mesh.write("a.yaml", sme("bookinfo", "tag", "header-append", config={"value": "two"}))
    await mesh.until(sidecar.appended, lambda h: h == ["two"], "the edited header value")
    await mesh.until(observed, lambda g: g == 2, "observedGeneration 2 after the edit")


async def test_deleting_an_extension_removes_its_filter(mesh: Mesh) -> None:
    mesh.write(
        "a.yaml", sme("bookinfo", "keep", "header-append", config={"value": "keep"}, priority=2)
    )
    mesh.write(
        "b.yaml", sme("bookinfo", "drop", "header-append", config={"value": "drop"}, priority=1)
    )
    sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN)
    await mesh.until(sidecar.appended, lambda h: h == ["keep", "drop"], "both headers")
    mesh.remove("b.yaml")
    await mesh.until(sidecar.appended, lambda h: h == ["keep"], "only the kept header")


async def test_disabling_extensions_on_the_control_plane_removes_them_all(mesh: Mesh) -> None:
    mesh.write("a.yaml", sme("istio-system", "global", "header-append", config={"value": "g"}))
    mesh.write("b.yaml", sme("bookinfo", "local", "header-append", config={"value": "l"}))
    sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN)
    await mesh.until(sidecar.appended, lambda h: sorted(h) == ["g", "l"], "both headers")
    mesh.control_plane(enabled=False)
    await mesh.until(sidecar.appended, lambda h: h == [], "no extension at all")
    message = mesh.report("global").status.deployment.message or ""
    assert "wasmExtensions.enabled" in message


async def test_two_sidecars_get_chains_per_scope_and_order_is_observed_at_the_app(
    mesh: Mesh,
) -> None:
    mesh.write(
        "mesh-wide.yaml",
        sme("istio-system", "first", "header-append", config={"value": "authn"}, phase="PreAuthN"),
        sme("istio-system", "last", "header-append", config={"value": "stats"}, phase="PostStats"),
        sme(
            "istio-system",
            "only-v2",
            "header-append",
            config={"value": "v2"},
            selector={"version": "v2"},
            phase="PreStats",
        ),
    )
    mesh.write(
        "bookinfo.yaml",
        sme("bookinfo", "high", "header-append", config={"value": "high"}, priority=10),
        sme("bookinfo", "low", "header-append", config={"value": "low"}, priority=1),
    )
    mesh.write(
        "payments.yaml",
        sme("payments", "payments-only", "header-append", config={"value": "payments"}),
    )
    bookinfo = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN)
    payments = await mesh.sidecar("ledger", "payments", {"app": "ledger", "version": "v2"})
    await mesh.until(
        bookinfo.appended, lambda h: h == ["authn", "high", "low", "stats"], "bookinfo's chain"
    )
    await mesh.until(
        payments.appended, lambda h: h == ["authn", "payments", "v2", "stats"], "payments' chain"
    )


async def test_a_configuration_the_module_refuses_never_reaches_a_proxy_and_status_says_why(
    mesh: Mesh,
) -> None:
    mesh.write("good.yaml", sme("bookinfo", "good", "header-append", config={"value": "good"}))
    # deny-unless-header refuses a configuration that names no header.
    mesh.write("bad.yaml", sme("bookinfo", "bad", "deny-unless-header", config={"value": "x"}))
    sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN)
    other = await mesh.sidecar("reviews", "bookinfo", {"app": "reviews"})

    async def bad_message() -> str:
        return mesh.report("bad").status.deployment.message or ""

    message = await mesh.until(bad_message, lambda m: "failed its pre-flight" in m, "the refusal")
    assert message.startswith("ServiceMeshExtension bookinfo/bad failed its pre-flight")
    assert "proxy_on_configure" in message
    assert "deny-unless-header:" in message  # the module's own log line
    await mesh.until(sidecar.appended, lambda h: h == ["good"], "the good extension serving")
    await mesh.until(other.appended, lambda h: h == ["good"], "the other proxy serving")
    report = mesh.report("bad")
    assert not report.status.deployment.ready
    assert report.proxies == ()  # never offered, so never rejected either

    # Fixing the configuration brings the extension in on both proxies.
    mesh.write("bad.yaml", sme("bookinfo", "bad", "deny-unless-header", config={"name": "x-ok"}))
    await mesh.until_running("bad", proxies=2)
    assert (await sidecar.get("/")).status_code == 403
    assert (await sidecar.appended({"x-ok": "1"})) == ["good"]


async def test_a_sidecar_on_the_delta_protocol_gets_the_same_chain(mesh: Mesh) -> None:
    mesh.write("a.yaml", sme("bookinfo", "tag", "header-append", config={"value": "delta"}))
    sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN, delta=True)
    await mesh.until(sidecar.appended, lambda h: h == ["delta"], "the header over delta xDS")
    mesh.write("a.yaml", sme("bookinfo", "tag", "header-append", config={"value": "edited"}))
    await mesh.until(sidecar.appended, lambda h: h == ["edited"], "the edit over delta xDS")


async def test_a_gateway_runs_mesh_wide_extensions_that_select_it(mesh: Mesh) -> None:
    mesh.write(
        "gateway.yaml",
        sme("istio-system", "edge", "header-append", config={"value": "edge"},
            selector={"istio": "ingressgateway"}),
        sme("bookinfo", "bookinfo-only", "header-append", config={"value": "bookinfo"}),
    )  # fmt: skip
    gateway = await mesh.sidecar(
        "ingress", "istio-system", {"istio": "ingressgateway"}, kind=ProxyKind.GATEWAY
    )
    await mesh.until(gateway.appended, lambda h: h == ["edge"], "the gateway's extension")
