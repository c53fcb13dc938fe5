"""The controller writes ServiceMeshExtension status on a real API server."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from tests.kube.support import (
    MODULE_SERVER,
    Cluster,
    Mesh,
    eventually,
    extension,
    running_controller,
    settings,
    wasm_file,
)
from tests.kube_harness import KubeApiServer

pytestmark = pytest.mark.e2e


def _status(cluster: Cluster, name: str, namespace: str) -> dict[str, Any] | None:
    found = cluster.get("servicemeshextensions.maistra.io", name, namespace)
    status = (found or {}).get("status")
    return status if isinstance(status, dict) else None


def _deployment_when(
    cluster: Cluster, name: str, namespace: str, *, ready: bool, generation: int = 1
) -> dict[str, Any] | None:
    status = _status(cluster, name, namespace)
    if status is None or status.get("observedGeneration") != generation:
        return None
    deployment: dict[str, Any] = status["deployment"]
    return status if deployment.get("ready") is ready else None


async def test_a_ready_extension_gets_the_maistra_status_fields_and_kubectl_shows_ready(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, tmp_path: Path
) -> None:
    module = wasm_file(tmp_path / "modules", "ready")
    sha = hashlib.sha256(module.read_bytes()).hexdigest()
    namespace = mesh.members[0]
    cluster.apply(extension("ready", namespace, f"file:{module}", phase="PreStats", priority=7))
    async with running_controller(kube_apiserver, tmp_path / "cache", settings(istio=None)):
        status = await eventually(
            lambda: _deployment_when(cluster, "ready", namespace, ready=True), "a ready status"
        )
    assert status["phase"] == "PreStats"
    assert status["priority"] == 7
    assert status["deployment"] == {
        "ready": True,
        "sha256": sha,
        "url": f"{MODULE_SERVER}/modules/sha256/{sha}",
    }
    row = cluster.kubectl("get", "sme", "ready", "-n", namespace, "--no-headers").split()
    assert row[:4] == ["ready", "true", "PreStats", "7"]


async def test_an_extension_outside_the_member_roll_gets_a_message_saying_so(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, tmp_path: Path
) -> None:
    outsider = cluster.namespace(f"{mesh.members[0]}-out")
    module = wasm_file(tmp_path / "modules", "outsider")
    cluster.apply(extension("outsider", outsider, f"file:{module}"))
    try:
        async with running_controller(kube_apiserver, tmp_path / "cache", settings(istio=None)):
            status = await eventually(
                lambda: _deployment_when(cluster, "outsider", outsider, ready=False),
                "a not-ready status",
            )
        message = status["deployment"]["message"]
        assert f"namespace '{outsider}' is not a control-plane namespace" in message
        assert "ServiceMeshMemberRoll" in message
        row = cluster.kubectl("get", "sme", "outsider", "-n", outsider, "--no-headers").split()
        assert row[1] == "false"
    finally:
        cluster.delete("sme", "outsider", outsider)


async def test_an_extension_with_a_missing_image_gets_a_message_and_no_module_fields(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, tmp_path: Path
) -> None:
    namespace = mesh.members[0]
    missing = tmp_path / "nowhere" / "module.wasm"
    cluster.apply(extension("missing", namespace, f"file:{missing}"))
    async with running_controller(kube_apiserver, tmp_path / "cache", settings(istio=None)):
        status = await eventually(
            lambda: _deployment_when(cluster, "missing", namespace, ready=False), "a failure"
        )
    assert status["deployment"] == {"ready": False, "message": f"no module file at {missing}"}


async def test_an_image_without_tag_or_digest_gets_a_parse_error_message(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, tmp_path: Path
) -> None:
    namespace = mesh.members[0]
    cluster.apply(extension("untagged", namespace, "quay.io/acme/header"))
    async with running_controller(kube_apiserver, tmp_path / "cache", settings(istio=None)):
        status = await eventually(
            lambda: _deployment_when(cluster, "untagged", namespace, ready=False), "a failure"
        )
    message = status["deployment"]["message"]
    assert message.startswith("failed to parse spec.image:")
    assert "neither a tag nor a digest" in message
    assert (status["phase"], status["priority"]) == ("PostAuthZ", 10)


@pytest.mark.usefixtures("istio_crds")
async def test_a_priority_istio_cannot_hold_is_reported_instead_of_clamped(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, tmp_path: Path
) -> None:
    namespace = mesh.members[0]
    module = wasm_file(tmp_path / "modules", "huge")
    exact = {"meshext.io/placement": "exact"}
    cluster.apply(extension("huge", namespace, f"file:{module}", priority=2**25, annotations=exact))
    async with running_controller(kube_apiserver, tmp_path / "cache") as controller:
        status = await eventually(
            lambda: _deployment_when(cluster, "huge", namespace, ready=False), "a failure"
        )
        assert controller.stats.created == 0
    assert status["priority"] == 2**25
    message = status["deployment"]["message"]
    assert message.startswith("cannot render for Istio: spec.priority: 33554432 is beyond")


async def test_a_priority_beyond_int32_is_refused_with_the_field_named(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, tmp_path: Path
) -> None:
    namespace = mesh.members[0]
    module = wasm_file(tmp_path / "modules", "beyond")
    cluster.apply(extension("beyond", namespace, f"file:{module}", priority=2**31))
    async with running_controller(kube_apiserver, tmp_path / "cache", settings(istio=None)):
        status = await eventually(
            lambda: _deployment_when(cluster, "beyond", namespace, ready=False), "a failure"
        )
    message = status["deployment"]["message"]
    assert "spec.priority" in message
    assert "2147483648 is outside the 32-bit range" in message
    assert cluster.get("wasmplugins.extensions.istio.io", "beyond", namespace) is None


async def test_disabled_extensions_in_the_control_plane_are_reported(
    kube_apiserver: KubeApiServer, cluster: Cluster, tmp_path: Path
) -> None:
    mesh = Mesh.create(cluster, members=1, enabled=False)
    module = wasm_file(tmp_path / "modules", "disabled")
    try:
        cluster.apply(extension("off", mesh.members[0], f"file:{module}"))
        async with running_controller(kube_apiserver, tmp_path / "cache", settings(istio=None)):
            status = await eventually(
                lambda: _deployment_when(cluster, "off", mesh.members[0], ready=False), "a failure"
            )
        assert "spec.techPreview.wasmExtensions.enabled: true" in status["deployment"]["message"]
    finally:
        mesh.remove()


async def test_status_follows_spec_changes_and_member_roll_changes(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, tmp_path: Path
) -> None:
    namespace = mesh.members[0]
    module = wasm_file(tmp_path / "modules", "follow")
    late = cluster.namespace(f"{namespace}-late")
    cluster.apply(
        extension("follow", namespace, f"file:{module}", priority=1),
        extension("late", late, f"file:{module}"),
    )
    try:
        async with running_controller(kube_apiserver, tmp_path / "cache", settings(istio=None)):
            await eventually(
                lambda: _deployment_when(cluster, "follow", namespace, ready=True), "ready"
            )
            await eventually(lambda: _deployment_when(cluster, "late", late, ready=False), "late")

            cluster.apply(extension("follow", namespace, f"file:{module}", priority=99))
            status = await eventually(
                lambda: _deployment_when(cluster, "follow", namespace, ready=True, generation=2),
                "the new generation observed",
            )
            assert status["priority"] == 99

            mesh.set_members([namespace, late])
            await eventually(lambda: _deployment_when(cluster, "late", late, ready=True), "member")
    finally:
        cluster.delete("sme", "late", late)


async def test_an_unchanged_status_is_not_written_again(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, tmp_path: Path
) -> None:
    namespace = mesh.members[0]
    module = wasm_file(tmp_path / "modules", "stable")
    cluster.apply(extension("stable", namespace, f"file:{module}"))
    async with running_controller(kube_apiserver, tmp_path / "cache", settings(istio=None)):
        await eventually(
            lambda: _deployment_when(cluster, "stable", namespace, ready=True), "ready"
        )
    stored = cluster.get("sme", "stable", namespace)
    assert stored is not None
    version = stored["metadata"]["resourceVersion"]
    async with running_controller(
        kube_apiserver, tmp_path / "cache", settings(istio=None)
    ) as again:
        await again.queue.wait_idle()
        assert again.stats.status_writes == 0
    after = cluster.get("sme", "stable", namespace)
    assert after is not None
    assert after["metadata"]["resourceVersion"] == version
