"""Plain files and OCI layouts, expected sha256, reference errors, and retries."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from meshext.images.cache import ModuleCache
from meshext.images.config import RegistryConfig
from meshext.images.resolver import ImageResolver
from meshext.images.secrets import MappingPullSecretStore
from meshext.mesh.resolution import ImageFormat, ResolutionState
from tests.images.conftest import (
    FAST_RETRIES,
    cache_is_clean,
    extension,
    resolve_once,
    skopeo_push,
    unique,
)
from tests.images.layouts import CNCF_CONFIG, CNCF_LAYER, OCI_LAYER_GZIP, Entry, Layout, tar_layer
from tests.images.registry import Registry
from tests.images.wasm import proxy_wasm_module
from tests.network import free_port


def local_resolver(cache: ModuleCache) -> ImageResolver:
    return ImageResolver(cache, MappingPullSecretStore(), retries=FAST_RETRIES)


async def test_plain_wasm_file_is_checked_cached_and_served_by_hash(
    tmp_path: Path, cache: ModuleCache
) -> None:
    module = proxy_wasm_module("local file")
    (tmp_path / "filter.wasm").write_bytes(module)
    resolution = await local_resolver(cache).resolve(extension(f"file:{tmp_path / 'filter.wasm'}"))
    assert resolution.module is not None, resolution.message
    digest = hashlib.sha256(module).hexdigest()
    assert resolution.module.sha256 == digest
    assert resolution.module.image_format is ImageFormat.LOCAL_FILE
    assert resolution.module.image_digest is None
    assert cache.path_for(digest) == Path(resolution.module.path)
    assert cache.path_for(f"sha256:{digest}") == Path(resolution.module.path)
    assert cache.path_for("0" * 64) is None
    assert cache.path_for("../../etc/passwd") is None


async def test_changed_local_file_resolves_to_its_new_hash(
    tmp_path: Path, cache: ModuleCache
) -> None:
    path = tmp_path / "filter.wasm"
    resolver = local_resolver(cache)
    path.write_bytes(proxy_wasm_module("first"))
    first = await resolver.resolve(extension(f"file:{path}"))
    path.write_bytes(proxy_wasm_module("second"))
    second = await resolver.resolve(extension(f"file:{path}"))
    assert first.module is not None
    assert second.module is not None
    assert first.module.sha256 != second.module.sha256


async def test_missing_local_file_is_named(tmp_path: Path, cache: ModuleCache) -> None:
    resolution = await local_resolver(cache).resolve(extension(f"file:{tmp_path / 'nope.wasm'}"))
    assert resolution.message == f"no module file at {tmp_path / 'nope.wasm'}"
    assert cache_is_clean(cache)


async def test_local_file_that_is_not_wasm_leaves_the_cache_clean(
    tmp_path: Path, cache: ModuleCache
) -> None:
    (tmp_path / "x.wasm").write_text("hello")
    resolution = await local_resolver(cache).resolve(extension(f"file:{tmp_path / 'x.wasm'}"))
    assert "is not a WebAssembly module" in resolution.message
    assert cache_is_clean(cache)


async def test_unparsable_image_is_reported_as_spec_image(cache: ModuleCache) -> None:
    resolution = await local_resolver(cache).resolve(extension("quay.io/team/filter"))
    assert resolution.state is ResolutionState.FAILED
    assert resolution.message.startswith("failed to parse spec.image:")


async def test_layout_index_picks_the_wasm_platform_entry(
    tmp_path: Path, cache: ModuleCache
) -> None:
    layout = Layout(tmp_path / "layout")
    module = proxy_wasm_module("wasi platform")
    arm = layout.image(
        None,
        [(OCI_LAYER_GZIP, tar_layer([Entry("plugin.wasm", proxy_wasm_module("arm"))]))],
        platform={"os": "linux", "architecture": "arm64"},
    )
    wasi = layout.image(
        None,
        [(CNCF_LAYER, module)],
        config=b"{}",
        config_type=CNCF_CONFIG,
        platform={"os": "wasip1", "architecture": "wasm"},
    )
    layout.index("v1", [arm, wasi])
    resolution = await local_resolver(cache).resolve(extension(f"oci-layout:{layout.root}:v1"))
    assert resolution.module is not None, resolution.message
    assert resolution.module.image_format is ImageFormat.CNCF_ARTIFACT
    assert resolution.module.image_digest == wasi["digest"]


async def test_layout_without_the_tag_lists_its_tags(tmp_path: Path, cache: ModuleCache) -> None:
    layout = Layout(tmp_path / "layout")
    layout.image("a", [(CNCF_LAYER, proxy_wasm_module())], config=b"{}", config_type=CNCF_CONFIG)
    layout.image("b", [(CNCF_LAYER, proxy_wasm_module())], config=b"{}", config_type=CNCF_CONFIG)
    resolution = await local_resolver(cache).resolve(extension(f"oci-layout:{layout.root}:c"))
    assert "no tag 'c' (tags: a, b)" in resolution.message


async def test_layout_by_digest_needs_no_tag(tmp_path: Path, cache: ModuleCache) -> None:
    layout = Layout(tmp_path / "layout")
    descriptor = layout.image(
        "a", [(CNCF_LAYER, proxy_wasm_module())], config=b"{}", config_type=CNCF_CONFIG
    )
    resolution = await local_resolver(cache).resolve(
        extension(f"oci-layout:{layout.root}@{descriptor['digest']}")
    )
    assert resolution.state is ResolutionState.READY, resolution.message


@pytest.mark.parametrize("which", ["module", "image"])
async def test_expected_sha256_may_name_the_module_or_the_image(
    tmp_path: Path, cache: ModuleCache, which: str
) -> None:
    module = proxy_wasm_module("expected")
    layout = Layout(tmp_path / "layout")
    descriptor = layout.image("v1", [(CNCF_LAYER, module)], config=b"{}", config_type=CNCF_CONFIG)
    expected = hashlib.sha256(module).hexdigest() if which == "module" else descriptor["digest"]
    resolution = await local_resolver(cache).resolve(
        extension(f"oci-layout:{layout.root}:v1", expected_sha256=expected)
    )
    assert resolution.state is ResolutionState.READY, resolution.message


async def test_expected_sha256_that_matches_nothing_fails_permanently(
    tmp_path: Path, cache: ModuleCache
) -> None:
    layout = Layout(tmp_path / "layout")
    layout.image("v1", [(CNCF_LAYER, proxy_wasm_module())], config=b"{}", config_type=CNCF_CONFIG)
    resolution = await local_resolver(cache).resolve(
        extension(f"oci-layout:{layout.root}:v1", expected_sha256="ab" * 32)
    )
    assert resolution.state is ResolutionState.FAILED
    assert resolution.retryable is False
    assert f"sha256 {'ab' * 32} matches neither the module" in resolution.message


@pytest.mark.e2e
async def test_refused_connections_are_retried_then_reported_retryable(cache: ModuleCache) -> None:
    host = f"127.0.0.1:{free_port()}"
    resolver = ImageResolver(
        cache,
        MappingPullSecretStore(),
        registry_config=RegistryConfig(insecure_registries=frozenset({"127.0.0.1"})),
        retries=FAST_RETRIES,
    )
    resolution = await resolver.resolve(extension(f"{host}/team/filter:v1"))
    await resolver.aclose()
    assert resolution.state is ResolutionState.FAILED
    assert resolution.retryable is True
    assert resolution.message.startswith(f"pulling {host}/team/filter:v1 failed after 3 attempts")


class FlakyFront:
    """Answers the first ``failures`` registry requests with ``status``, then forwards."""

    def __init__(self, registry: Registry, failures: int, status: int) -> None:
        self.registry = registry
        self.failures = failures
        self.status = status
        self.failed = 0
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path != "/v2/" and self.failed < self.failures:
            self.failed += 1
            return web.Response(status=self.status, headers={"Retry-After": "0"})
        headers = {
            k: v for k, v in request.headers.items() if k.lower() in ("accept", "authorization")
        }
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, f"{self.registry.url}{request.path_qs}", headers=headers
            ) as upstream,
        ):
            body = await upstream.read()
            keep = ("content-type", "docker-content-digest", "www-authenticate")
            return web.Response(
                status=upstream.status,
                body=body,
                headers={k: v for k, v in upstream.headers.items() if k.lower() in keep},
            )


@pytest.fixture
async def flaky_front(plain_registry: Registry) -> AsyncIterator[FlakyFront]:
    front = FlakyFront(plain_registry, failures=2, status=503)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", front.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", front.port).start()
    yield front
    await runner.cleanup()


@pytest.mark.e2e
@pytest.mark.parametrize("status", [503, 429])
async def test_transient_statuses_are_retried_until_the_pull_succeeds(
    tmp_path: Path,
    cache: ModuleCache,
    plain_registry: Registry,
    flaky_front: FlakyFront,
    status: int,
) -> None:
    flaky_front.status = status
    layout = Layout(tmp_path / "layout")
    layout.image(
        "v1", [(CNCF_LAYER, proxy_wasm_module("flaky"))], config=b"{}", config_type=CNCF_CONFIG
    )
    repository = unique("flaky")
    skopeo_push(layout.root, "v1", plain_registry, f"{repository}:v1")
    resolution = await resolve_once(
        cache, plain_registry, extension(f"127.0.0.1:{flaky_front.port}/{repository}:v1")
    )
    assert resolution.state is ResolutionState.READY, resolution.message
    assert flaky_front.failed == 2


@pytest.mark.e2e
async def test_transient_statuses_that_persist_fail_as_retryable(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry, flaky_front: FlakyFront
) -> None:
    flaky_front.failures = 100
    resolution = await resolve_once(
        cache, plain_registry, extension(f"127.0.0.1:{flaky_front.port}/any:v1")
    )
    assert resolution.retryable is True
    assert "failed after 3 attempts" in resolution.message
    assert "HTTP 503" in resolution.message
    assert flaky_front.failed == 3
