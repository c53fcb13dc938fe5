"""The cluster as meshext's configuration source and status sink."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from meshext.api.extension import (
    DeploymentStatus,
    ExtensionStatus,
    ServiceMeshExtension,
)
from meshext.api.meta import ResourceKey
from meshext.api.phase import Phase
from meshext.kube.client import KubeClient
from meshext.kube.source import KubernetesSource
from meshext.kube.status import KubernetesStatusSink
from meshext.sources.folder import LoadResult
from tests.kube.support import Cluster, Mesh, extension
from tests.kube_harness import KubeApiServer

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("istio_crds")]

IMAGE = "quay.io/acme/header:v1"


@asynccontextmanager
async def client_for(api: KubeApiServer) -> AsyncIterator[KubeClient]:
    client = await KubeClient.connect(api.kubeconfig_path, request_timeout=10)
    try:
        yield client
    finally:
        await client.close()


def _mine(result: LoadResult, mesh: Mesh) -> dict[str, str]:
    """Location -> kind of every resource in the mesh's namespaces."""
    namespaces = {mesh.control_plane, *mesh.members}
    return {
        str(r.location.path): r.key.kind for r in result.resources if r.key.namespace in namespaces
    }


async def test_the_source_yields_every_resource_with_its_kubernetes_location(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh
) -> None:
    ns = mesh.members[0]
    plugin = {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "user-plugin", "namespace": ns},
        "spec": {"url": "oci://quay.io/acme/plugin:v1", "phase": "AUTHN"},
    }
    rendered = {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {
            "name": "rendered",
            "namespace": ns,
            "labels": {"app.kubernetes.io/managed-by": "meshext"},
        },
        "spec": {"url": "oci://quay.io/acme/plugin:v1"},
    }
    cluster.apply(
        extension("alpha", ns, IMAGE, version="v1alpha1", config="plain"), plugin, rendered
    )
    async with client_for(kube_apiserver) as client:
        updates = KubernetesSource(client).updates()
        try:
            first = await anext(updates)
        finally:
            await updates.aclose()
    assert _mine(first, mesh) == {
        f"kubernetes://{mesh.control_plane}/ServiceMeshControlPlane/basic": (
            "ServiceMeshControlPlane"
        ),
        f"kubernetes://{mesh.control_plane}/ServiceMeshMemberRoll/default": (
            "ServiceMeshMemberRoll"
        ),
        f"kubernetes://{ns}/ServiceMeshExtension/alpha": "ServiceMeshExtension",
        f"kubernetes://{ns}/WasmPlugin/user-plugin": "WasmPlugin",
    }
    (alpha,) = [r.resource for r in first.resources if r.key.name == "alpha"]
    assert isinstance(alpha, ServiceMeshExtension)
    assert alpha.module_config() == "plain"
    cluster.delete("wasmplugins.extensions.istio.io", "user-plugin", ns)
    cluster.delete("wasmplugins.extensions.istio.io", "rendered", ns)


async def test_a_change_yields_a_new_complete_state_and_bad_objects_become_errors(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh
) -> None:
    ns = mesh.members[0]
    cluster.apply(extension("changing", ns, IMAGE, priority=1))
    async with client_for(kube_apiserver) as client:
        updates = KubernetesSource(client, wasm_plugins=False).updates()
        try:
            first = await anext(updates)
            assert f"kubernetes://{ns}/ServiceMeshExtension/changing" in _mine(first, mesh)
            cluster.apply(
                extension("changing", ns, IMAGE, priority=2),
                extension("untagged", ns, "quay.io/acme/header"),
            )
            while True:
                state = await anext(updates)
                changing = [r.resource for r in state.resources if r.key.name == "changing"]
                broken = [e for e in state.errors if e.key and e.key.name == "untagged"]
                if (
                    changing
                    and isinstance(changing[0], ServiceMeshExtension)
                    and changing[0].spec.priority == 2
                    and broken
                ):
                    break
        finally:
            await updates.aclose()
    (error,) = broken
    assert str(error.location).startswith(f"kubernetes://{ns}/ServiceMeshExtension/untagged")
    assert error.field == "spec.image"


async def test_the_status_sink_writes_only_changes_and_clears_stale_fields(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh
) -> None:
    ns = mesh.members[0]
    cluster.apply(extension("sunk", ns, IMAGE))
    key = ResourceKey("ServiceMeshExtension", ns, "sunk")
    ready = ExtensionStatus(
        phase=Phase.PRE_STATS,
        priority=3,
        observed_generation=1,
        deployment=DeploymentStatus(ready=True, sha256="e" * 64, url="http://m/x"),
    )
    failed = ready.model_copy(
        update={"deployment": DeploymentStatus(ready=False, message="registry down")}
    )
    async with client_for(kube_apiserver) as client:
        sink = KubernetesStatusSink(client)
        await sink.publish(key, ready)
        await sink.publish(key, ready)
        assert sink.writes == 1
        await sink.publish(ResourceKey("WasmPlugin", ns, "sunk"), ready)
        await sink.publish(key, failed)
        assert sink.writes == 2
        silent = KubernetesStatusSink(client, should_write=lambda: False)
        await silent.publish(key, ready)
        assert silent.writes == 0
    stored = cluster.get("sme", "sunk", ns)
    assert stored is not None
    assert stored["status"]["deployment"] == {"ready": False, "message": "registry down"}
    assert stored["status"]["phase"] == "PreStats"
