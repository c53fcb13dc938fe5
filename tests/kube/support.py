"""Helpers for the tests that run meshext against the real kube-apiserver.

* :func:`meshext_crds`: once per test session: starts the conversion webhook as a
  real ``meshext kube webhook`` process (HTTPS on 127.0.0.1, self-signed CA) and
  installs meshext's CRDs pointing at it with a ``url:`` client config and the CA
  bundle, so the API server converts through it;
* :func:`running_controller`: a :class:`~meshext.kube.controller.Controller` run
  in the test's event loop against the API server, with the real image resolver
  and a module cache in a temporary folder;
* :class:`Cluster`: kubectl with JSON in and out, and :func:`eventually` to wait
  for the controller's asynchronous work (a deadline guards against hangs; no
  assertion depends on how fast anything is).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from meshext.images.cache import ModuleCache
from meshext.images.config import RegistryConfig
from meshext.images.resolver import ImageResolver
from meshext.images.trust import SIGNATURES_OFF, SignaturePolicy
from meshext.istio.render import IstioOptions
from meshext.kube.certs import self_signed
from meshext.kube.client import KubeClient
from meshext.kube.controller import Controller, ControllerSettings
from meshext.kube.crds import ConversionWebhook, custom_resource_definitions
from meshext.kube.secrets import KubePullSecretStore
from meshext.kube.signature_trust import ClusterTrust
from meshext.kube.tasks import cancel_and_wait
from tests.documents import sme_document
from tests.images.wasm import proxy_wasm_module
from tests.kube_harness import KubeApiServer
from tests.network import free_port

T = TypeVar("T")

MESHEXT = Path(sys.executable).parent / "meshext"
MODULE_SERVER = "http://meshext.meshext-system.svc:8080"
DEADLINE = 90.0
SME_CRD = "servicemeshextensions.maistra.io"
WASM_PLUGINS = "wasmplugins.extensions.istio.io"
ENVOY_FILTERS = "envoyfilters.networking.istio.io"
# The test registries serve plain HTTP on loopback.
INSECURE = RegistryConfig(insecure_registries=frozenset({"127.0.0.1"}))


extension = sme_document
"""A ServiceMeshExtension document (see :func:`tests.documents.sme_document`)."""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- kubectl


@dataclass
class Cluster:
    """kubectl against the test API server, JSON in and out."""

    api: KubeApiServer

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.api.kubectl(*args, input=input).stdout

    def try_kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.api.kubectl(*args, input=input, check=False)

    def apply(self, *objects: dict[str, Any]) -> None:
        text = yaml.safe_dump_all(list(objects))
        self.kubectl("apply", "--server-side", "--field-manager=tests", "-f", "-", input=text)

    def get(self, resource: str, name: str, namespace: str) -> dict[str, Any] | None:
        result = self.try_kubectl("get", resource, name, "-n", namespace, "-o", "json")
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise AssertionError(result.stderr)
        found: dict[str, Any] = json.loads(result.stdout)
        return found

    def list(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        scope = ["-n", namespace] if namespace else ["-A"]
        listing = json.loads(self.kubectl("get", resource, *scope, "-o", "json"))
        items: list[dict[str, Any]] = listing["items"]
        return items

    def delete(self, resource: str, name: str, namespace: str) -> None:
        self.kubectl(
            "delete", resource, name, "-n", namespace, "--ignore-not-found", "--wait=false"
        )

    def namespace(self, name: str) -> str:
        if self.try_kubectl("get", "namespace", name).returncode != 0:
            self.kubectl("create", "namespace", name)
        return name


async def eventually(
    probe: Callable[[], T | None] | Callable[[], Awaitable[T | None]],
    what: str,
    *,
    deadline: float = DEADLINE,
) -> T:
    """Poll ``probe`` (run in a thread when synchronous) until it returns a value."""
    give_up = time.monotonic() + deadline
    last: T | None = None
    while True:
        if asyncio.iscoroutinefunction(probe):
            last = await probe()
        else:
            last = await asyncio.to_thread(probe)  # type: ignore[arg-type]
        if last is not None and last is not False:
            return last
        if time.monotonic() > give_up:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- mesh objects


def control_plane(namespace: str, *, enabled: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "maistra.io/v2",
        "kind": "ServiceMeshControlPlane",
        "metadata": {"name": "basic", "namespace": namespace},
        "spec": {
            "version": "v2.6",
            "techPreview": {"wasmExtensions": {"enabled": enabled}},
            "tracing": {"type": "None"},
        },
    }


def member_roll(namespace: str, members: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "maistra.io/v1",
        "kind": "ServiceMeshMemberRoll",
        "metadata": {"name": "default", "namespace": namespace},
        "spec": {"members": members},
    }


@dataclass
class Mesh:
    """A control-plane namespace with its member roll, created for one test."""

    cluster: Cluster
    control_plane: str
    members: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, cluster: Cluster, members: int = 1, *, enabled: bool = True) -> Mesh:
        mesh = cls(cluster, cluster.namespace(unique("cp")))
        mesh.members = [cluster.namespace(unique("team")) for _ in range(members)]
        cluster.apply(
            control_plane(mesh.control_plane, enabled=enabled),
            member_roll(mesh.control_plane, mesh.members),
        )
        return mesh

    def set_members(self, members: list[str]) -> None:
        self.members = members
        self.cluster.apply(member_roll(self.control_plane, members))

    def remove(self) -> None:
        """Delete every extension of the mesh's namespaces, then the mesh objects."""
        for namespace in [self.control_plane, *self.members]:
            self.cluster.kubectl(
                "delete",
                "servicemeshextensions.maistra.io",
                "--all",
                "-n",
                namespace,
                "--wait=false",
            )
        self.cluster.delete("servicemeshmemberrolls.maistra.io", "default", self.control_plane)
        self.cluster.delete("servicemeshcontrolplanes.maistra.io", "basic", self.control_plane)


