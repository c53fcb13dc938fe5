"""Remote delivery tells the truth when a proxy cannot fetch a module.

Envoy rejects a remote module until it is in its cache (``nack_on_code_cache_miss``),
so meshext knows when a proxy could not fetch one: meanwhile the extension's filter
runs the pass-through stand-in, the listener and every other extension keep serving,
the module is offered again with backoff, and status says Rejected or Pending in
Envoy's words until the proxy runs it, never Running before.

A module is made unfetchable by taking its file out of meshext's module cache after
its pre-flight (the module server then answers 404), or by stopping the module server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from meshext.envoy.node import DeliveryMode
from meshext.server.delivery import DeliveryState
from tests.envoy.support import build_examples
from tests.server.mesh import Mesh, Sidecar, running_mesh, sme

pytestmark = pytest.mark.e2e

HTTPBIN = {"app": "httpbin"}


def wasm_plugin(name: str, module: str, config: Mapping[str, Any], **spec: Any) -> str:
    document = {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": name, "namespace": "bookinfo"},
        "spec": {
            "url": f"file://{build_examples() / (module + '.wasm')}",
            "pluginConfig": dict(config),
            **spec,
        },
    }
    return json.dumps(document)


class Unfetchable:
    """Takes modules out of meshext's cache (the module server answers 404) and back."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.hidden: dict[Path, Path] = {}

    def hide(self, name: str) -> None:
        sha256 = self.mesh.report(name).status.deployment.sha256
        assert sha256
        (blob,) = [p for p in (self.mesh.workdir / "cache").rglob(sha256) if p.is_file()]
        aside = blob.with_name(blob.name + ".aside")
        blob.rename(aside)
        self.hidden[blob] = aside

    def restore(self) -> None:
        for blob, aside in self.hidden.items():
            aside.rename(blob)
        self.hidden.clear()


async def ready(mesh: Mesh, *names: str) -> None:
    """Every named extension passed its pre-flight (its module is known and verified)."""

    async def probe() -> list[bool]:
        known = {r.key.name: r for r in mesh.running.control.reports()}
        return [n in known and known[n].status.deployment.ready for n in names]

    await mesh.until(probe, all, f"{names} ready")


def states(mesh: Mesh, name: str) -> list[DeliveryState]:
    return [p.state for p in mesh.report(name).proxies]


async def never_503_while_running(mesh: Mesh, sidecar: Sidecar, name: str) -> list[str]:
    """A request through the sidecar; fails if it got 503 while status said Running."""
    response = await sidecar.get("/")
    if response.status_code == 503:
        assert DeliveryState.RUNNING not in states(mesh, name), response.text
    assert response.status_code == 200, (response.status_code, response.text)
    return [v for k, v in response.json()["headers"] if k.lower() == "x-header-append"]


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_a_module_the_proxy_cannot_fetch_is_stood_in_and_reported_until_fetched(
    tmp_path: Path, delta: bool
) -> None:
    async with running_mesh(tmp_path) as mesh:
        mesh.control_plane()
        mesh.write(
            "a.yaml",
            sme("bookinfo", "tag", "header-append", config={"value": "kept"}),
            sme("bookinfo", "count", "request-counter", config={"name": "hits"}),
        )
        await ready(mesh, "tag", "count")
        missing = Unfetchable(mesh)
        missing.hide("count")
        sidecar = await mesh.sidecar(
            "httpbin", "bookinfo", HTTPBIN, delivery=DeliveryMode.REMOTE, delta=delta
        )
        await mesh.until(
            lambda: never_503_while_running(mesh, sidecar, "count"),
            lambda h: h == ["kept"],
            "the fetchable extension running beside the stand-in",
        )
        await mesh.until_running("tag")

        async def count_report() -> Any:
            await never_503_while_running(mesh, sidecar, "count")
            return mesh.report("count").proxies

        (rejected,) = await mesh.until(
            count_report,
            lambda ps: len(ps) == 1 and ps[0].state is DeliveryState.REJECTED,
            "the unfetchable module reported rejected",
        )
        assert "count" in rejected.message
        assert "has not fetched the module" in rejected.message
        for _ in range(20):
            assert await never_503_while_running(mesh, sidecar, "count") == ["kept"]
        assert states(mesh, "count") != [DeliveryState.RUNNING]

        missing.restore()
        await mesh.until_running("count")

        async def hits() -> int:
            await never_503_while_running(mesh, sidecar, "count")
            return (await sidecar.envoy.stats()).get("wasmcustom.hits", 0)

        await mesh.until(hits, lambda n: n > 0, "the fetched module counting requests")
        assert await never_503_while_running(mesh, sidecar, "count") == ["kept"]


ALLOWED = {"x-allowed": "yes"}


