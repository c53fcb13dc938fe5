"""The module cache: single-flight pulls, restarts, eviction and pull policies.

Requests are counted by a transport wrapped around httpx's real one, talking to a
real registry.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from meshext.images.cache import ModuleCache
from meshext.mesh.resolution import ResolutionState
from tests.images.conftest import (
    CountingTransport,
    extension,
    resolve_once,
    resolver_for,
    skopeo_push,
    unique,
)
from tests.images.layouts import CNCF_CONFIG, CNCF_LAYER, OCI_LAYER_GZIP, Entry, Layout, tar_layer
from tests.images.registry import Registry
from tests.images.wasm import proxy_wasm_module

pytestmark = pytest.mark.e2e


def push_module(
    tmp_path: Path, registry: Registry, module: bytes, repository: str, tag: str
) -> str:
    layout = Layout(tmp_path / f"layout-{repository}-{tag}")
    layout.image(tag, [(CNCF_LAYER, module)], config=b"{}", config_type=CNCF_CONFIG)
    skopeo_push(layout.root, tag, registry, f"{repository}:{tag}")
    return f"{registry.host}/{repository}:{tag}"


def counting() -> CountingTransport:
    return CountingTransport(httpx.AsyncHTTPTransport())


async def test_concurrent_resolves_of_one_image_download_it_once(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry
) -> None:
    layout = Layout(tmp_path / "layout")
    layout.image(
        "v1",
        [
            (OCI_LAYER_GZIP, tar_layer([Entry("README", b"first layer")])),
            (OCI_LAYER_GZIP, tar_layer([Entry("plugin.wasm", proxy_wasm_module("concurrent"))])),
        ],
    )
    repository = unique("concurrent")
    skopeo_push(layout.root, "v1", plain_registry, f"{repository}:v1")
    transport = counting()
    resolver = resolver_for(cache, plain_registry, transport=transport)
    image = f"{plain_registry.host}/{repository}:v1"
    resolutions = await asyncio.gather(
        *(resolver.resolve(extension(image, name=f"ext-{n}")) for n in range(12))
    )
    await resolver.aclose()
    assert {r.state for r in resolutions} == {ResolutionState.READY}
    assert len({r.module.sha256 for r in resolutions if r.module}) == 1
    assert transport.blob_downloads == 2
    assert transport.counts[("GET", "manifest")] == 1


async def test_new_cache_object_on_the_same_folder_hits_without_downloading(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry
) -> None:
    image = push_module(
        tmp_path, plain_registry, proxy_wasm_module("restart"), unique("restart"), "v1"
    )
    before = await resolve_once(cache, plain_registry, extension(image))
    transport = counting()
    reopened = ModuleCache(cache.root)
    after = await resolve_once(reopened, plain_registry, extension(image), transport=transport)
    assert after.state is ResolutionState.READY
    assert after.module == before.module
    assert transport.registry_requests == 0


@pytest.mark.parametrize("policy", ["IfNotPresent", None], ids=["IfNotPresent", "no-policy"])
async def test_if_not_present_and_other_tags_without_a_policy_never_ask_the_registry_again(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry, policy: str | None
) -> None:
    repository = unique("ifnotpresent")
    image = push_module(tmp_path, plain_registry, proxy_wasm_module("v1"), repository, "v1")
    transport = counting()
    resolver = resolver_for(cache, plain_registry, transport=transport)
    first = await resolver.resolve(extension(image, policy=policy))
    requests = transport.registry_requests
    push_module(tmp_path, plain_registry, proxy_wasm_module("v1 moved"), repository, "v1")
    second = await resolver.resolve(extension(image, policy=policy))
    await resolver.aclose()
    assert second.module == first.module
    assert transport.registry_requests == requests


@pytest.mark.parametrize(
    ("policy", "tag"), [("Always", "v1"), (None, "latest")], ids=["Always", "latest-no-policy"]
)
async def test_always_and_latest_without_a_policy_recheck_the_tag_and_download_when_it_moved(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry, policy: str | None, tag: str
) -> None:
    repository = unique("always")
    image = push_module(tmp_path, plain_registry, proxy_wasm_module("always v1"), repository, tag)
    transport = counting()
    resolver = resolver_for(cache, plain_registry, transport=transport)
    first = await resolver.resolve(extension(image, policy=policy))
    downloads = transport.blob_downloads
    unchanged = await resolver.resolve(extension(image, policy=policy))
    assert unchanged.module == first.module
    assert transport.counts[("HEAD", "manifest")] == 2
    assert transport.blob_downloads == downloads
    moved = proxy_wasm_module("always v2")
    push_module(tmp_path, plain_registry, moved, repository, tag)
    changed = await resolver.resolve(extension(image, policy=policy))
    await resolver.aclose()
    assert changed.module is not None
    assert changed.module.sha256 == hashlib.sha256(moved).hexdigest()
    assert transport.blob_downloads == downloads + 1


async def test_digest_pinned_reference_never_pulls_again_even_with_always(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry
) -> None:
    repository = unique("pinned")
    tagged = push_module(tmp_path, plain_registry, proxy_wasm_module("pinned"), repository, "v1")
    first = await resolve_once(cache, plain_registry, extension(tagged))
    assert first.module is not None
    assert first.module.image_digest is not None
    pinned = f"{plain_registry.host}/{repository}@{first.module.image_digest}"
    transport = counting()
    again = resolver_for(cache, plain_registry, transport=transport)
    results = [await again.resolve(extension(pinned, policy="Always")) for _ in range(3)]
    await again.aclose()
    assert all(r.module == first.module for r in results)
    assert transport.registry_requests == 0


async def test_eviction_removes_only_modules_no_extension_uses(
    tmp_path: Path, plain_registry: Registry
) -> None:
    modules = {name: proxy_wasm_module(f"evict {name}") for name in ("a", "b", "c")}
    size = len(modules["a"])
    cache = ModuleCache(tmp_path / "cache", max_bytes=2 * size + size // 2)
    repository = unique("evict")
    images = {
        n: push_module(tmp_path, plain_registry, m, repository, n) for n, m in modules.items()
    }
    resolver = resolver_for(cache, plain_registry)
    a = await resolver.resolve(extension(images["a"], name="uses-a"))
    b = await resolver.resolve(extension(images["b"], name="uses-b"))
    assert a.module is not None
    assert b.module is not None
    resolver.forget(extension(images["a"], name="uses-a").key)
    c = await resolver.resolve(extension(images["c"], name="uses-c"))
    await resolver.aclose()
    assert c.module is not None
    assert cache.path_for(a.module.sha256) is None
    assert cache.path_for(b.module.sha256) is not None
    assert cache.path_for(c.module.sha256) is not None
    assert cache.image(a.module.image_digest or "") is None


async def test_eviction_keeps_modules_in_use_even_over_the_limit(
    tmp_path: Path, plain_registry: Registry
) -> None:
    cache = ModuleCache(tmp_path / "cache", max_bytes=1)
    repository = unique("overfull")
    resolver = resolver_for(cache, plain_registry)
    results = [
        await resolver.resolve(
            extension(
                push_module(
                    tmp_path, plain_registry, proxy_wasm_module(f"full {n}"), repository, f"t{n}"
                ),
                name=f"e{n}",
            )
        )
        for n in range(3)
    ]
    await resolver.aclose()
    assert all(r.module and cache.path_for(r.module.sha256) for r in results)


HOLD_LOCK = """
import fcntl, os, sys
descriptor = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o644)
fcntl.flock(descriptor, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


async def test_a_pull_waits_while_another_process_holds_the_image_lock(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry
) -> None:
    layout = Layout(tmp_path / "layout")
    descriptor = layout.image(
        "v1",
        [(CNCF_LAYER, proxy_wasm_module("cross process"))],
        config=b"{}",
        config_type=CNCF_CONFIG,
    )
    repository = unique("locked")
    skopeo_push(layout.root, "v1", plain_registry, f"{repository}:v1")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(cache.lock_file(f"image:{descriptor['digest']}"))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"
        transport = counting()
        resolver = resolver_for(cache, plain_registry, transport=transport)
        waiting = asyncio.create_task(
            resolver.resolve(extension(f"{plain_registry.host}/{repository}:v1"))
        )
        while not transport.counts[("GET", "manifest")]:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        assert not waiting.done()
        assert transport.blob_downloads == 0
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait()
    resolution = await waiting
    await resolver.aclose()
    assert resolution.state is ResolutionState.READY
    assert transport.blob_downloads == 1
