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
        print("REJECTION:", rejected.message)
        assert "count" in rejected.message
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
