"""The `meshext validate` and `meshext describe` commands, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[2]
QUICKSTART = ROOT / "examples" / "quickstart"
BROKEN = Path(__file__).parent / "data" / "broken"


def meshext(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshext", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


def describe_json(*args: str) -> dict[str, Any]:
    done = meshext("describe", str(QUICKSTART), "--offline", "-o", "json", *args)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_validate_accepts_the_quickstart() -> None:
    done = meshext("validate", str(QUICKSTART))
    assert done.returncode == 0
    assert "9 resource(s) valid" in done.stdout


def test_validate_lists_every_error_and_exits_1() -> None:
    done = meshext("validate", str(BROKEN))
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 7
    assert "7 error(s)" in done.stderr


def test_describe_lists_extensions_in_execution_order_with_phase_and_priority() -> None:
    result = describe_json("--namespace", "bookinfo", "--labels", "app=httpbin,version=v1")
    order = [(e["namespace"], e["name"], e["phase"], e["priority"]) for e in result["extensions"]]
    assert order == [
        ("bookinfo", "require-token", "PreAuthZ", 50),
        ("bookinfo", "tag-bookinfo", "PostAuthZ", 200),
        ("istio-system", "header-append", "PostAuthZ", 100),
        ("bookinfo", "tag-wasmplugin", "PreStats", 1),
        ("istio-system", "request-counter", "PostStats", 10),
    ]


def test_describe_explains_why_the_others_do_not_apply() -> None:
    result = describe_json("--namespace", "bookinfo", "--labels", "app=httpbin")
    skipped = {(s["namespace"], s["name"]): s["reason"] for s in result["skipped"]}
    assert skipped == {
        ("payments", "payments-audit"): "OtherNamespace",
        ("sandbox", "sandbox-experiment"): "ExtensionNotInMesh",
    }


def test_describe_without_matching_labels_keeps_only_unselective_extensions() -> None:
    result = describe_json("--namespace", "payments")
    assert [e["name"] for e in result["extensions"]] == ["payments-audit", "request-counter"]


def test_describe_a_gateway_in_the_control_plane_namespace() -> None:
    result = describe_json("--namespace", "istio-system", "--gateway", "--labels", "app=httpbin")
    assert result["workload"]["kind"] == "gateway"
    assert [e["name"] for e in result["extensions"]] == ["header-append", "request-counter"]


def test_describe_table_shows_the_filter_chain() -> None:
    done = meshext("describe", str(QUICKSTART), "--offline", "-n", "bookinfo", "-l", "app=httpbin")
    assert done.returncode == 0, done.stderr
    assert "Extensions, in execution order" in done.stdout
    assert "envoy.filters.http.rbac" in done.stdout


def test_describe_rejects_malformed_labels() -> None:
    done = meshext("describe", str(QUICKSTART), "--offline", "-n", "bookinfo", "-l", "app")
    assert done.returncode == 2
    assert "'app' is not key=value" in done.stderr


def test_a_misspelt_meshext_annotation_is_a_validation_error(tmp_path: Path) -> None:
    (tmp_path / "ext.yaml").write_text(
        "apiVersion: maistra.io/v1\n"
        "kind: ServiceMeshExtension\n"
        "metadata: {name: ext, namespace: bookinfo, annotations: {meshext.io/root_id: x}}\n"
        'spec: {image: "quay.io/a/b:1", phase: PostAuthZ}\n'
    )
    done = meshext("validate", str(tmp_path))
    assert done.returncode == 1
    assert "ServiceMeshExtension bookinfo/ext: metadata.annotations" in done.stderr
    assert "unknown annotation 'meshext.io/root_id'" in done.stderr


def test_describe_shows_the_root_id_each_extension_is_configured_with() -> None:
    result = describe_json("--namespace", "bookinfo", "--labels", "app=httpbin,version=v1")
    assert {e["rootId"] for e in result["extensions"]} == {""}
