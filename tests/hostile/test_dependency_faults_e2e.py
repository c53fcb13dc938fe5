"""A dependency fails while a change waits on it: the status says what still runs.

A real registry serves an image; the extension runs it. The registry goes down and the
extension is changed to another tag: the old module keeps being served, and the status
says so (ready, the old digests, and a message naming the pending image and why)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from meshext.images.config import RegistryConfig
from meshext.mesh.resolution import ImageFormat
from meshext.server.control import ExtensionReport
from tests.hostile.corpus import sme
from tests.images.registry import start_registry
from tests.images.test_registry_pull import push_each_format
from tests.images.wasm import proxy_wasm_module
from tests.server.mesh import running_mesh, serve_options

pytestmark = pytest.mark.e2e


async def test_a_changed_image_with_its_registry_down_keeps_the_old_module_and_says_why(
    tmp_path: Path,
) -> None:
    registry = start_registry(tmp_path / "registry")
    try:
        image = push_each_format(tmp_path, registry, proxy_wasm_module("v1"))[
            ImageFormat.WASM_ARTIFACT
        ]
        options = dataclasses.replace(
            serve_options(tmp_path),
            registry=RegistryConfig(insecure_registries=frozenset({"127.0.0.1"})),
        )
        async with running_mesh(tmp_path, options) as mesh:
            mesh.control_plane()
            mesh.write("ext.yaml", json.dumps(sme("moving", {"image": image})))

            async def report() -> ExtensionReport | None:
                reports = mesh.running.control.reports()
                return next((r for r in reports if r.key.name == "moving"), None)

            first = await mesh.until(
                report, lambda r: r is not None and r.status.deployment.ready, "the image resolved"
            )
            assert first is not None
            registry.stop()
            moved = image.rsplit(":", 1)[0] + ":v2"
            mesh.write("ext.yaml", json.dumps(sme("moving", {"image": moved})))
            pending = await mesh.until(
                report,
                lambda r: r is not None and "could not be" in (r.status.deployment.message or ""),
                "the pending change reported",
            )
            assert pending is not None
    finally:
        registry.stop()
    deployment = pending.status.deployment
    assert deployment.ready is True
    assert deployment.sha256 == first.status.deployment.sha256
    assert deployment.container_sha256 == first.status.deployment.container_sha256
    message = deployment.message or ""
    assert message.startswith(f"{moved} could not be resolved")
    assert (
        f"still running the module resolved before (image {first.status.deployment.container_sha256}"
        in message
    )
