"""Restarting meshext, and delivering modules over HTTP from meshext's module server."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshext.envoy.node import DeliveryMode
from meshext.server.app import running_control_plane
from meshext.server.delivery import DeliveryState
from tests.envoy.harness import eventually
from tests.network import free_port
from tests.server.mesh import running_mesh, serve_options, sme

pytestmark = pytest.mark.e2e

HTTPBIN = {"app": "httpbin"}


def update_counts(stats: dict[str, int]) -> dict[str, int]:
    return {
        name: value
        for name, value in stats.items()
        if name.endswith((".update_success", ".update_attempt", ".update_rejected"))
        and ("lds" in name or "cds" in name or "extension_config_discovery" in name)
    }


async def test_restarting_meshext_keeps_sidecars_serving_and_sends_nothing_new(
    tmp_path: Path,
) -> None:
    options = serve_options(tmp_path, xds_port=free_port())
    async with running_mesh(tmp_path, options) as mesh:
        mesh.control_plane()
        mesh.write("a.yaml", sme("bookinfo", "tag", "header-append", config={"value": "kept"}))
        sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN)
        await mesh.until(sidecar.appended, lambda h: h == ["kept"], "the header")
        await mesh.until_running("tag")
        # Stop meshext (the context below starts a new one on the same address);
        # the sidecar is kept running by hand.
        mesh.sidecars.remove(sidecar)

    try:
        assert await sidecar.appended() == ["kept"]  # served with no control plane at all
        before = update_counts(await sidecar.envoy.stats())
        connected_before = (await sidecar.envoy.stats())["control_plane.connected_state"]
        assert connected_before == 0

        async with running_control_plane(options) as running:

            async def connected() -> int:
                return (await sidecar.envoy.stats())["control_plane.connected_state"]

            async def tag_states() -> list[DeliveryState]:
                reports = [r for r in running.control.reports() if r.key.name == "tag"]
                return [p.state for r in reports for p in r.proxies]

            await eventually(connected, lambda c: c == 1, "the sidecar reconnected")
            await eventually(
                tag_states, lambda s: s == [DeliveryState.RUNNING], "the extension known running"
            )
            assert await sidecar.appended() == ["kept"]
            after = update_counts(await sidecar.envoy.stats())
            # Nothing changed, so nothing new was accepted or rejected: every update
            # counter (success, rejected) is where it was before the restart.
            assert {k: v for k, v in after.items() if not k.endswith("update_attempt")} == {
                k: v for k, v in before.items() if not k.endswith("update_attempt")
            }
            assert sum(c.responses_sent for c in running.ads.connections()) == 0
    finally:
        await sidecar.envoy.stop()
        await sidecar.app.stop()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_modules_delivered_over_https_are_verified_and_run(
    tmp_path: Path, delta: bool
) -> None:
    async with running_mesh(tmp_path) as mesh:
        mesh.control_plane()
        mesh.write("a.yaml", sme("bookinfo", "tag", "header-append", config={"value": "remote"}))
        sidecar = await mesh.sidecar(
            "httpbin", "bookinfo", HTTPBIN, delivery=DeliveryMode.REMOTE, delta=delta
        )
        await mesh.until(sidecar.appended, lambda h: h == ["remote"], "the remotely fetched module")
        report = await mesh.until_running("tag")
        url = report.status.deployment.url or ""
        assert url.startswith(mesh.running.modules.base_url + "/modules/sha256/")
        assert url.startswith("https://")
        stats = await sidecar.envoy.stats()
        assert any(k.startswith("cluster.meshext.modules.") for k in stats)
        # The fetch went over TLS, verified against the mesh CA.
        assert stats.get("cluster.meshext.modules.ssl.handshake", 0) >= 1
