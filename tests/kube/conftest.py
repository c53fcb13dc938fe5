"""Session-wide kube-apiserver for the tests under tests/kube.

``kube_apiserver`` starts etcd and kube-apiserver once per test session (see
tests/kube_harness.py); tests share it, so each should use its own namespace
or object names. ``istio_crds`` installs Istio's CustomResourceDefinitions into
that apiserver once and waits until they are served.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube_harness import KubeApiServer

ISTIO_CRDS = (
    "wasmplugins.extensions.istio.io",
    "envoyfilters.networking.istio.io",
)


@pytest.fixture(scope="session")
def kube_apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApiServer]:
    """A running etcd + kube-apiserver with an admin kubeconfig."""
    with KubeApiServer(base_dir=tmp_path_factory.mktemp("kube")) as api:
        yield api


@pytest.fixture(scope="session")
def istio_crds(kube_apiserver: KubeApiServer) -> Path:
    """Path of Istio's crd-all.gen.yaml, already applied and Established."""
    crds: Path = kube_apiserver.binaries.istio_crds
    kube_apiserver.kubectl(
        "apply",
        "--server-side",
        "--field-manager=meshext-tests",
        f"--filename={crds}",
    )
    kube_apiserver.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *(f"crd/{name}" for name in ISTIO_CRDS),
    )
    return crds
