"""The Helm chart (deploy/helm/meshext): the same objects as deploy/base, installed and
upgraded with the real helm on a fresh API server without losing the webhook's CA bundle."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube.installing import (
    SME_CRD,
    ControllerProcess,
    ca_bundle,
    create_webhook_secret,
    service_account_kubeconfig,
)
from tests.kube.support import eventually
from tests.kube_harness import REPO_ROOT, KubeApiServer, find_binaries
from tests.network import free_port

CHART = REPO_ROOT / "deploy" / "helm" / "meshext"
BASE = REPO_ROOT / "deploy" / "base"
SETUP = REPO_ROOT / "scripts" / "setup.d" / "45-helm.sh"
PART_OF = "app.kubernetes.io/part-of"


def _helm_binary() -> Path:
    """The cached helm, built by the setup fragment when missing."""
    result = subprocess.run([str(SETUP)], check=True, capture_output=True, text=True, timeout=3600)
    for line in result.stdout.splitlines():
        name, _, path = line.partition("=")
        if name == "helm":
            return Path(path)
    raise AssertionError(f"{SETUP} printed no helm path: {result.stdout!r}")


@pytest.fixture(scope="module")
def helm_binary() -> Path:
    return _helm_binary()


def _helm(helm: Path, home: Path, *args: str, kubeconfig: Path | None = None) -> str:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    extra = [f"--kubeconfig={kubeconfig}"] if kubeconfig else []
    result = subprocess.run(
        [str(helm), *args, *extra],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, f"helm {' '.join(args)}: {result.stderr}"
    return result.stdout


def _by_name(text: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(text) if d}


def _without_part_of(obj: dict[str, Any]) -> dict[str, Any]:
    meta = dict(obj["metadata"])
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k != PART_OF}
    if labels:
        meta["labels"] = labels
    else:
        meta.pop("labels", None)
    return {**obj, "metadata": meta}


def test_the_chart_with_its_defaults_holds_what_the_kustomize_base_holds(
    helm_binary: Path, tmp_path: Path
) -> None:
    rendered = _helm(
        helm_binary,
        tmp_path,
        "template",
        "meshext",
        str(CHART),
        "--namespace=meshext-system",
        "--include-crds",
    )
    kubectl = find_binaries().kubectl
    base = subprocess.run(
        [str(kubectl), "kustomize", str(BASE)], check=True, capture_output=True, text=True
    ).stdout
    from_chart = _by_name(rendered)
    from_base = {k: v for k, v in _by_name(base).items() if k[0] != "Namespace"}
    assert sorted(from_chart) == sorted(from_base)
    for key, obj in from_base.items():
        assert _without_part_of(from_chart[key]) == _without_part_of(obj), key


def test_the_chart_refuses_another_namespace(helm_binary: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(helm_binary), "template", "meshext", str(CHART), "--namespace=elsewhere"],
        check=False,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=120,
    )
    assert result.returncode != 0
    assert "install as release meshext in namespace meshext-system" in result.stderr


@pytest.fixture
def fresh_apiserver(tmp_path: Path) -> Iterator[KubeApiServer]:
    with KubeApiServer(base_dir=tmp_path) as api:
        yield api


@pytest.mark.e2e
async def test_helm_install_and_upgrades_keep_the_ca_bundle_the_controller_set(
    helm_binary: Path, fresh_apiserver: KubeApiServer, tmp_path: Path
) -> None:
    api = fresh_apiserver
    certs = tmp_path / "certs"
    create_webhook_secret(api, certs)
    kubeconfig = api.kubeconfig_path
    home = tmp_path / "helm"
    _helm(
        helm_binary,
        home,
        "install",
        "meshext",
        str(CHART),
        "-n",
        "meshext-system",
        kubeconfig=kubeconfig,
    )
    api.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{SME_CRD}")
    assert ca_bundle(api) == ""

    # The controller with the chart's ServiceAccount and RBAC sets the bundle.
    controller = ControllerProcess(
        api,
        tmp_path,
        f"--kubeconfig={service_account_kubeconfig(api, tmp_path / 'sa.kubeconfig')}",
        f"--webhook-address=127.0.0.1:{free_port()}",
        f"--webhook-cert={certs / 'tls.crt'}",
        f"--webhook-key={certs / 'tls.key'}",
        f"--webhook-ca={certs / 'ca.crt'}",
    )
    expected = base64.b64encode((certs / "ca.crt").read_bytes()).decode()
    try:
        await eventually(lambda: ca_bundle(api) == expected or None, "the CA bundle set")
    finally:
        controller.stop()

    for replicas in ("3", "2"):
        _helm(
            helm_binary,
            home,
            "upgrade",
            "meshext",
            str(CHART),
            "-n",
            "meshext-system",
            f"--set=replicas={replicas}",
            kubeconfig=kubeconfig,
        )
        assert ca_bundle(api) == expected
    deployment = json.loads(
        api.kubectl("get", "deployment", "meshext", "-n", "meshext-system", "-o", "json").stdout
    )
    assert deployment["spec"]["replicas"] == 2
