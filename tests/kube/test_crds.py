"""The CRDs are generated from the pydantic models and are structural."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, Field

from meshext.api.extension import ExtensionSpecV1
from meshext.kube.crds import (
    SERVICE_MESH_EXTENSION,
    ConversionWebhook,
    Definition,
    SchemaError,
    Version,
    custom_resource_definition,
    custom_resource_definitions,
    structural_schema,
)
from tests.kube_harness import REPO_ROOT

COMMITTED_CRDS = REPO_ROOT / "deploy" / "base" / "crds.yaml"


def _walk(node: object) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _version(crd: dict[str, Any], name: str) -> dict[str, Any]:
    versions: list[dict[str, Any]] = crd["spec"]["versions"]
    return next(v for v in versions if v["name"] == name)


def _spec_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    schema: dict[str, Any] = _version(crd, version)["schema"]["openAPIV3Schema"]
    return schema["properties"]["spec"]  # type: ignore[no-any-return]


def test_every_field_of_the_v1_spec_model_is_in_the_v1_schema() -> None:
    crd = custom_resource_definition(SERVICE_MESH_EXTENSION)
    properties = set(_spec_schema(crd, "v1")["properties"])
    wire_names = {f.alias or name for name, f in ExtensionSpecV1.model_fields.items()}
    assert properties == wire_names


def test_a_field_added_to_a_model_shows_up_in_the_generated_crd() -> None:
    class SpecWithTimeout(ExtensionSpecV1):
        fetch_timeout_seconds: int | None = Field(default=None, description="How long to wait.")

    definition = Definition(
        group="maistra.io",
        kind="ServiceMeshExtension",
        plural="servicemeshextensions",
        singular="servicemeshextension",
        short_names=("sme",),
        description="test",
        versions=(Version("v1", SpecWithTimeout, storage=True),),
    )
    schema = _spec_schema(custom_resource_definition(definition), "v1")
    assert schema["properties"]["fetchTimeoutSeconds"] == {
        "type": "integer",
        "description": "How long to wait.",
    }


def test_generated_schemas_contain_no_construct_kubernetes_rejects() -> None:
    for crd in custom_resource_definitions():
        for node in _walk(crd["spec"]["versions"]):
            assert "$ref" not in node
            assert "anyOf" not in node
            assert "title" not in node
            assert "default" not in node
            assert node.get("additionalProperties") is not False
            assert node.get("type") != "null"


def test_free_form_config_preserves_unknown_fields_and_v1alpha1_config_is_a_string() -> None:
    crd = custom_resource_definition(SERVICE_MESH_EXTENSION)
    assert _spec_schema(crd, "v1")["properties"]["config"] == {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    assert _spec_schema(crd, "v1alpha1")["properties"]["config"] == {"type": "string"}


def test_phase_is_an_enum_of_the_six_maistra_phases() -> None:
    crd = custom_resource_definition(SERVICE_MESH_EXTENSION)
    phase = _spec_schema(crd, "v1")["properties"]["phase"]
    assert phase["type"] == "string"
    assert phase["enum"] == [
        "PreAuthN",
        "PostAuthN",
        "PreAuthZ",
        "PostAuthZ",
        "PreStats",
        "PostStats",
    ]


def test_image_is_required_and_labels_are_a_string_map() -> None:
    spec = _spec_schema(custom_resource_definition(SERVICE_MESH_EXTENSION), "v1")
    assert spec["required"] == ["image"]
    labels = spec["properties"]["workloadSelector"]["properties"]["labels"]
    assert labels == {"type": "object", "additionalProperties": {"type": "string"}}


def test_v1_is_stored_both_versions_are_served_with_a_status_subresource() -> None:
    crd = custom_resource_definition(SERVICE_MESH_EXTENSION)
    stored = [v["name"] for v in crd["spec"]["versions"] if v["storage"]]
    assert stored == ["v1"]
    for name in ("v1alpha1", "v1"):
        version = _version(crd, name)
        assert version["served"] is True
        assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["shortNames"] == ["sme"]


def test_printer_columns_show_ready_phase_priority_and_age() -> None:
    columns = _version(custom_resource_definition(SERVICE_MESH_EXTENSION), "v1")[
        "additionalPrinterColumns"
    ]
    by_name = {c["name"]: c["jsonPath"] for c in columns}
    assert by_name["Ready"] == ".status.deployment.ready"
    assert by_name["Phase"] == ".status.phase"
    assert by_name["Priority"] == ".status.priority"
    assert by_name["Age"] == ".metadata.creationTimestamp"


def test_control_plane_schema_keeps_fields_meshext_does_not_read() -> None:
    crds = {c["spec"]["names"]["kind"]: c for c in custom_resource_definitions()}
    spec = _spec_schema(crds["ServiceMeshControlPlane"], "v2")
    assert spec["x-kubernetes-preserve-unknown-fields"] is True
    tech_preview = spec["properties"]["techPreview"]
    assert tech_preview["x-kubernetes-preserve-unknown-fields"] is True
    enabled = tech_preview["properties"]["wasmExtensions"]["properties"]["enabled"]
    assert enabled == {"type": "boolean"}


def test_member_roll_members_are_a_list_of_strings() -> None:
    crds = {c["spec"]["names"]["kind"]: c for c in custom_resource_definitions()}
    spec = _spec_schema(crds["ServiceMeshMemberRoll"], "v1")
    assert spec["properties"]["members"] == {"type": "array", "items": {"type": "string"}}


def test_conversion_goes_to_the_meshext_service_by_default() -> None:
    crd = custom_resource_definition(SERVICE_MESH_EXTENSION)
    conversion = crd["spec"]["conversion"]
    assert conversion["strategy"] == "Webhook"
    assert conversion["webhook"]["conversionReviewVersions"] == ["v1"]
    assert conversion["webhook"]["clientConfig"] == {
        "service": {
            "namespace": "meshext-system",
            "name": "meshext",
            "path": "/convert",
            "port": 443,
        }
    }


def test_conversion_url_and_ca_bundle_are_used_when_given() -> None:
    webhook = ConversionWebhook(url="https://127.0.0.1:9443/convert", ca_bundle=b"PEM")
    crd = custom_resource_definition(SERVICE_MESH_EXTENSION, webhook)
    assert crd["spec"]["conversion"]["webhook"]["clientConfig"] == {
        "url": "https://127.0.0.1:9443/convert",
        "caBundle": "UEVN",
    }


def test_int_or_string_unions_become_the_kubernetes_extension() -> None:
    class Port(BaseModel):
        target: int | str

    schema = structural_schema(Port)
    assert schema["properties"]["target"] == {"x-kubernetes-int-or-string": True}


def test_a_recursive_model_is_refused() -> None:
    class Tree(BaseModel):
        children: list[Tree] = []

    with pytest.raises(SchemaError, match="refers to itself"):
        structural_schema(Tree)


def test_a_union_of_objects_is_refused_rather_than_loosened() -> None:
    class A(BaseModel):
        a: int

    class B(BaseModel):
        b: str

    class Either(BaseModel):
        value: A | B

    with pytest.raises(SchemaError, match="union"):
        structural_schema(Either)


def test_the_committed_crds_in_deploy_are_up_to_date() -> None:
    committed = list(yaml.safe_load_all(Path(COMMITTED_CRDS).read_text()))
    assert committed == custom_resource_definitions(), (
        "deploy/base/crds.yaml is stale: regenerate it with "
        "`meshext kube crds > deploy/base/crds.yaml`"
    )


def test_the_helm_chart_carries_the_same_crds_as_the_kustomize_base() -> None:
    chart_crds = REPO_ROOT / "deploy" / "helm" / "meshext" / "crds" / "crds.yaml"
    assert chart_crds.read_bytes() == Path(COMMITTED_CRDS).read_bytes(), (
        "deploy/helm/meshext/crds/crds.yaml differs: copy deploy/base/crds.yaml there"
    )
