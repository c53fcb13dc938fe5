"""Extensions rendered into Istio resources that Istio's own CRDs accept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshext.istio.render import IstioOptions
from tests.kube.support import (
    ENVOY_FILTERS,
    MODULE_SERVER,
    WASM_PLUGINS,
    Cluster,
    Mesh,
    eventually,
    extension,
    running_controller,
    settings,
    wasm_file,
)
from tests.kube_harness import KubeApiServer

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("istio_crds")]

EXACT = {"meshext.io/placement": "exact"}


def _owned_by(cluster: Cluster, resource: str, owner: str) -> list[dict[str, Any]]:
    return [
        o
        for o in cluster.list(resource)
        if o["metadata"].get("annotations", {}).get("meshext.io/owner") == owner
    ]


def _ready(cluster: Cluster, name: str, namespace: str) -> dict[str, Any] | None:
    found = cluster.get("sme", name, namespace) or {}
    status = found.get("status") or {}
    return found if status.get("deployment", {}).get("ready") is True else None


async def test_a_ready_extension_becomes_a_wasm_plugin_istio_accepts(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, tmp_path: Path
) -> None:
    namespace = mesh.members[0]
    module = wasm_file(tmp_path / "modules", "plugin")
    cluster.apply(
        extension(
            "plugin",
            namespace,
            f"file:{module}",
            phase="PostAuthN",
            priority=5,
            config={"header": "x-test"},
            workloadSelector={"labels": {"app": "web"}},
        )
    )
    async with running_controller(kube_apiserver, tmp_path / "cache") as controller:
        plugin = await eventually(lambda: cluster.get(WASM_PLUGINS, "plugin", namespace), "plugin")
        await eventually(lambda: _ready(cluster, "plugin", namespace), "ready status")
        assert controller.stats.created == 1
    sme = cluster.get("sme", "plugin", namespace)
    assert sme is not None
    assert plugin["spec"]["phase"] == "AUTHZ"
    assert plugin["spec"]["priority"] == 5
    assert plugin["spec"]["selector"] == {"matchLabels": {"app": "web"}}
    assert plugin["spec"]["pluginConfig"] == {"header": "x-test"}
    sha = sme["status"]["deployment"]["sha256"]
    assert plugin["spec"]["url"] == f"{MODULE_SERVER}/modules/sha256/{sha}"
    assert plugin["spec"]["sha256"] == sha
    (owner,) = plugin["metadata"]["ownerReferences"]
    assert owner["uid"] == sme["metadata"]["uid"]
    assert owner["kind"] == "ServiceMeshExtension"


async def test_exact_placement_becomes_an_envoy_filter_istio_accepts(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, tmp_path: Path
) -> None:
    namespace = mesh.members[0]
    module = wasm_file(tmp_path / "modules", "exact")
    cluster.apply(
        extension(
            "exact",
            namespace,
            f"file:{module}",
            version="v1alpha1",
            phase="PostStats",
            config="raw text",
            annotations=EXACT,
        )
    )
    async with running_controller(kube_apiserver, tmp_path / "cache"):
        envoy_filter = await eventually(
            lambda: cluster.get(ENVOY_FILTERS, "exact", namespace), "an EnvoyFilter"
        )
    patch = envoy_filter["spec"]["configPatches"][0]
    assert patch["patch"]["operation"] == "INSERT_BEFORE"
    config = patch["patch"]["value"]["typed_config"]["config"]
    assert config["configuration"]["value"] == "raw text"
    assert cluster.get(WASM_PLUGINS, "exact", namespace) is None


async def test_a_mesh_wide_extension_is_rendered_into_istios_root_namespace(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, tmp_path: Path
) -> None:
    module = wasm_file(tmp_path / "modules", "global")
    name = f"global-{mesh.control_plane}"
    cluster.apply(extension(name, mesh.control_plane, f"file:{module}", phase="PreAuthN"))
    async with running_controller(kube_apiserver, tmp_path / "cache"):
        plugin = await eventually(lambda: cluster.get(WASM_PLUGINS, name, "istio-system"), "plugin")
        assert (
            plugin["metadata"]["annotations"]["meshext.io/owner"] == f"{mesh.control_plane}/{name}"
        )
        assert "ownerReferences" not in plugin["metadata"]
        cluster.delete("sme", name, mesh.control_plane)
        await eventually(
            lambda: cluster.get(WASM_PLUGINS, name, "istio-system") is None or None, "deletion"
        )


async def test_deleting_an_extension_deletes_what_was_rendered_for_it(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, tmp_path: Path
) -> None:
    namespace = mesh.members[0]
    module = wasm_file(tmp_path / "modules", "doomed")
    cluster.apply(
        extension("doomed", namespace, f"file:{module}"),
        extension("doomed-exact", namespace, f"file:{module}", annotations=EXACT),
    )
    async with running_controller(kube_apiserver, tmp_path / "cache") as controller:
        await eventually(lambda: cluster.get(WASM_PLUGINS, "doomed", namespace), "plugin")
        await eventually(lambda: cluster.get(ENVOY_FILTERS, "doomed-exact", namespace), "filter")
        cluster.delete("sme", "doomed", namespace)
        cluster.delete("sme", "doomed-exact", namespace)
        await eventually(
            lambda: (
                (
                    cluster.get(WASM_PLUGINS, "doomed", namespace) is None
                    and cluster.get(ENVOY_FILTERS, "doomed-exact", namespace) is None
                )
                or None
            ),
            "deletion of the rendered objects",
        )
        assert controller.stats.deleted == 2


async def test_an_edited_rendered_object_is_restored(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, tmp_path: Path
) -> None:
    namespace = mesh.members[0]
    module = wasm_file(tmp_path / "modules", "drift")
    cluster.apply(extension("drift", namespace, f"file:{module}", priority=3))
    async with running_controller(kube_apiserver, tmp_path / "cache") as controller:
        original = await eventually(lambda: cluster.get(WASM_PLUGINS, "drift", namespace), "plugin")
        cluster.kubectl(
            "patch",
            WASM_PLUGINS,
            "drift",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            '{"spec": {"priority": 1000, "failStrategy": "FAIL_OPEN"}}',
        )

        def restored() -> dict[str, Any] | None:
            current = cluster.get(WASM_PLUGINS, "drift", namespace)
            if current is None or current["spec"] != original["spec"]:
                return None
            return current

        await eventually(restored, "the edit undone")
        assert controller.stats.updated >= 1


async def test_changing_the_placement_swaps_the_wasm_plugin_for_an_envoy_filter(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, tmp_path: Path
) -> None:
    namespace = mesh.members[0]
    module = wasm_file(tmp_path / "modules", "swap")
    cluster.apply(extension("swap", namespace, f"file:{module}"))
    async with running_controller(kube_apiserver, tmp_path / "cache"):
        await eventually(lambda: cluster.get(WASM_PLUGINS, "swap", namespace), "plugin")
        cluster.apply(extension("swap", namespace, f"file:{module}", annotations=EXACT))
        await eventually(lambda: cluster.get(ENVOY_FILTERS, "swap", namespace), "filter")
        await eventually(
            lambda: cluster.get(WASM_PLUGINS, "swap", namespace) is None or None, "plugin gone"
        )


async def test_a_foreign_object_with_the_same_name_is_left_alone_and_reported(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, tmp_path: Path
) -> None:
    namespace = mesh.members[0]
    module = wasm_file(tmp_path / "modules", "taken")
    foreign = {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "taken", "namespace": namespace},
        "spec": {"url": "oci://registry.example/other:v1"},
    }
    cluster.apply(foreign, extension("taken", namespace, f"file:{module}"))

    def reported() -> str | None:
        found = cluster.get("sme", "taken", namespace) or {}
        message = (found.get("status") or {}).get("deployment", {}).get("message")
        return message if isinstance(message, str) else None

    async with running_controller(kube_apiserver, tmp_path / "cache"):
        message = await eventually(reported, "the conflict reported")
    assert "WasmPlugin" in message
    assert "not managed by this ServiceMeshExtension" in message
    current = cluster.get(WASM_PLUGINS, "taken", namespace)
    assert current is not None
    assert current["spec"] == foreign["spec"]
    cluster.delete(WASM_PLUGINS, "taken", namespace)


async def test_objects_rendered_for_extensions_deleted_while_no_controller_ran_are_removed(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, tmp_path: Path
) -> None:
    namespace = mesh.members[0]
    module = wasm_file(tmp_path / "modules", "orphan")
    cluster.apply(extension("orphan", namespace, f"file:{module}"))
    async with running_controller(kube_apiserver, tmp_path / "cache"):
        await eventually(lambda: cluster.get(WASM_PLUGINS, "orphan", namespace), "plugin")
    cluster.delete("sme", "orphan", namespace)
    async with running_controller(kube_apiserver, tmp_path / "cache"):
        await eventually(
            lambda: cluster.get(WASM_PLUGINS, "orphan", namespace) is None or None, "orphan gone"
        )


async def test_oci_mode_renders_the_image_reference_for_istio_to_pull(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, tmp_path: Path
) -> None:
    namespace = mesh.members[0]
    module = wasm_file(tmp_path / "modules", "oci")
    cluster.apply(extension("oci", namespace, f"file:{module}", imagePullPolicy="Always"))
    oci = settings(istio=IstioOptions(module_source="oci"))
    async with running_controller(kube_apiserver, tmp_path / "cache", oci):
        plugin = await eventually(lambda: cluster.get(WASM_PLUGINS, "oci", namespace), "plugin")
    assert plugin["spec"]["url"] == f"file://{module}"
    assert plugin["spec"]["imagePullPolicy"] == "Always"