def wasm_file(directory: Path, marker: str) -> Path:
    """A valid proxy-wasm module on disk; ``file:<path>`` is an image meshext accepts."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{marker}.wasm"
    path.write_bytes(proxy_wasm_module(marker))
    return path


def status_of(cluster: Cluster, name: str, namespace: str) -> dict[str, Any] | None:
    """The status of extension ``namespace/name`` once it has a deployment part."""
    found = cluster.get("sme", name, namespace) or {}
    status = found.get("status")
    return status if isinstance(status, dict) and "deployment" in status else None


def push_image(module: Path, image: str, *extra: str) -> str:
    """``meshext image build`` of ``module`` pushed as ``image`` (an insecure loopback
    registry), with ``extra`` options; returns the manifest digest."""
    result = subprocess.run(
        [
            str(MESHEXT),
            "image",
            "build",
            f"--wasm={module}",
            "--name=header",
            "--phase=PreAuthZ",
            f"--tag={image}",
            "--insecure-registry=127.0.0.1",
            *extra,
            "--quiet",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    digest: str = result.stdout.split()[0]
    return digest


# --------------------------------------------------------------------------- webhook + CRDs


class WebhookProcess:
    """``meshext kube webhook`` serving HTTPS on 127.0.0.1 with a fresh self-signed CA."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        pair = self_signed(["127.0.0.1", "localhost"])
        self.ca_path, self.cert_path, self.key_path = pair.write(directory)
        self.ca_pem = pair.ca_pem
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}/convert"
        self.log_path = directory / "webhook.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, deadline: float = 60.0) -> None:
        setpriv = shutil.which("setpriv")
        prefix = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []
        command = [
            *prefix,
            str(MESHEXT),
            "kube",
            "webhook",
            f"--cert={self.cert_path}",
            f"--key={self.key_path}",
            "--host=127.0.0.1",
            f"--port={self.port}",
        ]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        context = ssl.create_default_context(cafile=str(self.ca_path))
        give_up = time.monotonic() + deadline
        while time.monotonic() < give_up:
            if self._proc.poll() is not None:
                raise RuntimeError(f"webhook exited: {self.log_path.read_text()}")
            try:
                url = f"https://127.0.0.1:{self.port}/healthz"
                with urllib.request.urlopen(url, context=context, timeout=2) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"webhook did not start: {self.log_path.read_text()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class MeshextCrds:
    cluster: Cluster
    webhook: WebhookProcess


