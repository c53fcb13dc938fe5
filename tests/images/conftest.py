"""Fixtures for the image tests: real registries, caches, pushes with skopeo.

Registries are started once per session per setup (anonymous HTTP, htpasswd basic
auth, bearer tokens, TLS with a test CA, and an OCI 1.1 registry with the referrers
API over TLS); each test uses its own repository names.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from meshext.api.meta import ResourceKey
from meshext.images.cache import ModuleCache
from meshext.images.config import RegistryConfig, RetryPolicy
from meshext.images.resolver import ImageResolver
from meshext.images.secrets import FolderPullSecretStore
from meshext.mesh.extension import Extension, PullSettings
from meshext.mesh.resolution import Resolution
from tests.images.cosign import Cosign, KeyPair, find_cosign
from tests.images.oci_registry import start_oci_registry
from tests.images.registry import Registry, TokenAuth, make_ca, start_registry
from tests.images.tokens import ISSUER, SERVICE, TokenServer

FAST_RETRIES = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
_names = itertools.count()


@pytest.fixture(scope="session")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    registry = start_registry(tmp_path_factory.mktemp("registry-plain"))
    yield registry
    registry.stop()


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    registry = start_registry(tmp_path_factory.mktemp("registry-basic"), htpasswd=True)
    yield registry
    registry.stop()


@pytest.fixture(scope="session")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    server = TokenServer(tmp_path_factory.mktemp("token-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, token_server: TokenServer
) -> Iterator[Registry]:
    auth = TokenAuth(
        realm=token_server.realm,
        service=SERVICE,
        issuer=ISSUER,
        rootcertbundle=token_server.cert_file,
    )
    registry = start_registry(tmp_path_factory.mktemp("registry-token"), token=auth)
    yield registry
    registry.stop()


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    base = tmp_path_factory.mktemp("registry-tls")
    registry = start_registry(base, ca=make_ca(base / "pki"))
    yield registry
    registry.stop()


@pytest.fixture(scope="session")
def oci_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A TLS registry with the OCI 1.1 referrers API (``tools/oci-registry``)."""
    base = tmp_path_factory.mktemp("registry-oci")
    registry = start_oci_registry(base, make_ca(base / "pki"))
    yield registry
    registry.stop()


@pytest.fixture(scope="session")
def cosign(tmp_path_factory: pytest.TempPathFactory) -> Cosign:
    """The real cosign, built by ``scripts/setup.d/45-cosign.sh``, in its own home."""
    return Cosign(find_cosign(), tmp_path_factory.mktemp("cosign-home"))


@pytest.fixture(scope="session")
def ci_key(cosign: Cosign, tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    """The build system's key pair (``cosign generate-key-pair``)."""
    return cosign.generate_key_pair(tmp_path_factory.mktemp("ci-key"))


@pytest.fixture(scope="session")
def rogue_key(cosign: Cosign, tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    """A key pair nobody trusts."""
    return cosign.generate_key_pair(tmp_path_factory.mktemp("rogue-key"))


def unique(prefix: str) -> str:
    """A repository name no other test uses."""
    return f"{prefix}-{next(_names)}"


def registry_config(registry: Registry, **overrides: object) -> RegistryConfig:
    """How meshext must be configured to reach ``registry``."""
    settings: dict[str, object] = {}
    if registry.ca is not None:
        settings["ca_file"] = registry.ca.ca_file
        settings["allowed_private_registries"] = frozenset({"127.0.0.1"})
    else:
        settings["insecure_registries"] = frozenset({"127.0.0.1"})
    settings.update(overrides)
    return RegistryConfig(**settings)  # type: ignore[arg-type]


def skopeo_push(layout: Path, tag: str, registry: Registry, destination: str, *extra: str) -> None:
    """Copy ``layout:tag`` to ``registry/destination`` with skopeo."""
    run(
        "skopeo",
        "copy",
        "--quiet",
        *registry.skopeo_args("dest-"),
        *extra,
        f"oci:{layout}:{tag}",
        f"docker://{registry.host}/{destination}",
    )


def run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def skopeo_manifest_digest(registry: Registry, image: str) -> str:
    """The digest of the manifest skopeo reads for ``image`` (works for artifacts too)."""
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", *registry.skopeo_args(), f"docker://{image}"],
        capture_output=True,
        check=True,
    ).stdout
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def dockerconfigjson(registry: str, username: str, password: str) -> bytes:
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    return json.dumps({"auths": {registry: {"auth": auth}}}).encode()


def write_pull_secret(folder: Path, namespace: str, name: str, config: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    encoded = base64.b64encode(config).decode()
    (folder / f"{namespace}-{name}.yaml").write_text(
        "apiVersion: v1\n"
        "kind: Secret\n"
        "type: kubernetes.io/dockerconfigjson\n"
        f"metadata:\n  name: {name}\n  namespace: {namespace}\n"
        f"data:\n  .dockerconfigjson: {encoded}\n"
    )


def extension(
    image: str,
    *,
    name: str = "ext",
    namespace: str = "team-a",
    policy: str | None = None,
    secrets: tuple[str, ...] = (),
    expected_sha256: str | None = None,
) -> Extension:
    return Extension(
        key=ResourceKey("ServiceMeshExtension", namespace, name),
        generation=1,
        image=image,
        selector={},
        config="",
        phase=None,
        priority=None,
        pull=PullSettings(policy=policy, secrets=secrets),
        expected_sha256=expected_sha256,
    )


class CountingTransport(httpx.AsyncBaseTransport):
    """The real HTTP transport, counting requests by method and API kind."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner
        self.counts: Counter[tuple[str, str]] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        kind = "blob" if "/blobs/" in path else "manifest" if "/manifests/" in path else path
        self.counts[(request.method, kind)] += 1
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()

    @property
    def blob_downloads(self) -> int:
        return self.counts[("GET", "blob")]

    @property
    def registry_requests(self) -> int:
        return sum(n for (_, kind), n in self.counts.items() if kind in ("blob", "manifest"))


@pytest.fixture
def cache(tmp_path: Path) -> ModuleCache:
    return ModuleCache(tmp_path / "cache")


@pytest.fixture
def secrets_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "secrets"
    folder.mkdir()
    return folder


def resolver_for(
    cache: ModuleCache,
    registry: Registry,
    secrets_folder: Path | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    **overrides: object,
) -> ImageResolver:
    folder = secrets_folder or cache.root.parent / "no-secrets"
    return ImageResolver(
        cache,
        FolderPullSecretStore(folder),
        registry_config=registry_config(registry, **overrides),
        retries=FAST_RETRIES,
        transport=transport,
    )


async def resolve_once(
    cache: ModuleCache,
    registry: Registry,
    wanted: Extension,
    secrets_folder: Path | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    **overrides: object,
) -> Resolution:
    """``wanted`` resolved by a fresh :func:`resolver_for` resolver, closed afterwards."""
    resolver = resolver_for(cache, registry, secrets_folder, transport=transport, **overrides)
    try:
        return await resolver.resolve(wanted)
    finally:
        await resolver.aclose()


def cache_is_clean(cache: ModuleCache) -> bool:
    """No module, no image record, no leftover work files."""
    return (
        not cache.modules()
        and not any((cache.root / "images").iterdir())
        and not any((cache.root / "tmp").iterdir())
    )
