"""WasmPlugin: every field of Istio's API read, checked and mapped onto the extension model."""

from __future__ import annotations

from typing import Any

import pytest

from meshext.api.decode import DecodeError, decode
from meshext.api.extension import ServiceMeshExtension
from meshext.api.wasmplugin import WasmPlugin
from meshext.mesh.extension import Target, from_service_mesh_extension, from_wasm_plugin
from meshext.mesh.traffic import Direction, FilterLayer, Side
from tests.documents import sme_document

SHA = "a" * 64


def plugin_document(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "tagger", "namespace": "apps"},
        "spec": {"url": "oci://registry.example/tagger:1", **spec},
    }


def plugin(**spec: Any) -> WasmPlugin:
    resource = decode(plugin_document(**spec))
    assert isinstance(resource, WasmPlugin)
    return resource


def errors(**spec: Any) -> list[str]:
    with pytest.raises(DecodeError) as caught:
        decode(plugin_document(**spec))
    return [str(e) for e in caught.value.errors]


def test_a_plugin_using_every_field_of_istios_api_is_accepted_and_mapped() -> None:
    ext = from_wasm_plugin(
        plugin(
            url="https://modules.example/tagger.wasm",
            sha256=SHA,
            imagePullPolicy="Always",
            imagePullSecret="pull",
            pluginName="tagger_root",
            pluginConfig={"value": "x"},
            phase="AUTHZ",
            priority=7,
            failStrategy="FAIL_OPEN",
            vmConfig={
                "env": [{"name": "A", "value": "1"}, {"name": "POD_NAME", "valueFrom": "HOST"}]
            },
            match=[{"mode": "CLIENT", "ports": [{"number": 8080}]}],
            type="NETWORK",
            targetRefs=[{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"}],
        )
    )
    assert ext.image == "https://modules.example/tagger.wasm"
    assert ext.expected_sha256 == SHA
    assert ext.env == {"A": "1"}
    assert ext.host_env == ("POD_NAME",)
    assert ext.layer is FilterLayer.NETWORK
    assert ext.targets == (Target("Gateway", "edge"),)
    assert ext.traffic.selects(Side(Direction.OUTBOUND, 8080))
    assert ext.traffic.selects(Side(Direction.GATEWAY, 8080))
    assert not ext.traffic.selects(Side(Direction.OUTBOUND, 9090))
    assert not ext.traffic.selects(Side(Direction.INBOUND, 8080))


@pytest.mark.parametrize(
    ("mode", "inbound", "outbound", "gateway"),
    [
        ("CLIENT", False, True, True),
        ("SERVER", True, False, False),
        ("CLIENT_AND_SERVER", True, True, True),
        ("UNDEFINED", True, True, True),
    ],
)
def test_match_mode_selects_directions_as_istio_documents(
    mode: str, inbound: bool, outbound: bool, gateway: bool
) -> None:
    traffic = from_wasm_plugin(plugin(match=[{"mode": mode}])).traffic
    assert traffic.selects(Side(Direction.INBOUND, 80)) is inbound
    assert traffic.selects(Side(Direction.OUTBOUND, 80)) is outbound
    assert traffic.selects(Side(Direction.GATEWAY, 80)) is gateway


def test_traffic_matching_any_selector_runs_the_plugin() -> None:
    traffic = from_wasm_plugin(
        plugin(match=[{"mode": "SERVER", "ports": [{"number": 80}]}, {"mode": "CLIENT"}])
    ).traffic
    assert traffic.selects(Side(Direction.INBOUND, 80))
    assert not traffic.selects(Side(Direction.INBOUND, 81))
    assert traffic.selects(Side(Direction.OUTBOUND, 81))


def test_a_plugin_without_match_sees_all_traffic_and_an_sme_keeps_maistras_meaning() -> None:
    traffic = from_wasm_plugin(plugin()).traffic
    assert all(traffic.selects(Side(d, 1)) for d in Direction)
    sme = decode(sme_document("tag", "apps", "registry.example/tag:1"))
    assert isinstance(sme, ServiceMeshExtension)
    sme_traffic = from_service_mesh_extension(sme).traffic
    assert sme_traffic.selects(Side(Direction.INBOUND, 1))
    assert sme_traffic.selects(Side(Direction.GATEWAY, 1))
    assert not sme_traffic.selects(Side(Direction.OUTBOUND, 1))


def test_an_unknown_field_inside_match_is_an_error_naming_the_resource_and_field() -> None:
    (error,) = errors(match=[{"mode": "CLIENT", "port": [{"number": 1}]}])
    assert "WasmPlugin apps/tagger" in error
    assert "match[0].port" in error
    assert "unknown field" in error


def test_an_unknown_mode_is_an_error_naming_the_field() -> None:
    (error,) = errors(match=[{"mode": "OUTBOUND"}])
    assert "match[0].mode" in error


def test_selector_and_target_refs_together_are_refused() -> None:
    (error,) = errors(
        selector={"matchLabels": {"app": "x"}},
        targetRefs=[{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"}],
    )
    assert "only one of targetRefs or selector" in error


@pytest.mark.parametrize(
    ("ref", "problem"),
    [
        ({"kind": "Gateway", "name": "edge"}, "group 'gateway.networking.k8s.io'"),
        ({"group": "", "kind": "Deployment", "name": "x"}, "not a target Istio supports"),
        ({"group": "", "kind": "Service", "name": ""}, "targetRefs[0].name"),
    ],
)
def test_invalid_target_refs_are_refused_with_the_reason(ref: dict[str, str], problem: str) -> None:
    (error,) = errors(targetRefs=[ref])
    assert problem in error


def test_a_target_in_another_namespace_is_refused() -> None:
    (error,) = errors(targetRefs=[{"kind": "Service", "name": "web", "namespace": "other"}])
    assert "another namespace" in error


def test_the_older_single_target_ref_is_read_like_target_refs() -> None:
    ext = from_wasm_plugin(plugin(targetRef={"kind": "Service", "name": "web"}))
    assert ext.targets == (Target("Service", "web"),)


def test_a_host_env_var_with_a_value_is_refused() -> None:
    (error,) = errors(vmConfig={"env": [{"name": "X", "valueFrom": "HOST", "value": "v"}]})
    assert "vmConfig.env[0]" in error
    assert "only be set when valueFrom is INLINE" in error


def test_a_verification_key_is_refused_because_nothing_would_verify_it() -> None:
    (error,) = errors(verificationKey="-----BEGIN PUBLIC KEY-----")
    assert "verificationKey" in error


def test_an_empty_sha256_means_none_as_istios_schema_allows() -> None:
    assert plugin(sha256="").spec.sha256 is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://user:secret@modules.example/m.wasm", "credentials"),
        ("https:///m.wasm", "with a host"),
        ("ftp://modules.example/m.wasm", ""),
    ],
)
def test_bad_module_urls_are_refused(url: str, problem: str) -> None:
    (error,) = errors(url=url)
    assert "spec.url" in error or "url" in error
    assert problem in error
    assert "secret" not in error


def test_an_sme_image_cannot_be_an_http_url() -> None:
    with pytest.raises(DecodeError) as caught:
        decode(sme_document("tag", "apps", "https://modules.example/m.wasm"))
    assert "WasmPlugin feature" in str(caught.value)


def test_plugin_type_defaults_to_http() -> None:
    assert from_wasm_plugin(plugin()).layer is FilterLayer.HTTP
    assert from_wasm_plugin(plugin(type="HTTP")).layer is FilterLayer.HTTP


@pytest.mark.parametrize("priority", [2**31, -(2**31) - 1])
def test_a_priority_beyond_istios_int32_is_an_error_naming_the_field(priority: int) -> None:
    (message,) = errors(priority=priority)
    assert "spec.priority" in message
    assert "outside the 32-bit range" in message


def test_the_int32_limits_themselves_are_accepted() -> None:
    assert plugin(priority=2**31 - 1).spec.priority == 2**31 - 1
    assert plugin(priority=-(2**31)).spec.priority == -(2**31)
