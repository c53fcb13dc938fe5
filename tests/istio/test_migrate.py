"""``meshext migrate`` converts ServiceMeshExtensions offline and warns where meaning changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from meshext.cli.kube import kube
from meshext.cli.migrate import migrate
from meshext.istio.migrate import Migration, migrate_documents
from tests.documents import sme_document


def _sme(
    name: str,
    phase: str | None,
    priority: int | None,
    *,
    namespace: str = "team-a",
    version: str = "v1",
    config: object = None,
) -> dict[str, Any]:
    return sme_document(
        name,
        namespace,
        f"quay.io/acme/{name}:v1",
        version=version,
        phase=phase,
        priority=priority,
        config=config,
    )


def _migrate(*documents: dict[str, Any]) -> Migration:
    return migrate_documents((None, d) for d in documents)


def _warnings(result: Migration) -> str:
    return "\n".join(str(w) for w in result.warnings)


def test_an_extension_becomes_a_wasm_plugin_pulling_its_image() -> None:
    result = _migrate(_sme("header", "PreAuthN", 5, config={"value": "x"}))
    assert result.errors == []
    (plugin,) = result.documents
    assert plugin["kind"] == "WasmPlugin"
    assert plugin["metadata"]["name"] == "header"
    assert plugin["metadata"]["namespace"] == "team-a"
    assert plugin["spec"]["url"] == "oci://quay.io/acme/header:v1"
    assert plugin["spec"]["phase"] == "AUTHN"
    assert plugin["spec"]["priority"] == 5
    assert plugin["spec"]["pluginConfig"] == {"value": "x"}
    assert "ownerReferences" not in plugin["metadata"]


def test_every_conversion_warns_that_istio_reads_plugin_wasm() -> None:
    result = _migrate(_sme("header", "PreAuthN", 5))
    assert "/plugin.wasm" in _warnings(result)


def test_post_authn_and_pre_authz_both_become_authz_with_a_warning() -> None:
    for phase in ("PostAuthN", "PreAuthZ"):
        result = _migrate(_sme("a", phase, 1))
        assert result.documents[0]["spec"]["phase"] == "AUTHZ"
        assert f"{phase} becomes AUTHZ" in _warnings(result)


def test_post_authz_and_pre_stats_become_stats_with_a_warning() -> None:
    for phase in ("PostAuthZ", "PreStats"):
        result = _migrate(_sme("a", phase, 1))
        assert result.documents[0]["spec"]["phase"] == "STATS"
        assert f"{phase} becomes STATS" in _warnings(result)


def test_post_stats_becomes_the_unspecified_phase_with_a_warning() -> None:
    result = _migrate(_sme("a", "PostStats", 1))
    assert "phase" not in result.documents[0]["spec"]
    assert "PostStats becomes the unspecified phase" in _warnings(result)


def test_a_v1alpha1_config_that_is_not_json_is_wrapped_with_a_warning() -> None:
    result = _migrate(_sme("a", "PreAuthN", 1, version="v1alpha1", config="plain"))
    assert result.documents[0]["spec"]["pluginConfig"] == {"raw_v1alpha1_config": "plain"}
    assert "not a JSON object" in _warnings(result)


def test_a_v1alpha1_json_config_becomes_plugin_config_without_a_config_warning() -> None:
    result = _migrate(_sme("a", "PreAuthN", 1, version="v1alpha1", config='{"k": 1}'))
    assert result.documents[0]["spec"]["pluginConfig"] == {"k": 1}
    assert "spec.config" not in _warnings(result)


def test_phase_and_priority_left_to_the_image_manifest_are_reported() -> None:
    warnings = _warnings(_migrate(_sme("a", None, None)))
    assert "spec.phase: not set" in warnings
    assert "spec.priority: not set" in warnings


def test_an_order_change_across_merged_phases_is_reported_with_a_fix() -> None:
    result = _migrate(_sme("first", "PostAuthN", 1), _sme("second", "PreAuthZ", 10))
    warnings = _warnings(result)
    assert "order changes" in warnings
    assert "second now runs first" in warnings
    assert "raise first's priority above 10" in warnings


def test_no_order_warning_when_priorities_already_agree_with_the_phases() -> None:
    result = _migrate(_sme("first", "PostAuthN", 10), _sme("second", "PreAuthZ", 1))
    assert "order changes" not in _warnings(result)


def test_no_order_warning_for_extensions_that_never_share_a_workload() -> None:
    result = _migrate(
        _sme("first", "PostAuthN", 1, namespace="team-a"),
        _sme("second", "PreAuthZ", 10, namespace="team-b"),
    )
    assert "order changes" not in _warnings(result)


def test_a_mesh_wide_extension_moves_to_istios_root_namespace() -> None:
    result = migrate_documents(
        [(None, _sme("global", "PreAuthN", 1, namespace="basic"))],
        control_plane_namespace="basic",
        root_namespace="istio-system",
    )
    assert result.documents[0]["metadata"]["namespace"] == "istio-system"
    assert "root namespace 'istio-system'" in _warnings(result)


def test_other_documents_pass_through_and_broken_extensions_are_errors() -> None:
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    broken = _sme("broken", "Early", 1)
    result = _migrate(config_map, broken)
    assert result.documents == [config_map]
    assert len(result.errors) == 1
    assert "spec.phase" in result.errors[0]
    assert "unknown phase 'Early'" in result.errors[0]


def test_the_command_writes_yaml_to_stdout_and_warnings_to_stderr(tmp_path: Path) -> None:
    source = tmp_path / "extensions.yaml"
    source.write_text(
        yaml.safe_dump_all([_sme("first", "PostAuthN", 1), _sme("second", "PreAuthZ", 10)])
    )
    result = CliRunner().invoke(migrate, [str(source)])
    assert result.exit_code == 0, result.output
    plugins = list(yaml.safe_load_all(result.stdout))
    assert [p["kind"] for p in plugins] == ["WasmPlugin", "WasmPlugin"]
    assert f"{source} (document 2) ServiceMeshExtension team-a/second" in result.stderr
    assert "converted 2 ServiceMeshExtension(s)" in result.stderr


def test_the_command_fails_when_a_document_cannot_be_converted(tmp_path: Path) -> None:
    source = tmp_path / "broken.yaml"
    source.write_text(yaml.safe_dump(_sme("broken", "Early", 1)))
    result = CliRunner().invoke(kube, ["migrate", str(source)])
    assert result.exit_code == 1
    assert "error:" in result.stderr


def test_a_migrated_extension_stays_on_inbound_traffic_and_warns_about_gateways() -> None:
    result = _migrate(_sme("header", "PreAuthN", 5))
    (plugin,) = result.documents
    assert plugin["spec"]["match"] == [{"mode": "SERVER"}]
    assert "gateways no longer run this extension" in _warnings(result)
    assert "meshext.io/placement: exact" in _warnings(result)


def test_migrate_refuses_a_billion_laughs_file_clearly(tmp_path: Path) -> None:
    lines = ['l0: &l0 "lol"']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]
    (tmp_path / "laughs.yaml").write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(migrate, [str(tmp_path / "laughs.yaml")])
    assert result.exit_code == 1
    assert "laughs.yaml (document 1): not valid YAML" in result.output
    assert "once aliases are expanded" in result.output
