"""The install steps of docs/kubernetes.md, run as written on a fresh API server, twice.

Each test gets its own etcd + kube-apiserver: they install meshext's CRDs with a
conversion webhook of their own, which the session's shared API server must keep.

The test API server has no pods and no kube-proxy, so the in-cluster test runs the
controller as a process on loopback and reaches it through the Service of the
deploy/base the same way the API server reaches any webhook Service: a kustomize
overlay turns that Service into an ExternalName for ``localhost`` and sets the
CRD's webhook port to the process's port. Nothing else differs from the docs.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube.installing import (
    SME_CRD,
    ControllerProcess,
    ca_bundle,
    create_webhook_secret,
    run_meshext,
    service_account_kubeconfig,
)
from tests.kube.support import eventually, extension, unique
from tests.kube_harness import REPO_ROOT, KubeApiServer
from tests.network import free_port

pytestmark = [pytest.mark.e2e]

AWKWARD = '{"z": 1, "a": 12345678901234567890, "f": 1.0}'


@pytest.fixture
def fresh_apiserver(tmp_path: Path) -> Iterator[KubeApiServer]:
    with KubeApiServer(base_dir=tmp_path) as api:
        yield api


async def _round_trip(api: KubeApiServer, namespace: str, controller: ControllerProcess) -> None:
    """A v1alpha1 extension written and read back through the webhook, byte for byte."""
    name = unique("alpha")
    document = json.dumps(
        extension(name, namespace, "quay.io/acme/x:1", version="v1alpha1", config=AWKWARD)
    )

    def written() -> bool:
        result = api.kubectl("apply", "--server-side", "-f", "-", input=document, check=False)
        return result.returncode == 0

    try:
        await eventually(written, "a v1alpha1 write converted by the webhook")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\ncontroller log:\n{controller.log()}") from exc
    read = api.kubectl(
        "get", f"servicemeshextensions.v1alpha1.maistra.io/{name}", "-n", namespace, "-o", "json"
    )
    assert json.loads(read.stdout)["spec"]["config"] == AWKWARD
    stored = json.loads(
        api.kubectl(
            "get", f"servicemeshextensions.v1.maistra.io/{name}", "-n", namespace, "-o", "json"
        ).stdout
    )
    assert stored["spec"]["config"]["z"] == 1


def _overlay(directory: Path, webhook_port: int) -> Path:
    directory.mkdir(parents=True)
    base = os.path.relpath(REPO_ROOT / "deploy" / "base", directory)
    (directory / "kustomization.yaml").write_text(
        f"""apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {base}
patches:
  - target: {{kind: Service, name: meshext}}
    patch: |
      apiVersion: v1
      kind: Service
      metadata: {{name: meshext, namespace: meshext-system}}
      spec:
        type: ExternalName
        externalName: localhost
        selector: null
  - target: {{kind: CustomResourceDefinition, name: {SME_CRD}}}
    patch: |
      - op: replace
        path: /spec/conversion/webhook/clientConfig/service/port
        value: {webhook_port}
"""
    )
    return directory


async def test_the_documented_install_applied_twice_keeps_the_conversion_webhook_working(
    fresh_apiserver: KubeApiServer, tmp_path: Path
) -> None:
    api = fresh_apiserver
    certs = tmp_path / "certs"
    webhook_port = free_port()
    overlay = _overlay(tmp_path / "overlay", webhook_port)

    # Step 1: the serving certificate and its CA, in the Secret the Deployment mounts.
    create_webhook_secret(api, certs)
    # Step 2: everything else.
    api.kubectl("apply", "--server-side", "-k", str(overlay))
    api.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{SME_CRD}")
    assert ca_bundle(api) == ""
    namespace = unique("team")
    api.kubectl("create", "namespace", namespace)

    # What the Deployment runs, with the ServiceAccount and RBAC of deploy/base.
    kubeconfig = service_account_kubeconfig(api, tmp_path / "sa.kubeconfig")
    args = (
        f"--kubeconfig={kubeconfig}",
        f"--webhook-address=127.0.0.1:{webhook_port}",
        f"--webhook-cert={certs / 'tls.crt'}",
        f"--webhook-key={certs / 'tls.key'}",
        f"--webhook-ca={certs / 'ca.crt'}",
    )
    controller = ControllerProcess(api, tmp_path, *args)
    try:
        await eventually(lambda: controller.readyz() == 200 or None, "the controller ready")
        await _round_trip(api, namespace, controller)
        expected = base64.b64encode((certs / "ca.crt").read_bytes()).decode()
        assert ca_bundle(api) == expected
    finally:
        controller.stop()

    # The docs again, with no controller running to put anything back: both ways of
    # applying keep the bundle.
    api.kubectl("apply", "--server-side", "-k", str(overlay))
    assert ca_bundle(api) == expected
    api.kubectl("apply", "-k", str(overlay))
    assert ca_bundle(api) == expected
    api.kubectl("apply", "--server-side", "-k", str(overlay))
    assert ca_bundle(api) == expected
    dry_run = api.kubectl("apply", "--dry-run=server", "-k", str(overlay), check=False)
    assert dry_run.returncode == 0, dry_run.stderr

    controller = ControllerProcess(api, tmp_path, *args)
    try:
        await eventually(lambda: controller.readyz() == 200 or None, "the controller ready again")
        await _round_trip(api, namespace, controller)
    finally:
        controller.stop()
    assert "set the conversion webhook's CA bundle" not in controller.log()


async def test_a_controller_on_a_workstation_converts_for_a_remote_api_server(
    fresh_apiserver: KubeApiServer, tmp_path: Path
) -> None:
    api = fresh_apiserver
    certs = tmp_path / "certs"
    webhook_port = free_port()
    webhook_url = f"https://127.0.0.1:{webhook_port}/convert"
    # The recipe of docs/kubernetes.md, with 127.0.0.1 as the address the API server
    # reaches the workstation at.
    run_meshext("kube", "certs", f"--out={certs}", "--host=127.0.0.1")
    crds = run_meshext("kube", "crds", f"--webhook-url={webhook_url}")
    for _ in range(2):
        api.kubectl("apply", "--server-side", "-f", "-", input=crds)
    api.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{SME_CRD}")
    api.kubectl("create", "namespace", "meshext-system")
    namespace = unique("team")
    api.kubectl("create", "namespace", namespace)
    controller = ControllerProcess(
        api,
        tmp_path,
        f"--kubeconfig={api.kubeconfig_path}",
        f"--webhook-address=127.0.0.1:{webhook_port}",
        f"--webhook-cert={certs / 'tls.crt'}",
        f"--webhook-key={certs / 'tls.key'}",
        f"--webhook-ca={certs / 'ca.crt'}",
    )
    try:
        await eventually(lambda: controller.readyz() == 200 or None, "the controller ready")
        await _round_trip(api, namespace, controller)
        # Applying the CRDs again leaves the bundle the controller set.
        api.kubectl("apply", "--server-side", "-f", "-", input=crds)
        assert ca_bundle(api) != ""
        await _round_trip(api, namespace, controller)
    finally:
        controller.stop()