async def test_several_unfetchable_plugins_of_every_kind_keep_the_listener_serving(
    tmp_path: Path,
) -> None:
    # Three modules the proxy cannot fetch (FAIL_OPEN, FAIL_CLOSE, a NETWORK filter) next
    # to one it can: none of them holds the listener back or turns a request into a 503.
    async with running_mesh(tmp_path) as mesh:
        mesh.control_plane()
        mesh.write(
            "a.yaml",
            sme("bookinfo", "tag", "header-append", config={"value": "kept"}),
            wasm_plugin("open", "request-counter", {"name": "hits"}, failStrategy="FAIL_OPEN"),
            wasm_plugin(
                "closed", "deny-unless-header", {"name": "x-allowed"}, failStrategy="FAIL_CLOSE"
            ),
            wasm_plugin("bytes", "byte-counter", {"name": "web_bytes"}, type="NETWORK"),
        )
        unfetchable = ("open", "closed", "bytes")
        await ready(mesh, "tag", *unfetchable)
        missing = Unfetchable(mesh)
        for name in unfetchable:
            missing.hide(name)
        sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN, delivery=DeliveryMode.REMOTE)

        async def request() -> list[str]:
            response = await sidecar.get("/", {"x-forbidden-test": "1"})
            if response.status_code == 503:
                for name in unfetchable:
                    assert DeliveryState.RUNNING not in states(mesh, name), response.text
            assert response.status_code == 200, (response.status_code, response.text)
            return [v for k, v in response.json()["headers"] if k.lower() == "x-header-append"]

        await mesh.until(request, lambda h: h == ["kept"], "the listener serving")

        async def reports() -> list[list[DeliveryState]]:
            await request()
            return [states(mesh, name) for name in unfetchable]

        await mesh.until(
            reports,
            lambda s: (
                all(x and DeliveryState.RUNNING not in x for x in s)
                and any(DeliveryState.REJECTED in x for x in s)
            ),
            "the unfetchable plugins reported not running",
        )
        for name in unfetchable:
            for proxy in mesh.report(name).proxies:
                assert proxy.state is not DeliveryState.RUNNING
                if proxy.state is DeliveryState.REJECTED:
                    assert name in proxy.message
                    assert "has not fetched the module" in proxy.message
        for _ in range(10):
            assert await request() == ["kept"]
        stats = await sidecar.envoy.stats()
        assert stats.get("wasmcustom.hits", 0) == 0
        assert stats.get("wasmcustom.web_bytes.connections", 0) == 0
        # Rejections named one extension each; the listener itself was never rejected.
        assert stats["listener_manager.lds.update_rejected"] == 0
        assert not mesh.running.control.proxy(sidecar.node_id).rejections  # type: ignore[union-attr]

        missing.restore()
        for name in unfetchable:
            await mesh.until_running(name)
        # Now the real modules run: the FAIL_CLOSE one denies a request without its header.
        denied = await sidecar.get("/")
        assert denied.status_code == 403
        allowed = await sidecar.get("/", ALLOWED)
        assert allowed.status_code == 200
        stats = await sidecar.envoy.stats()
        assert stats.get("wasmcustom.hits", 0) > 0
        assert stats.get("wasmcustom.web_bytes.connections", 0) > 0


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_a_proxy_recovers_when_the_module_server_comes_back(
    tmp_path: Path, delta: bool
) -> None:
    async with running_mesh(tmp_path) as mesh:
        mesh.control_plane()
        mesh.write("a.yaml", sme("bookinfo", "tag", "header-append", config={"value": "kept"}))
        await ready(mesh, "tag")
        modules = mesh.running.modules
        await modules.stop_listening()
        sidecar = await mesh.sidecar(
            "httpbin", "bookinfo", HTTPBIN, delivery=DeliveryMode.REMOTE, delta=delta
        )

        async def tag_states() -> list[DeliveryState]:
            assert await never_503_while_running(mesh, sidecar, "tag") == []
            return states(mesh, "tag")

        await mesh.until(
            tag_states, lambda s: s == [DeliveryState.REJECTED], "the module reported rejected"
        )
        (proxy,) = mesh.report("tag").proxies
        assert "has not fetched the module" in proxy.message

        await modules.listen_again()
        await mesh.until_running("tag")
        assert await never_503_while_running(mesh, sidecar, "tag") == ["kept"]


async def test_a_changed_image_the_proxy_cannot_fetch_leaves_the_old_module_running(
    tmp_path: Path,
) -> None:
    async with running_mesh(tmp_path) as mesh:
        mesh.control_plane()
        mesh.write("a.yaml", sme("bookinfo", "tag", "header-append", config={"value": "old"}))
        sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN, delivery=DeliveryMode.REMOTE)
        await mesh.until_running("tag")
        assert await never_503_while_running(mesh, sidecar, "tag") == ["old"]
        old_sha = mesh.report("tag").status.deployment.sha256

        # The same module with a custom section: other bytes, the same behaviour.
        variant = tmp_path / "header-append-variant.wasm"
        original = (build_examples() / "header-append.wasm").read_bytes()
        payload = b"\x07variant" + b"meshext"
        variant.write_bytes(original + b"\x00" + bytes([len(payload)]) + payload)
        modules = mesh.running.modules
        await modules.stop_listening()
        changed = json.loads(sme("bookinfo", "tag", "header-append", config={"value": "new"}))
        changed["spec"]["image"] = f"file:{variant}"
        mesh.write("a.yaml", json.dumps(changed))

        async def tag_report() -> Any:
            assert await never_503_while_running(mesh, sidecar, "tag") == ["old"]
            return mesh.report("tag")

        report = await mesh.until(
            tag_report,
            lambda r: (
                r.status.deployment.sha256 != old_sha
                and [p.state for p in r.proxies] == [DeliveryState.REJECTED]
            ),
            "the new module reported rejected",
        )
        (proxy,) = report.proxies
        assert "tag" in proxy.message
        assert "still running version" in proxy.message
        for _ in range(10):
            assert await never_503_while_running(mesh, sidecar, "tag") == ["old"]

        await modules.listen_again()
        await mesh.until_running("tag")
        assert await never_503_while_running(mesh, sidecar, "tag") == ["new"]
