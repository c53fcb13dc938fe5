"""deploy/ applies cleanly, and its RBAC is exactly enough for the controller."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshext.kube.client import KubeClient
from meshext.kube.secrets import KubePullSecretStore
from tests.kube.support import (
    Cluster,
    Mesh,
    eventually,
    extension,
    running_controller,
    settings,
    unique,
    wasm_file,
    write_kubeconfig,
)
from tests.kube_harness import REPO_ROOT, KubeApiServer

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("istio_crds")]

DEPLOY = REPO_ROOT / "deploy"
SERVICE_ACCOUNT = "system:serviceaccount:meshext-system:meshext"
RBAC_KINDS = {
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
}


@pytest.fixture
def cluster(cluster: Cluster) -> Cluster:
    """The shared cluster with the namespace deploy/ installs into."""
    cluster.namespace("meshext-system")
    return cluster


def _rendered(cluster: Cluster, folder: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(cluster.kubectl("kustomize", str(folder))) if d]


def _dry_run(cluster: Cluster, folder: Path) -> Any:
    # Server-side apply, as docs/kubernetes.md recommends, and as the same field manager
    # that installed this session's CRDs (with a url: clientConfig pointing at the test
    # webhook), so the webhook Service of deploy/ replaces that url as on a fresh cluster.
    return cluster.try_kubectl(
        "apply",
        "--server-side",
        "--field-manager=tests",
        "--force-conflicts",
        "--dry-run=server",
        "-k",
        str(folder),
    )


def test_the_base_passes_server_side_dry_run(cluster: Cluster) -> None:
    result = _dry_run(cluster, DEPLOY / "base")
    assert result.returncode == 0, result.stderr
    applied = result.stdout.splitlines()
    assert applied
    assert all(line.endswith("(server dry run)") for line in applied)
    for expected in (
        "customresourcedefinition.apiextensions.k8s.io/servicemeshextensions.maistra.io",
        "deployment.apps/meshext",
        "service/meshext",
        "clusterrole.rbac.authorization.k8s.io/meshext-controller",
        "role.rbac.authorization.k8s.io/meshext-leader-election",
    ):
        assert any(line.startswith(expected) for line in applied), expected


def test_the_namespaced_secrets_overlay_passes_server_side_dry_run(cluster: Cluster) -> None:
    cluster.namespace("bookinfo")
    overlay = DEPLOY / "overlays" / "namespaced-secrets"
    result = _dry_run(cluster, overlay)
    assert result.returncode == 0, result.stderr
    assert "rolebinding.rbac.authorization.k8s.io/meshext-pull-secrets" in result.stdout
    kinds = {(d["kind"], d["metadata"]["name"]) for d in _rendered(cluster, overlay)}
    assert ("ClusterRoleBinding", "meshext-pull-secrets") not in kinds


def test_the_deployment_runs_two_replicas_probing_the_admin_port(cluster: Cluster) -> None:
    documents = _rendered(cluster, DEPLOY / "base")
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert {"name": "admin", "containerPort": 8080} in container["ports"]


def _can(cluster: Cluster, verb: str, resource: str, namespace: str) -> bool:
    name, _, subresource = resource.partition("/")
    extra = [f"--subresource={subresource}"] if subresource else []
    result = cluster.try_kubectl(
        "auth", "can-i", verb, name, *extra, "-n", namespace, f"--as={SERVICE_ACCOUNT}"
    )
    return result.stdout.strip() == "yes"


async def test_the_controller_works_with_exactly_the_deployed_permissions(
    kube_apiserver: KubeApiServer, cluster: Cluster, tmp_path: Path
) -> None:
    rbac = [d for d in _rendered(cluster, DEPLOY / "base") if d["kind"] in RBAC_KINDS]
    cluster.apply(*rbac)
    token = cluster.kubectl("create", "token", "meshext", "-n", "meshext-system").strip()
    kubeconfig = write_kubeconfig(kube_apiserver, token, tmp_path / "sa.kubeconfig")
    mesh = Mesh.create(cluster, members=1)
    namespace = mesh.members[0]
    try:
        assert _can(cluster, "patch", "servicemeshextensions.maistra.io/status", namespace)
        assert _can(cluster, "get", "secrets", namespace)
        assert not _can(cluster, "list", "secrets", namespace)
        assert not _can(cluster, "update", "servicemeshextensions.maistra.io/status", namespace)
        assert not _can(cluster, "update", "servicemeshextensions.maistra.io", namespace)
        assert not _can(cluster, "delete", "servicemeshextensions.maistra.io", namespace)
        assert not _can(cluster, "create", "leases.coordination.k8s.io", namespace)
        assert _can(cluster, "update", "leases.coordination.k8s.io", "meshext-system")

        module = wasm_file(tmp_path / "modules", "rbac")
        cluster.apply(extension("rbac", namespace, f"file:{module}"))
        lease = unique("lease")
        restricted = settings(namespace="meshext-system", lease_name=lease)
        async with running_controller(
            kube_apiserver, tmp_path / "cache", restricted, kubeconfig=kubeconfig
        ) as controller:
            await eventually(
                lambda: cluster.get("wasmplugins.extensions.istio.io", "rbac", namespace), "plugin"
            )

            def ready() -> bool | None:
                found = cluster.get("sme", "rbac", namespace) or {}
                return bool((found.get("status") or {}).get("deployment", {}).get("ready"))

            await eventually(ready, "status written with the service account")
            assert controller.is_leader
        held = json.loads(
            cluster.kubectl("get", "lease", lease, "-n", "meshext-system", "-o", "json")
        )
        assert held["spec"]["holderIdentity"] == ""

        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": "regcred", "namespace": namespace},
            "data": {".dockerconfigjson": base64.b64encode(b'{"auths": {}}').decode()},
        }
        cluster.apply(secret)
        async with await KubeClient.connect(kubeconfig) as client:
            store = KubePullSecretStore(client)
            assert await store.get(namespace, "regcred") == b'{"auths": {}}'
            assert await store.get(namespace, "absent") is None
    finally:
        mesh.remove()