_shared: dict[int, MeshextCrds] = {}


def meshext_crds(request: pytest.FixtureRequest, api: KubeApiServer) -> MeshextCrds:
    """meshext's CRDs installed once per session, converting through a webhook process.

    Stopped with the session (``config.add_cleanup``), whichever module asked first.
    """
    existing = _shared.get(id(api))
    if existing is not None:
        return existing
    directory = Path(api.workdir) / "meshext-webhook"
    webhook = WebhookProcess(directory)
    webhook.start()
    request.config.add_cleanup(webhook.stop)
    cluster = Cluster(api)
    crds = custom_resource_definitions(ConversionWebhook(url=webhook.url, ca_bundle=webhook.ca_pem))
    cluster.apply(*crds)
    names = [f"crd/{c['metadata']['name']}" for c in crds]
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    # Istio's root namespace, where mesh-wide extensions are rendered.
    cluster.namespace("istio-system")
    installed = MeshextCrds(cluster, webhook)
    _shared[id(api)] = installed
    return installed


# --------------------------------------------------------------------------- controller


def settings(**overrides: Any) -> ControllerSettings:
    base: dict[str, Any] = {
        "namespace": "default",
        "identity": unique("controller"),
        "lease_name": unique("lease"),
        "module_base_url": MODULE_SERVER,
        "istio": IstioOptions(module_base_url=MODULE_SERVER),
        "watch_timeout": 30,
        "lease_duration": 4.0,
        "renew_deadline": 3.0,
        "retry_period": 0.5,
    }
    base.update(overrides)
    return ControllerSettings(**base)


@asynccontextmanager
async def running_controller(
    api: KubeApiServer,
    cache_dir: Path,
    controller_settings: ControllerSettings | None = None,
    *,
    kubeconfig: Path | None = None,
    registry: RegistryConfig | None = None,
    signatures: SignaturePolicy = SIGNATURES_OFF,
) -> AsyncIterator[Controller]:
    """A controller running in this event loop until the block ends."""
    client = await KubeClient.connect(kubeconfig or api.kubeconfig_path, request_timeout=10)
    chosen = controller_settings or settings()
    # Wired as meshext.kube.run wires it: keys published in the cluster count.
    trust = ClusterTrust(client, signatures, watch_timeout=chosen.watch_timeout)
    resolver = ImageResolver(
        ModuleCache(cache_dir),
        KubePullSecretStore(client),
        registry_config=registry or RegistryConfig(),
        signatures=trust.verifier,
    )
    controller = Controller(client, resolver, chosen, trust=trust)
    task = asyncio.create_task(controller.run(), name="controller under test")
    try:
        await _ready_or_failed(controller, task)
        yield controller
    finally:
        await cancel_and_wait(task)
        await resolver.aclose()
        await client.close()


async def _ready_or_failed(controller: Controller, task: asyncio.Task[None]) -> None:
    ready = asyncio.create_task(controller.wait_ready())
    try:
        done, _ = await asyncio.wait(
            {ready, task}, timeout=DEADLINE, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        ready.cancel()
        with suppress(asyncio.CancelledError):
            await ready
    if task in done:
        task.result()
        raise AssertionError("the controller stopped before it was ready")
    if not done:
        raise AssertionError("the controller did not become ready")


def write_kubeconfig(api: KubeApiServer, token: str, path: Path) -> Path:
    """A kubeconfig for ``api`` authenticating with ``token`` (a service account's)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {"server": api.url, "certificate-authority": str(api.ca_path)},
            }
        ],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "test", "user": "sa"}}],
        "current-context": "sa",
    }
    path.write_text(json.dumps(config))
    os.chmod(path, 0o600)
    return path
