"""`meshext describe --port/--outbound`: which WasmPlugins run on which listener, and why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.core.test_cli import QUICKSTART, meshext

PLUGINS = """\
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: outbound-tag, namespace: bookinfo}
spec:
  url: file://../extensions/build/header-append.wasm
  phase: STATS
  match: [{mode: CLIENT}]
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: admin-port-only, namespace: bookinfo}
spec:
  url: file://../extensions/build/header-append.wasm
  match: [{mode: SERVER, ports: [{number: 9000}]}]
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: bytes, namespace: bookinfo}
spec:
  url: file://../extensions/build/byte-counter.wasm
  type: NETWORK
  pluginConfig: {name: bookinfo_bytes}
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    target = tmp_path / "quickstart"
    shutil.copytree(QUICKSTART, target)
    (target / "40-plugins.yaml").write_text(PLUGINS)
    (tmp_path / "extensions").symlink_to(QUICKSTART.parent / "extensions")
    return target


def describe(folder: Path, *args: str) -> dict[str, Any]:
    done = meshext(
        "describe", str(folder), "--offline", "-o", "json", "-n", "bookinfo", "-l", "app=x", *args
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def on_listener(result: dict[str, Any]) -> set[str]:
    """The WasmPlugins running on the described listener (the quickstart's SMEs aside)."""
    return {
        e["name"] for e in result["extensions"] if e["onListener"] and e["kind"] == "WasmPlugin"
    }


def test_the_inbound_side_of_one_port_lists_what_runs_there(folder: Path) -> None:
    result = describe(folder, "--port", "8080")
    assert result["listener"] == {"direction": "inbound", "port": 8080}
    assert on_listener(result) == {"bytes"}
    assert result["networkFilters"] == ["meshext.wasmplugin.bookinfo.bytes"]
    assert "meshext.wasmplugin.bookinfo.outbound-tag" not in result["httpFilters"]
    assert (
        describe(folder, "--port", "9000")["httpFilters"].count(
            "meshext.wasmplugin.bookinfo.admin-port-only"
        )
        == 1
    )


def test_the_outbound_side_lists_client_extensions(folder: Path) -> None:
    result = describe(folder, "--outbound")
    assert result["listener"] == {"direction": "outbound", "port": None}
    assert on_listener(result) == {"outbound-tag", "bytes"}
    smes = [e for e in result["extensions"] if e["kind"] == "ServiceMeshExtension"]
    assert smes
    assert not any(e["onListener"] for e in smes)
    assert "meshext.wasmplugin.bookinfo.outbound-tag" in result["httpFilters"]
    (tag,) = [e for e in result["extensions"] if e["name"] == "outbound-tag"]
    assert tag["type"] == "HTTP"
    assert tag["match"] == [{"directions": ["gateway", "outbound"], "ports": []}]


def test_json_keeps_its_earlier_keys(folder: Path) -> None:
    result = describe(folder)
    assert {"workload", "extensions", "skipped"} <= set(result)
    first = result["extensions"][0]
    for key in ("order", "kind", "namespace", "name", "phase", "priority", "image", "sha256"):
        assert key in first


def test_the_table_shows_network_filters_and_the_side(folder: Path) -> None:
    done = meshext(
        "describe", str(folder), "--offline", "-n", "bookinfo", "-l", "app=x", "--port", "8080"
    )
    assert done.returncode == 0, done.stderr
    assert "Network filters (inbound port 8080): bytes" in done.stdout
    assert "HTTP filter chain (inbound port 8080)" in done.stdout


def test_outbound_on_a_gateway_is_a_usage_error(folder: Path) -> None:
    done = meshext(
        "describe", str(folder), "--offline", "-n", "bookinfo", "--gateway", "--outbound"
    )
    assert done.returncode == 2
    assert "no outbound side" in done.stderr
