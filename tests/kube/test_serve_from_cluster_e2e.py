"""`meshext serve --kubeconfig`: the cluster as the source, real Envoy as the proxy.

The sidecar gets its certificate as a pod would: a service-account token minted by
the API server for meshext's audience, exchanged with `meshext credentials fetch`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from meshext.envoy.bootstrap import AdsServer, XdsTls, sidecar_bootstrap
from meshext.envoy.node import HostPort
from meshext.envoy.tls import CredentialFiles
from meshext.identity import ca as mesh_ca
from meshext.identity.spiffe import control_plane_id
from meshext.quickstart.echo import start_echo_app
from meshext.quickstart.envoy_process import EnvoyProcess
from meshext.server.modules import RunningServer
from tests.envoy.harness import eventually
from tests.envoy.support import build_examples
from tests.kube.support import Cluster, Mesh, extension
from tests.kube_harness import KubeApiServer
from tests.network import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("istio_crds")]


@dataclass(frozen=True)
class Served:
    xds: int
    certificates: int


@pytest.fixture
def serve(kube_apiserver: KubeApiServer, tmp_path: Path) -> Iterator[Served]:
    """A `meshext serve --kubeconfig` process with the CA in ``tmp_path/ca``."""
    mesh_ca.load_or_create(tmp_path / "ca", "cluster.local")
    xds, certificates = free_port(), free_port()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "meshext", "serve",
            "--kubeconfig", str(kube_apiserver.kubeconfig_path),
            "--xds-address", f"127.0.0.1:{xds}",
            "--admin-address", f"127.0.0.1:{free_port()}",
            "--module-address", f"127.0.0.1:{free_port()}",
            "--cache-dir", str(tmp_path / "cache"),
            "--mesh-ca-cert", str(tmp_path / "ca" / mesh_ca.CA_CERT_FILE),
            "--mesh-ca-key", str(tmp_path / "ca" / mesh_ca.CA_KEY_FILE),
            "--certificate-address", f"127.0.0.1:{certificates}",
            "--local-images", str(build_examples()),
        ],
        stdout=(tmp_path / "serve.log").open("w"), stderr=subprocess.STDOUT,
        env={**os.environ},
    )  # fmt: skip
    try:
        yield Served(xds, certificates)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def fetch_credentials(serve: Served, tmp_path: Path, credentials: Path) -> str:
    """`meshext credentials fetch`, retried while the exchange starts."""

    async def attempt() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable, "-m", "meshext", "credentials", "fetch",
                "--ca-url", f"https://127.0.0.1:{serve.certificates}",
                "--token-file", str(tmp_path / "token"),
                "--ca-bundle", str(tmp_path / "ca" / mesh_ca.CA_CERT_FILE),
                "--credentials-dir", str(credentials),
            ],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    done = await eventually(attempt, lambda r: r.returncode == 0, "credentials", deadline=60)
    return done.stdout


@pytest.fixture
async def app() -> AsyncIterator[RunningServer]:
    running = await start_echo_app()
    yield running
    await running.stop()


async def test_an_sme_applied_with_kubectl_runs_in_the_sidecar_and_gets_status(
    cluster: Cluster, mesh: Mesh, serve: Served, app: RunningServer, tmp_path: Path
) -> None:
    namespace = mesh.members[0]
    module = build_examples() / "header-append.wasm"
    cluster.apply(
        extension(
            "from-cluster",
            namespace,
            f"file:{module}",
            version="v1alpha1",
            config="hello-from-kubernetes",
        )
    )
    port = free_port()
    cluster.kubectl("create", "serviceaccount", "httpbin", "-n", namespace)
    token = cluster.kubectl("create", "token", "httpbin", "-n", namespace, "--audience", "meshext")
    (tmp_path / "token").write_text(token.strip())
    credentials = tmp_path / "credentials"
    fetched = await fetch_credentials(serve, tmp_path, credentials)
    assert f"spiffe://cluster.local/ns/{namespace}/sa/httpbin" in fetched
    tls = XdsTls(CredentialFiles(str(credentials)), control_plane_id("cluster.local").uri)
    bootstrap = sidecar_bootstrap(
        name="httpbin",
        namespace=namespace,
        labels={"app": "httpbin"},
        listen=f"127.0.0.1:{port}",
        app=f"127.0.0.1:{app.port}",
        xds=AdsServer(HostPort("127.0.0.1", serve.xds), tls=tls),
        admin_port=free_port(),
    )
    async with EnvoyProcess(bootstrap, tmp_path, name="sidecar"):

        async def appended() -> list[str]:
            async with httpx.AsyncClient(timeout=5) as client:
                response = await client.get(f"http://127.0.0.1:{port}/")
            if response.status_code != 200:
                return []
            return [v for k, v in response.json()["headers"] if k == "x-header-append"]

        await eventually(
            appended, lambda h: h == ["hello-from-kubernetes"], "the header", deadline=90
        )

        def deployment() -> dict[str, object]:
            found = cluster.get("servicemeshextensions.maistra.io", "from-cluster", namespace)
            status = (found or {}).get("status") or {}
            result: dict[str, object] = status.get("deployment") or {}
            return result

        async def ready() -> dict[str, object]:
            return deployment()

        status = await eventually(ready, lambda d: d.get("ready") is True, "status", deadline=60)
        assert isinstance(status.get("sha256"), str)
