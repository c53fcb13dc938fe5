"""meshext's CRDs on a real API server: both versions served, converting through the webhook."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.kube.support import Cluster, MeshextCrds, extension, unique

pytestmark = pytest.mark.e2e

IMAGE = "quay.io/acme/header:v1"


@pytest.fixture
def namespace(crds: MeshextCrds) -> str:
    return crds.cluster.namespace(unique("crd"))


def _get(cluster: Cluster, version: str, name: str, namespace: str) -> dict[str, Any]:
    found = cluster.get(f"servicemeshextensions.{version}.maistra.io", name, namespace)
    assert found is not None
    return found


def test_the_crds_are_established(crds: MeshextCrds) -> None:
    names = crds.cluster.kubectl("get", "crd", "-o", "name").split()
    for plural in ("servicemeshextensions", "servicemeshcontrolplanes", "servicemeshmemberrolls"):
        assert f"customresourcedefinition.apiextensions.k8s.io/{plural}.maistra.io" in names


def test_a_v1alpha1_extension_with_json_config_reads_back_as_v1_with_an_object(
    crds: MeshextCrds, namespace: str
) -> None:
    cluster = crds.cluster
    cluster.apply(extension("json", namespace, IMAGE, version="v1alpha1", config='{"header": "x"}'))
    as_v1 = _get(cluster, "v1", "json", namespace)
    assert as_v1["apiVersion"] == "maistra.io/v1"
    assert as_v1["spec"]["config"] == {"header": "x"}
    as_v1alpha1 = _get(cluster, "v1alpha1", "json", namespace)
    assert as_v1alpha1["apiVersion"] == "maistra.io/v1alpha1"
    assert json.loads(as_v1alpha1["spec"]["config"]) == {"header": "x"}


def test_a_v1_extension_reads_back_as_v1alpha1_with_a_json_string(
    crds: MeshextCrds, namespace: str
) -> None:
    cluster = crds.cluster
    cluster.apply(extension("object", namespace, IMAGE, config={"a": [1, 2], "b": {"c": True}}))
    as_v1alpha1 = _get(cluster, "v1alpha1", "object", namespace)
    assert as_v1alpha1["spec"]["config"] == '{"a":[1,2],"b":{"c":true}}'
    assert as_v1alpha1["spec"]["phase"] == "PostAuthZ"
    assert as_v1alpha1["spec"]["priority"] == 10


def test_a_plain_v1alpha1_string_survives_storage_as_v1_unchanged(
    crds: MeshextCrds, namespace: str
) -> None:
    cluster = crds.cluster
    cluster.apply(extension("plain", namespace, IMAGE, version="v1alpha1", config="x-header: yes"))
    assert _get(cluster, "v1", "plain", namespace)["spec"]["config"] == {
        "raw_v1alpha1_config": "x-header: yes"
    }
    assert _get(cluster, "v1alpha1", "plain", namespace)["spec"]["config"] == "x-header: yes"


def test_kubectl_lists_extensions_by_short_name_with_the_printer_columns(
    crds: MeshextCrds, namespace: str
) -> None:
    cluster = crds.cluster
    cluster.apply(extension("listed", namespace, IMAGE))
    table = cluster.kubectl("get", "sme", "-n", namespace)
    header = table.splitlines()[0].split()
    assert header == ["NAME", "READY", "PHASE", "PRIORITY", "AGE"]
    assert table.splitlines()[1].split()[0] == "listed"
    for version in ("v1alpha1", "v1"):
        names = cluster.kubectl("get", f"sme.{version}.maistra.io", "-n", namespace, "-o", "name")
        assert names.split() == ["servicemeshextension.maistra.io/listed"]


def test_the_api_server_rejects_an_unknown_phase(crds: MeshextCrds, namespace: str) -> None:
    result = crds.cluster.try_kubectl(
        "apply", "-f", "-", input=json.dumps(extension("bad", namespace, IMAGE, phase="Early"))
    )
    assert result.returncode != 0
    assert "Unsupported value" in result.stderr
    assert "Early" in result.stderr


def test_a_misspelt_field_is_reported_by_strict_field_validation(
    crds: MeshextCrds, namespace: str
) -> None:
    document = extension("typo", namespace, IMAGE)
    document["spec"]["priorty"] = 3
    result = crds.cluster.try_kubectl("apply", "-f", "-", input=json.dumps(document))
    assert result.returncode != 0
    assert 'unknown field "spec.priorty"' in result.stderr


def test_a_v1alpha1_object_config_is_rejected_by_the_v1alpha1_schema(
    crds: MeshextCrds, namespace: str
) -> None:
    document = extension("wrong", namespace, IMAGE, version="v1alpha1", config={"k": "v"})
    result = crds.cluster.try_kubectl("apply", "-f", "-", input=json.dumps(document))
    assert result.returncode != 0
    assert "spec.config" in result.stderr
