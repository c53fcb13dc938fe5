"""The Maistra status fields computed for an extension."""

from __future__ import annotations

from meshext.api.manifest import ExtensionManifest
from meshext.api.phase import Phase
from meshext.mesh.resolution import ImageFormat, Resolution, ResolvedModule
from meshext.mesh.status import extension_status
from tests.core.support import CONTROL_PLANE_NS, extension, topology

MODULE = ResolvedModule(
    sha256="f" * 64,
    path="/cache/f.wasm",
    size=3,
    image_digest="sha256:" + "e" * 64,
    image_format=ImageFormat.MAISTRA,
    manifest=ExtensionManifest.model_validate(
        {"schemaVersion": 1, "name": "x", "module": "x.wasm", "phase": "PreStats", "priority": 9}
    ),
)


def url(sha256: str) -> str:
    return f"http://meshext:15080/modules/sha256/{sha256}"


def test_a_ready_extension_reports_resolved_phase_priority_and_both_digests() -> None:
    ext = extension("bookinfo", "a", phase=None, priority=None)
    status = extension_status(ext, Resolution.ready(MODULE), url, topology(["bookinfo"]))
    assert status.phase is Phase.PRE_STATS
    assert status.priority == 9
    assert status.observed_generation == 1
    assert status.deployment.ready
    assert status.deployment.sha256 == "f" * 64
    assert status.deployment.container_sha256 == "sha256:" + "e" * 64
    assert status.deployment.url == url("f" * 64)
    assert status.deployment.message is None


def test_a_failed_image_clears_the_deployment_and_says_why() -> None:
    ext = extension("bookinfo", "a")
    failure = Resolution.failed("unauthorized: check imagePullSecrets 'regcred'")
    status = extension_status(ext, failure, url, topology(["bookinfo"]))
    assert not status.deployment.ready
    assert status.deployment.sha256 is None
    assert status.deployment.url is None
    assert status.deployment.message == "unauthorized: check imagePullSecrets 'regcred'"


def test_an_extension_outside_the_mesh_is_not_ready_whatever_its_image() -> None:
    ext = extension("sandbox", "a")
    status = extension_status(ext, Resolution.ready(MODULE), url, topology(["bookinfo"]))
    assert not status.deployment.ready
    assert "'sandbox' is not part of any mesh" in (status.deployment.message or "")


def test_disabled_extensions_are_reported_on_every_extension_of_the_mesh() -> None:
    ext = extension(CONTROL_PLANE_NS, "a")
    status = extension_status(
        ext, Resolution.ready(MODULE), url, topology(["bookinfo"], enabled=False)
    )
    assert not status.deployment.ready
    assert "wasmExtensions.enabled: true" in (status.deployment.message or "")


def test_an_unresolved_image_is_reported_pending() -> None:
    status = extension_status(extension("bookinfo", "a"), None, url, topology(["bookinfo"]))
    assert not status.deployment.ready
    assert status.deployment.message == "image not resolved yet"
