"""Broken and hostile images fail with a clear message and leave the cache clean.

Each image is written by hand into an OCI layout, pushed to a real registry with
skopeo, and resolved by meshext from the registry; the layout itself is resolved too
where the attack does not need a registry (a wrong blob in the layout).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from meshext.images.cache import ModuleCache
from meshext.images.config import Limits
from meshext.mesh.resolution import ResolutionState
from tests.images.conftest import (
    cache_is_clean,
    extension,
    resolve_once,
    resolver_for,
    skopeo_push,
    unique,
)
from tests.images.layouts import (
    CNCF_CONFIG,
    CNCF_LAYER,
    OCI_LAYER_GZIP,
    Entry,
    Layout,
    manifest_yaml,
    tar_layer,
)
from tests.images.registry import Registry
from tests.images.wasm import module_without_abi, proxy_wasm_module

pytestmark = pytest.mark.e2e

MODULE = proxy_wasm_module("hostile tests")


def one_layer(entries: list[Entry]) -> list[tuple[str, bytes]]:
    return [(OCI_LAYER_GZIP, tar_layer(entries))]


CASES: dict[str, tuple[list[tuple[str, bytes]], str]] = {
    "traversal": (
        one_layer([Entry("manifest.yaml", manifest_yaml()), Entry("../../etc/evil.wasm", MODULE)]),
        "holds a path that escapes the root: '../../etc/evil.wasm'",
    ),
    "absolute": (
        one_layer([Entry("/plugin.wasm", MODULE)]),
        "holds an absolute path '/plugin.wasm'",
    ),
    "symlink": (
        one_layer(
            [
                Entry("manifest.yaml", manifest_yaml()),
                Entry("extension.wasm", kind="symlink", target="/etc/passwd"),
            ]
        ),
        "holds a symbolic link 'extension.wasm' -> '/etc/passwd'; links are refused",
    ),
    "hardlink": (
        one_layer(
            [Entry("real.wasm", MODULE), Entry("plugin.wasm", kind="hardlink", target="real.wasm")]
        ),
        "holds a hard link 'plugin.wasm' -> 'real.wasm'",
    ),
    "device": (
        one_layer([Entry("plugin.wasm", MODULE), Entry("dev/null", kind="device")]),
        "holds a device or FIFO 'dev/null'",
    ),
    "missing-module": (
        one_layer([Entry("README", b"no module here")]),
        "the image has neither /manifest.yaml (Maistra format) nor /plugin.wasm (Istio format)",
    ),
    "manifest-names-absent-file": (
        one_layer(
            [Entry("manifest.yaml", manifest_yaml("extension.wasm")), Entry("plugin.wasm", MODULE)]
        ),
        "no module at /extension.wasm named by manifest.yaml",
    ),
    "not-wasm": (
        one_layer([Entry("plugin.wasm", b"#!/bin/sh\necho definitely not wasm\n")]),
        "is not a WebAssembly module",
    ),
    "not-proxy-wasm": (
        [(CNCF_LAYER, module_without_abi())],
        "does not export proxy_abi_version_*: not a proxy-wasm module",
    ),
    "bad-manifest-yaml": (
        one_layer(
            [
                Entry(
                    "manifest.yaml", b"schemaVersion: 1\nname: x\nphase: Sideways\nmodule: a.wasm\n"
                )
            ]
        ),
        "unknown phase 'Sideways'",
    ),
}


def build_case(root: Path, name: str) -> Layout:
    layers, _ = CASES[name]
    layout = Layout(root)
    if layers and layers[0][0] == CNCF_LAYER:
        layout.image(name, layers, config=b"{}", config_type=CNCF_CONFIG)
    else:
        layout.image(name, layers)
    return layout


@pytest.mark.parametrize("case", sorted(CASES))
async def test_hostile_image_from_a_registry_fails_clearly_and_caches_nothing(
    case: str, tmp_path: Path, cache: ModuleCache, plain_registry: Registry
) -> None:
    layout = build_case(tmp_path / "layout", case)
    repository = unique(f"hostile-{case}")
    skopeo_push(layout.root, case, plain_registry, f"{repository}:v1")
    resolution = await resolve_once(
        cache, plain_registry, extension(f"{plain_registry.host}/{repository}:v1")
    )
    assert resolution.state is ResolutionState.FAILED
    assert CASES[case][1] in resolution.message
    assert resolution.retryable is False
    assert cache_is_clean(cache)


@pytest.mark.parametrize("case", sorted(CASES))
async def test_hostile_image_from_a_layout_fails_clearly_and_caches_nothing(
    case: str, tmp_path: Path, cache: ModuleCache, plain_registry: Registry
) -> None:
    layout = build_case(tmp_path / "layout", case)
    resolver = resolver_for(cache, plain_registry)
    resolution = await resolver.resolve(extension(f"oci-layout:{layout.root}:{case}"))
    assert resolution.state is ResolutionState.FAILED
    assert CASES[case][1] in resolution.message
    assert cache_is_clean(cache)


async def test_gzip_bomb_stops_at_the_decompression_limit(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry
) -> None:
    bomb = tar_layer([Entry("plugin.wasm", b"\0" * (48 * 1024 * 1024))])
    assert len(bomb) < 256 * 1024
    layout = Layout(tmp_path / "layout")
    layout.image("bomb", [(OCI_LAYER_GZIP, bomb)])
    repository = unique("bomb")
    skopeo_push(layout.root, "bomb", plain_registry, f"{repository}:v1")
    limits = Limits(decompressed=8 * 1024 * 1024)
    resolution = await resolve_once(
        cache, plain_registry, extension(f"{plain_registry.host}/{repository}:v1"), limits=limits
    )
    assert resolution.state is ResolutionState.FAILED
    assert "decompresses to more than 8388608 bytes" in resolution.message
    assert cache_is_clean(cache)


async def test_module_over_the_size_limit_is_refused(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry
) -> None:
    layout = Layout(tmp_path / "layout")
    layout.image("big", [(CNCF_LAYER, MODULE)], config=b"{}", config_type=CNCF_CONFIG)
    resolver = resolver_for(cache, plain_registry, limits=Limits(module=100))
    resolution = await resolver.resolve(extension(f"oci-layout:{layout.root}:big"))
    assert "over the limit of 100 bytes" in resolution.message
    assert cache_is_clean(cache)


async def test_registry_serving_a_tampered_blob_is_caught_by_its_digest(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry
) -> None:
    layout = Layout(tmp_path / "layout")
    descriptor = layout.image("v1", [(CNCF_LAYER, MODULE)], config=b"{}", config_type=CNCF_CONFIG)
    repository = unique("tampered")
    skopeo_push(layout.root, "v1", plain_registry, f"{repository}:v1")
    manifest = json.loads(layout.blob_path(descriptor["digest"]).read_bytes())
    layer_digest = manifest["layers"][0]["digest"]
    stored = plain_registry.blob_data(layer_digest)
    evil = proxy_wasm_module("evil twin")[: len(MODULE)].ljust(len(MODULE), b"\0")
    stored.write_bytes(evil)
    resolution = await resolve_once(
        cache, plain_registry, extension(f"{plain_registry.host}/{repository}:v1")
    )
    assert resolution.state is ResolutionState.FAILED
    assert f"blob {layer_digest}" in resolution.message
    assert "the content hashes to sha256:" in resolution.message
    assert cache_is_clean(cache)


async def test_layout_holding_a_blob_that_does_not_match_its_name_is_refused(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry
) -> None:
    layout = Layout(tmp_path / "layout")
    layer = tar_layer([Entry("plugin.wasm", MODULE)])
    descriptor = layout.image("v1", [(OCI_LAYER_GZIP, layer)])
    manifest = json.loads(layout.blob_path(descriptor["digest"]).read_bytes())
    swapped = gzip.compress(gzip.decompress(layer), compresslevel=1, mtime=0)
    layout.blob_path(manifest["layers"][0]["digest"]).write_bytes(swapped)
    resolver = resolver_for(cache, plain_registry)
    resolution = await resolver.resolve(extension(f"oci-layout:{layout.root}:v1"))
    assert resolution.state is ResolutionState.FAILED
    assert "declares" in resolution.message or "hashes to" in resolution.message
    assert cache_is_clean(cache)


async def test_index_without_a_usable_platform_lists_what_it_offers(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry
) -> None:
    layout = Layout(tmp_path / "layout")
    arm = layout.image(
        None,
        [(OCI_LAYER_GZIP, tar_layer([Entry("plugin.wasm", MODULE)]))],
        platform={"os": "linux", "architecture": "arm64"},
    )
    windows = layout.image(
        None,
        [(OCI_LAYER_GZIP, tar_layer([Entry("plugin.wasm", proxy_wasm_module("win"))]))],
        platform={"os": "windows", "architecture": "amd64"},
    )
    layout.index("multi", [arm, windows])
    repository = unique("no-platform")
    skopeo_push(layout.root, "multi", plain_registry, f"{repository}:multi", "--all")
    resolution = await resolve_once(
        cache, plain_registry, extension(f"{plain_registry.host}/{repository}:multi")
    )
    assert resolution.state is ResolutionState.FAILED
    assert (
        "has no linux/amd64 or wasm entry (platforms: linux/arm64, windows/amd64)"
        in resolution.message
    )
    assert cache_is_clean(cache)
