"""`meshext describe` resolves images, so defaults from manifest.yaml and broken images show."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meshext.envoy.standin import stand_in_module
from tests.envoy.support import build_examples
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


def sme(name: str, image: str) -> str:
    return (
        "apiVersion: maistra.io/v1\nkind: ServiceMeshExtension\n"
        f"metadata: {{name: {name}, namespace: bookinfo}}\nspec: {{image: '{image}'}}\n"
    )


def test_phase_and_priority_come_from_the_images_manifest_and_failures_are_explained(
    tmp_path: Path,
) -> None:
    layout = tmp_path / "images" / "tagger"
    built = meshext(
        "image", "build", "-q",
        "--wasm", str(build_examples() / "header-append.wasm"),
        "--name", "tagger", "--phase", "PreStats", "--priority", "7",
        "--output-layout", f"{layout}:v1",
        cache=tmp_path / "cache",
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(CONTROL_PLANE.format(enabled="true", members="bookinfo"))
    (config / "ext.yaml").write_text(
        sme("from-manifest", f"oci-layout:{layout}:v1")
        + "---\n"
        + sme("missing", f"oci-layout:{tmp_path / 'nowhere'}:v1")
    )

    done = meshext(
        "describe", str(config), "-n", "bookinfo", "-o", "json", cache=tmp_path / "cache"
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    [applied] = result["extensions"]
    assert (applied["name"], applied["phase"], applied["priority"]) == (
        "from-manifest",
        "PreStats",
        7,
    )
    assert applied["imageDigest"].startswith("sha256:")
    [skipped] = result["skipped"]
    assert (skipped["name"], skipped["reason"]) == ("missing", "NotReady")
    assert "nowhere" in skipped["detail"]

    offline = meshext(
        "describe", str(config), "-n", "bookinfo", "-o", "json", "--offline", cache=tmp_path / "c2"
    )
    reasons = {s["name"]: s["reason"] for s in json.loads(offline.stdout)["skipped"]}
    assert reasons == {"from-manifest": "NotReady", "missing": "NotReady"}


def test_a_configuration_the_module_never_reads_is_a_warning_and_results_are_kept(
    tmp_path: Path,
) -> None:
    # The stand-in ignores its configuration, as a C++ SDK module does under a root id
    # it did not register.
    wasm = tmp_path / "ignores-config.wasm"
    wasm.write_bytes(stand_in_module())
    layout = tmp_path / "images" / "quiet"
    built = meshext(
        "image", "build", "-q", "--wasm", str(wasm), "--name", "quiet", "--phase", "PreStats",
        "--output-layout", f"{layout}:v1", cache=tmp_path / "cache",
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(CONTROL_PLANE.format(enabled="true", members="bookinfo"))
    (config / "ext.yaml").write_text(
        "apiVersion: maistra.io/v1alpha1\nkind: ServiceMeshExtension\n"
        "metadata: {name: quiet, namespace: bookinfo}\n"
        f"spec: {{image: 'oci-layout:{layout}:v1', config: 'some setting'}}\n"
    )
    for _ in range(2):  # the second run reads the kept pre-flight result
        done = meshext("describe", str(config), "-n", "bookinfo", cache=tmp_path / "cache")
        assert done.returncode == 0, done.stderr
        assert "never read its configuration" in done.stderr
        assert "bookinfo/quiet" in done.stderr
    kept = list((tmp_path / "cache" / "modules" / "preflight").glob("*.json"))
    assert len(kept) == 1
