"""Session-wide kube-apiserver for the tests under tests/kube, and the fixtures they share.

``kube_apiserver`` starts etcd and kube-apiserver once per test session (see
tests/kube_harness.py); tests share it, so each should use its own namespace
or object names. ``istio_crds`` installs Istio's CustomResourceDefinitions into
that apiserver once and waits until they are served; a module whose tests need
them marks itself ``pytest.mark.usefixtures("istio_crds")``.

``crds`` installs meshext's CRDs (once per session, see
:func:`tests.kube.support.meshext_crds`), ``cluster`` is kubectl against that
apiserver, and ``mesh`` is a fresh control plane with ``mesh_members`` member
namespaces (one unless a module overrides ``mesh_members``), removed after the test.
``registry`` is an anonymous loopback registry per module (a module may override it,
e.g. with htpasswd) and ``cosign`` the cosign binary with a home of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.images.cosign import Cosign, find_cosign
from tests.images.registry import Registry, start_registry
from tests.kube.support import ENVOY_FILTERS, WASM_PLUGINS, Cluster, Mesh, MeshextCrds, meshext_crds
from tests.kube_harness import KubeApiServer

ISTIO_CRDS = (WASM_PLUGINS, ENVOY_FILTERS)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry on loopback for the module's images."""
    started = start_registry(tmp_path_factory.mktemp("registry"))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def cosign(tmp_path_factory: pytest.TempPathFactory) -> Cosign:
    return Cosign(find_cosign(), tmp_path_factory.mktemp("cosign-home"))


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


@pytest.fixture
def crds(request: pytest.FixtureRequest, kube_apiserver: KubeApiServer) -> MeshextCrds:
    """meshext's CRDs, installed once per session, converting through a webhook process."""
    return meshext_crds(request, kube_apiserver)


@pytest.fixture
def cluster(crds: MeshextCrds) -> Cluster:
    """kubectl against the session's apiserver, with meshext's CRDs installed."""
    return crds.cluster


@pytest.fixture
def mesh_members() -> int:
    """How many member namespaces ``mesh`` creates; override it in a module to change it."""
    return 1


@pytest.fixture
def mesh(cluster: Cluster, mesh_members: int) -> Iterator[Mesh]:
    """A control plane with ``mesh_members`` member namespaces, removed after the test."""
    created = Mesh.create(cluster, members=mesh_members)
    yield created
    created.remove()
