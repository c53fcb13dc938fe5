"""`meshext describe` needs the same registry flags whether or not a tag is cached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.envoy.support import build_examples
from tests.images.conftest import skopeo_push, unique
from tests.images.registry import Registry
from tests.server.mesh import CONTROL_PLANE

pytestmark = pytest.mark.e2e


def meshext(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshext", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "MESHEXT_CACHE": str(cache)},
    )


def flags_for(registry: Registry) -> list[str]:
    if registry.ca is not None:
        return [f"--ca-file={registry.ca.ca_file}", "--allow-private-registry=127.0.0.1"]
    return ["--insecure-registry=127.0.0.1"]


def describe(config: Path, cache: Path, *flags: str) -> dict[str, Any]:
    done = meshext("describe", str(config), "-n", "bookinfo", "-o", "json", *flags, cache=cache)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("kind", ["plain", "tls"])
def test_a_cached_tag_still_needs_the_flags_its_registry_needs(
    kind: str, plain_registry: Registry, tls_registry: Registry, tmp_path: Path
) -> None:
    registry = plain_registry if kind == "plain" else tls_registry
    cache = tmp_path / "cache"
    layout = tmp_path / "layout"
    built = meshext(
        "image", "build", "-q",
        "--wasm", str(build_examples() / "header-append.wasm"),
        "--name", "tagger", "--phase", "PreStats", "--version", "1.0.0",
        "--output-layout", f"{layout}:v1",
        cache=cache,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    repository = unique("describe-flags")
    skopeo_push(layout, "v1", registry, f"{repository}:v1")
    image = f"{registry.host}/{repository}:v1"
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(CONTROL_PLANE.format(enabled="true", members="bookinfo"))
    (config / "ext.yaml").write_text(
        "apiVersion: maistra.io/v1\nkind: ServiceMeshExtension\n"
        "metadata: {name: tagger, namespace: bookinfo}\n"
        f"spec: {{image: '{image}', imagePullPolicy: IfNotPresent}}\n"
    )

    # never cached: without the flags the registry cannot be reached
    fresh = describe(config, tmp_path / "empty-cache")
    assert [s["name"] for s in fresh["skipped"]] == ["tagger"]
    assert fresh["extensions"] == []

    with_flags = describe(config, cache, *flags_for(registry))
    assert [e["name"] for e in with_flags["extensions"]] == ["tagger"]

    # the tag is cached now; leaving the flags out must fail just as before
    cached = describe(config, cache)
    assert cached["extensions"] == []
    [skipped] = cached["skipped"]
    assert (skipped["name"], skipped["reason"]) == ("tagger", "NotReady")
    assert skipped["detail"] == fresh["skipped"][0]["detail"]

    # and with them again the cached image answers
    again = describe(config, cache, *flags_for(registry))
    assert [e["name"] for e in again["extensions"]] == ["tagger"]
