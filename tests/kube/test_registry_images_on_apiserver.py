"""Images from a real registry, pulled with Secrets read from the extension's namespace."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.images.registry import PASSWORD, USERNAME, Registry, start_registry
from tests.kube.support import (
    INSECURE,
    Cluster,
    Mesh,
    eventually,
    extension,
    push_image,
    running_controller,
    settings,
    status_of,
    wasm_file,
)
from tests.kube_harness import KubeApiServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    started = start_registry(tmp_path_factory.mktemp("registry"), htpasswd=True)
    yield started
    started.stop()


@pytest.fixture
def mesh_members() -> int:
    """One member namespace with the pull secret, one without."""
    return 2


def _docker_config(registry: Registry) -> bytes:
    auth = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    return json.dumps({"auths": {registry.host: {"auth": auth}}}).encode()


def _push(registry: Registry, module: Path, image: str, tmp_path: Path) -> str:
    """Build a Maistra image with phase and priority in manifest.yaml; push it."""
    credentials = tmp_path / "docker-config.json"
    credentials.write_bytes(_docker_config(registry))
    return push_image(module, image, "--priority=7", f"--registry-config={credentials}")


def _pull_secret(registry: Registry, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": "regcred", "namespace": namespace},
        "data": {".dockerconfigjson": base64.b64encode(_docker_config(registry)).decode()},
    }


async def test_a_private_image_is_pulled_with_the_secret_of_the_extensions_namespace(
    kube_apiserver: KubeApiServer,
    cluster: Cluster,
    mesh: Mesh,
    registry: Registry,
    tmp_path: Path,
) -> None:
    with_secret, without_secret = mesh.members
    image = f"{registry.host}/extensions/header:v1"
    digest = _push(registry, wasm_file(tmp_path / "modules", "registry"), image, tmp_path)
    cluster.apply(_pull_secret(registry, with_secret))
    secrets = [{"name": "regcred"}]
    cluster.apply(
        extension(
            "private", with_secret, image, phase=None, priority=None, imagePullSecrets=secrets
        ),
        extension(
            "borrower", without_secret, image, phase=None, priority=None, imagePullSecrets=secrets
        ),
    )
    async with running_controller(
        kube_apiserver, tmp_path / "cache", settings(istio=None), registry=INSECURE
    ):
        private = await eventually(
            lambda: status_of(cluster, "private", with_secret), "status of the private image"
        )
        borrower = await eventually(
            lambda: status_of(cluster, "borrower", without_secret), "status of the borrower"
        )
    assert private["deployment"]["ready"] is True, private
    assert private["deployment"]["containerSha256"] == digest
    assert private["phase"] == "PreAuthZ"
    assert private["priority"] == 7
    assert borrower["deployment"]["ready"] is False
    message = borrower["deployment"]["message"]
    assert f"imagePullSecrets 'regcred' not found in namespace '{without_secret}'" in message
    cluster.delete("secret", "regcred", with_secret)
