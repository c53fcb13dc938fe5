"""The v1alpha1 ⇄ v1 conversion rules of ServiceMeshExtension, one row each."""

from __future__ import annotations

from typing import Any

import pytest

from meshext.api.extension import (
    V1,
    V1ALPHA1,
    ExtensionSpecV1,
    ExtensionSpecV1Alpha1,
    config_object_to_text,
    config_text_to_object,
    convert_document,
    spec_v1_to_v1alpha1,
    spec_v1alpha1_to_v1,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"header": "x", "n": 1}', {"header": "x", "n": 1}),
        ("test", {"raw_v1alpha1_config": "test"}),
        ("", {"raw_v1alpha1_config": ""}),
        ("[1, 2]", {"raw_v1alpha1_config": "[1, 2]"}),
        ('"quoted"', {"raw_v1alpha1_config": '"quoted"'}),
        ("42", {"raw_v1alpha1_config": "42"}),
        ("{broken", {"raw_v1alpha1_config": "{broken"}),
        (None, None),
    ],
)
def test_v1alpha1_config_string_becomes_an_object_or_is_wrapped(
    text: str | None, expected: dict[str, Any] | None
) -> None:
    assert config_text_to_object(text) == expected


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"raw_v1alpha1_config": "test"}, "test"),
        ({"b": 1, "a": {"c": True}}, '{"a":{"c":true},"b":1}'),
        ({}, "{}"),
        (None, ""),
    ],
)
def test_v1_config_object_becomes_the_raw_string_or_json(
    config: dict[str, Any] | None, expected: str
) -> None:
    assert config_object_to_text(config) == expected


def test_v1alpha1_spec_converts_to_v1_and_back_without_loss() -> None:
    spec = ExtensionSpecV1Alpha1.model_validate(
        {
            "image": "quay.io/x/y:1",
            "imagePullPolicy": "Always",
            "imagePullSecrets": [{"name": "regcred"}],
            "workloadSelector": {"labels": {"app": "httpbin"}},
            "config": "test",
            "phase": "PostAuthZ",
            "priority": 100,
        }
    )
    v1 = spec_v1alpha1_to_v1(spec)
    assert v1.config == {"raw_v1alpha1_config": "test"}
    assert spec_v1_to_v1alpha1(v1) == spec


def test_v1_spec_with_object_config_converts_to_json_string() -> None:
    v1 = ExtensionSpecV1.model_validate({"image": "quay.io/x/y:1", "config": {"k": "v"}})
    assert spec_v1_to_v1alpha1(v1).config == '{"k":"v"}'


def test_whole_documents_convert_and_keep_metadata_and_status() -> None:
    document = {
        "apiVersion": V1ALPHA1,
        "kind": "ServiceMeshExtension",
        "metadata": {"name": "a", "namespace": "ns", "generation": 3},
        "spec": {"image": "quay.io/x/y:1", "config": "plain"},
        "status": {"phase": "PreAuthN"},
    }
    v1 = convert_document(document, V1)
    assert v1["apiVersion"] == V1
    assert v1["spec"]["config"] == {"raw_v1alpha1_config": "plain"}
    assert v1["metadata"] == document["metadata"]
    assert v1["status"] == document["status"]
    assert convert_document(v1, V1ALPHA1) == document


def test_documents_without_config_convert_by_changing_only_the_version() -> None:
    document = {"apiVersion": V1, "kind": "ServiceMeshExtension", "spec": {"image": "a/b:1"}}
    assert convert_document(document, V1ALPHA1) == {**document, "apiVersion": V1ALPHA1}


def test_conversion_to_an_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot convert"):
        convert_document({"apiVersion": V1}, "maistra.io/v2")
