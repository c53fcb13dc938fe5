"""Remote delivery tells the truth when a proxy cannot fetch a module.

Envoy rejects a remote module until it is in its cache (``nack_on_code_cache_miss``),
so meshext knows when a proxy could not fetch one: meanwhile the extension's filter
runs a stand-in (pass-through for a FAIL_OPEN extension, 503 for a fail-closed one),
the listener and every other extension keep serving, the module is offered again
with backoff, and status says Rejected or Pending in Envoy's words until the proxy
runs it, never Running before.

A module is made unfetchable by taking its file out of meshext's module cache after
its pre-flight (the module server then answers 404), or by stopping the module server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshext.envoy.node import DeliveryMode
from meshext.envoy.standin import CLOSED_BODY
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


ALLOWED = {"x-allowed": "yes"}


async def through(
    mesh: Mesh, sidecar: Sidecar, names: tuple[str, ...], headers: Mapping[str, str] | None = None
) -> list[str]:
    """A request through the sidecar: the ``x-header-append`` values the app received, or
    ``["closed"]`` when a fail-closed stand-in answered. Fails on any 503 while status
    says every extension in ``names`` runs, and on any other answer."""
    response = await sidecar.get("/", headers)
    if response.status_code == 503:
        assert response.text == CLOSED_BODY.decode(), response.text
        assert any(DeliveryState.RUNNING not in states(mesh, n) for n in names), response.text
        return ["closed"]
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
            wasm_plugin("count", "request-counter", {"name": "hits"}, failStrategy="FAIL_OPEN"),
        )
        await ready(mesh, "tag", "count")
        missing = Unfetchable(mesh)
        missing.hide("count")
        sidecar = await mesh.sidecar(
            "httpbin", "bookinfo", HTTPBIN, delivery=DeliveryMode.REMOTE, delta=delta
        )
        names = ("tag", "count")
        await mesh.until(
            lambda: through(mesh, sidecar, names),
            lambda h: h == ["kept"],
            "the fetchable extension running beside the stand-in",
        )
        await mesh.until_running("tag")

        async def count_report() -> Any:
            assert await through(mesh, sidecar, names) == ["kept"]
            return mesh.report("count").proxies

        (rejected,) = await mesh.until(
            count_report,
            lambda ps: len(ps) == 1 and ps[0].state is DeliveryState.REJECTED,
            "the unfetchable module reported rejected",
        )
        assert "Unable to create Wasm plugin count" in rejected.message
        assert "has not fetched the module" in rejected.message
        assert "lets traffic through" in rejected.message
        for _ in range(20):
            assert await through(mesh, sidecar, names) == ["kept"]
        assert states(mesh, "count") != [DeliveryState.RUNNING]

        missing.restore()
        await mesh.until_running("count")

        async def hits() -> int:
            assert await through(mesh, sidecar, names) == ["kept"]
            return (await sidecar.envoy.stats()).get("wasmcustom.hits", 0)

        await mesh.until(hits, lambda n: n > 0, "the fetched module counting requests")


async def test_several_unfetchable_modules_of_both_layers_keep_the_listener_serving(
    tmp_path: Path,
) -> None:
    async with running_mesh(tmp_path) as mesh:
        mesh.control_plane()
        mesh.write(
            "a.yaml",
            sme("bookinfo", "tag", "header-append", config={"value": "kept"}),
            wasm_plugin("open", "request-counter", {"name": "hits"}, failStrategy="FAIL_OPEN"),
            wasm_plugin(
                "bytes", "byte-counter", {"name": "web_bytes"}, type="NETWORK",
                failStrategy="FAIL_OPEN",
            ),
        )  # fmt: skip
        unfetchable = ("open", "bytes")
        names = ("tag", *unfetchable)
        await ready(mesh, *names)
        missing = Unfetchable(mesh)
        for name in unfetchable:
            missing.hide(name)
        sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN, delivery=DeliveryMode.REMOTE)
        await mesh.until(
            lambda: through(mesh, sidecar, names), lambda h: h == ["kept"], "the listener serving"
        )

        async def reports() -> list[list[DeliveryState]]:
            assert await through(mesh, sidecar, names) == ["kept"]
            return [states(mesh, name) for name in unfetchable]

        await mesh.until(
            reports,
            lambda s: s == [[DeliveryState.REJECTED]] * 2,
            "both unfetchable modules reported rejected",
        )
        for name in unfetchable:
            (proxy,) = mesh.report(name).proxies
            assert name in proxy.message
        for _ in range(10):
            assert await through(mesh, sidecar, names) == ["kept"]
        stats = await sidecar.envoy.stats()
        assert stats.get("wasmcustom.hits", 0) == 0
        assert stats.get("wasmcustom.web_bytes.connections", 0) == 0
        # Rejections named one extension each; the listener itself was never rejected.
        assert stats["listener_manager.lds.update_rejected"] == 0
        record = mesh.running.control.proxy(sidecar.node_id)
        assert record is not None
        assert not record.rejections

        missing.restore()
        for name in unfetchable:
            await mesh.until_running(name)
        assert await through(mesh, sidecar, names) == ["kept"]
        stats = await sidecar.envoy.stats()
        assert stats.get("wasmcustom.hits", 0) > 0
        assert stats.get("wasmcustom.web_bytes.connections", 0) > 0


async def test_a_fail_closed_module_the_proxy_cannot_fetch_is_never_bypassed(
    tmp_path: Path,
) -> None:
    # A fail-closed extension (a ServiceMeshExtension's default, WasmPlugin FAIL_CLOSE)
    # that enforces something must not be skipped because its module has not arrived:
    # its stand-in answers 503, and status says why, never Running.
    async with running_mesh(tmp_path) as mesh:
        mesh.control_plane()
        mesh.write(
            "a.yaml",
            sme("bookinfo", "tag", "header-append", config={"value": "kept"}),
            wasm_plugin(
                "guard", "deny-unless-header", {"name": "x-allowed"}, failStrategy="FAIL_CLOSE"
            ),
        )
        names = ("tag", "guard")
        await ready(mesh, *names)
        missing = Unfetchable(mesh)
        missing.hide("guard")
        sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN, delivery=DeliveryMode.REMOTE)

        async def guard_states() -> list[DeliveryState]:
            assert await through(mesh, sidecar, names, ALLOWED) in (["closed"], [])
            return states(mesh, "guard")

        await mesh.until(
            guard_states, lambda s: s == [DeliveryState.REJECTED], "the guard reported rejected"
        )
        (proxy,) = mesh.report("guard").proxies
        assert "answers 503 (fail-closed)" in proxy.message
        for _ in range(10):
            assert await through(mesh, sidecar, names, ALLOWED) == ["closed"]

        missing.restore()
        await mesh.until_running("guard")
        assert await through(mesh, sidecar, names, ALLOWED) == ["kept"]
        denied = await sidecar.get("/")
        assert denied.status_code == 403


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
            # fails closed meanwhile, as a ServiceMeshExtension does by default
            assert await through(mesh, sidecar, ("tag",)) == ["closed"]
            return states(mesh, "tag")

        await mesh.until(
            tag_states, lambda s: s == [DeliveryState.REJECTED], "the module reported rejected"
        )
        (proxy,) = mesh.report("tag").proxies
        assert "has not fetched the module" in proxy.message

        await modules.listen_again()
        await mesh.until_running("tag")
        assert await through(mesh, sidecar, ("tag",)) == ["kept"]


async def test_a_changed_image_the_proxy_cannot_fetch_leaves_the_old_module_running(
    tmp_path: Path,
) -> None:
    async with running_mesh(tmp_path) as mesh:
        mesh.control_plane()
        mesh.write("a.yaml", sme("bookinfo", "tag", "header-append", config={"value": "old"}))
        sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN, delivery=DeliveryMode.REMOTE)
        await mesh.until_running("tag")
        assert await through(mesh, sidecar, ("tag",)) == ["old"]
        old_sha = mesh.report("tag").status.deployment.sha256

        # The same module with a custom section: other bytes, the same behaviour.
        variant = tmp_path / "header-append-variant.wasm"
        original = (build_examples() / "header-append.wasm").read_bytes()
        payload = b"\x07variant" + b"meshext"
        variant.write_bytes(original + b"\x00" + bytes([len(payload)]) + payload)
        modules = mesh.running.modules
        await modules.stop_listening()
        # Only the image changes: a changed config would reach the old module at once
        # (the old module serves the new config while the new image resolves).
        changed = json.loads(sme("bookinfo", "tag", "header-append", config={"value": "old"}))
        changed["spec"]["image"] = f"file:{variant}"
        mesh.write("a.yaml", json.dumps(changed))

        async def tag_report() -> Any:
            assert await through(mesh, sidecar, ("tag",)) == ["old"]
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
        assert "Unable to create Wasm plugin tag" in proxy.message
        assert "still running version" in proxy.message
        for _ in range(10):
            assert await through(mesh, sidecar, ("tag",)) == ["old"]

        new_sha = report.status.deployment.sha256
        await modules.listen_again()
        await mesh.until_running("tag")
        assert mesh.report("tag").status.deployment.sha256 == new_sha
        assert await through(mesh, sidecar, ("tag",)) == ["old"]


async def test_a_fail_closed_network_module_the_proxy_cannot_fetch_closes_connections(
    tmp_path: Path,
) -> None:
    async with running_mesh(tmp_path) as mesh:
        mesh.control_plane()
        mesh.write(
            "a.yaml",
            sme("bookinfo", "tag", "header-append", config={"value": "kept"}),
            wasm_plugin("bytes", "byte-counter", {"name": "web_bytes"}, type="NETWORK"),
        )
        names = ("tag", "bytes")
        await ready(mesh, *names)
        missing = Unfetchable(mesh)
        missing.hide("bytes")
        sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN, delivery=DeliveryMode.REMOTE)

        async def attempt() -> str:
            try:
                response = await sidecar.get("/")
            except httpx.TransportError:  # the stand-in closed the connection
                return "closed"
            # A request served while the plugin does not run would bypass it.
            assert states(mesh, "bytes") == [DeliveryState.RUNNING], response.status_code
            return f"status {response.status_code}"

        async def bytes_states() -> list[DeliveryState]:
            assert await attempt() == "closed"
            return states(mesh, "bytes")

        await mesh.until(
            bytes_states, lambda s: s == [DeliveryState.REJECTED], "the plugin reported rejected"
        )
        for _ in range(5):
            assert await attempt() == "closed"
        (proxy,) = mesh.report("bytes").proxies
        assert "closes every connection (fail-closed)" in proxy.message

        missing.restore()
        await mesh.until_running("bytes")
        assert await through(mesh, sidecar, names) == ["kept"]
        stats = await sidecar.envoy.stats()
        assert stats.get("wasmcustom.web_bytes.connections", 0) > 0
